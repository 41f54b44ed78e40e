"""Exit statuses of ``actprep``, for schedulers (documented in the README)."""

OK = 0  # every row ended as a sample or a recorded failure, within the failure budget
ERROR = 1  # the run stopped: a fault of the environment, or shards not committed as planned
USAGE = 2  # bad command line or input (options, manifest, class list, ffmpeg), before any work
LOCKED = 3  # another run holds the output
FAILURES = 4  # completed and committed, but over --max-failed-fraction failed, or a bug hit videos
