"""The one exception type extractors raise for bad media, carrying the failing stage."""


class MediaError(Exception):
    """A video (or its audio) could not be handled; recorded as a failure, never a crash."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
