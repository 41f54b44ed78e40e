"""The ``actprep`` command and its front-ends: run, demo, flow, vggish-convert, the Flex
Template entry. They parse what the user typed and call the job, the reports or an extractor."""
