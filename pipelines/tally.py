"""Videos done and failed in this process, counted by the job as each video ends.

``TALLY`` is process-wide on purpose: on the local runner the job runs in the command's own
process, so the progress display reads it at no cost per poll, however large the job.
"""
from __future__ import annotations

import threading


class Tally:
    """Videos done and failed in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.failed = 0

    def add(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += not ok

    def reset(self) -> None:
        with self._lock:
            self.done = self.failed = 0


TALLY = Tally()
