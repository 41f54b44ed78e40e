"""Named points where a test can kill the job, to prove that a rerun recovers from there.

``ACTPREP_CRASH_AT=NAME[:N]`` makes the process SIGKILL itself the Nth time (default 1st)
it reaches ``crash_point(NAME)``: no cleanup, no ``finally`` blocks, exactly like a lost
worker or ``kill -9``. Unset (always, outside tests), a crash point costs a dict lookup.
Points: ``process:decoding`` (RGB frame 2 of a video decoded), ``process:fragment``
(a video's fragment written, its result not yet), ``process:result`` (both written),
``commit:index`` (a shard's index written, its tar not yet), ``commit:tar`` (half of a
shard's samples copied into the temporary tar), ``commit:renamed`` (the tar in place, the
work files not yet dropped).
"""
from __future__ import annotations

import os
import signal
import threading

ENV = "ACTPREP_CRASH_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def _target() -> tuple[str, int] | None:
    """(point name, which arrival) from the environment, or None."""
    text = os.environ.get(ENV)
    if not text:
        return None
    name, _, nth = text.rpartition(":")
    if name and nth.isdigit():
        return name, int(nth)
    return text, 1


def crash_point(name: str) -> None:
    """SIGKILLs this process if ``ACTPREP_CRASH_AT`` names this point and arrival."""
    target = _target()
    if target is None or target[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        reached = _counts[name]
    if reached == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
