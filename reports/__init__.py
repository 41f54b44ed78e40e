"""Tools that read a finished output: ``actprep stats`` (text and HTML) and ``actprep verify``."""
