"""Whose fault an error is. A video's own faults are ``MediaError``s, recorded as its failure.
Everything else is either a fault of the environment (disk, permissions, storage, memory,
the ffmpeg installed), which must never be recorded as a video's failure: the run retries
where that can help, else stops and says what to fix; or an internal error (a bug in
actprep), recorded with its traceback and retried by the next run.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from typing import Callable, TypeVar

from actprep.extractors.ffmpeg_bin import FfmpegError

T = TypeVar("T")
log = logging.getLogger(__name__)

# errno -> what to tell the user; all are faults of the machine, not of a video
CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.ENOMEM: "out of memory",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
}
TRANSIENT_ERRNOS = {errno.EIO, errno.ENOMEM, errno.EAGAIN}
# modules whose exceptions are storage or network services failing (gs://)
SERVICE_MODULES = ("google.", "requests", "urllib3", "http.client", "socket")
RETRY_DELAYS_S = (2.0, 10.0, 30.0)  # between attempts at a video after a transient fault
MARK = "actprep environment fault: "  # how the launcher finds one inside a runner's error


class EnvironmentFault(Exception):
    """A fault of the machine or its storage met while processing ``path``."""

    def __init__(self, cause: str, path: str | None = None, transient: bool = False,
                 resume: bool = False):
        self.cause, self.path, self.transient = cause, path, transient
        self.resume = resume  # it stopped a run that a rerun resumes
        where = f" ({path})" if path else ""
        super().__init__(f"{MARK}{cause}{where}")

    @property
    def message(self) -> str:
        """The cause and path, without the marks and step names runners add when they
        re-raise it."""
        return _clean(str(self))


def _clean(text: str) -> str:
    text = text[text.rfind(MARK) + len(MARK):] if MARK in text else text
    return re.sub(r"\s*\[while running '[^']*'\]", "", text).strip()


def as_fault(exc: BaseException, where: str) -> EnvironmentFault | None:
    """``environment_fault(exc)``, naming ``where`` it happened when the error names no
    path (a write that fills the disk names none)."""
    fault = environment_fault(exc)
    if fault is None or fault.path:
        return fault
    return EnvironmentFault(fault.cause, where, fault.transient)


def environment_fault(exc: BaseException) -> EnvironmentFault | None:
    """``exc`` as an EnvironmentFault when it is one (None: it is a bug's)."""
    if isinstance(exc, EnvironmentFault):
        return exc
    if isinstance(exc, FfmpegError):
        return EnvironmentFault(str(exc))
    if isinstance(exc, MemoryError):
        return EnvironmentFault("out of memory", transient=True)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return EnvironmentFault(f"network: {exc}", transient=True)
    if isinstance(exc, OSError):
        path = exc.filename if isinstance(exc.filename, str) else None
        cause = CAUSES.get(exc.errno) or exc.strerror or f"{type(exc).__name__}: {exc}"
        return EnvironmentFault(cause, path, exc.errno in TRANSIENT_ERRNOS
                                or exc.errno is None)  # no errno: a storage layer's (Beam)
    if type(exc).__module__.startswith(SERVICE_MODULES):
        return EnvironmentFault(f"storage service: {type(exc).__name__}: {exc}", transient=True)
    return None


def with_retries(work: Callable[[], T], what: str,
                 delays: tuple[float, ...] = RETRY_DELAYS_S) -> T:
    """``work()``, tried again after each delay while it meets transient environment
    faults; any other fault (or the last) is raised as an EnvironmentFault."""
    for delay in (*delays, None):
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - sorted below
            fault = environment_fault(exc)
            if fault is None:
                raise
            if delay is None or not fault.transient:
                raise fault from exc
            log.warning("%s: %s; trying again in %.0f s", what, fault.message, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def find_fault(exc: BaseException) -> str | None:
    """The environment fault behind an error a runner raised, as one line (None when there
    is none): from the exception chain, or from the text a runner copied from a worker."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        fault = environment_fault(exc)
        if fault is not None:
            return fault.message
        exc = exc.__cause__ or exc.__context__
    return None


def fault_in_text(text: str) -> str | None:
    """The last environment fault named in a runner's error text (Dataflow's)."""
    lines = [line for line in text.splitlines() if MARK in line]
    return _clean(lines[-1]).strip("'\"") if lines else None


def injected(point: str) -> None:
    """Test hook, like crashpoints: ``ACTPREP_FAULT_AT=KIND@POINT[:N]`` raises, the Nth time
    (default 1st) this process reaches ``point``, a fault of KIND: ``eio`` (a transient
    I/O error) or ``bug`` (an unexpected exception in actprep). Unset, it costs a lookup."""
    spec = os.environ.get("ACTPREP_FAULT_AT")
    if not spec:
        return
    kind, _, target = spec.partition("@")
    name, _, nth = target.rpartition(":")
    if not (name and nth.isdigit()):
        name, nth = target, "1"
    if name != point:
        return
    with _lock:
        _arrivals[point] = _arrivals.get(point, 0) + 1
        if _arrivals[point] != int(nth):
            return
    if kind == "eio":
        raise OSError(errno.EIO, os.strerror(errno.EIO), f"(injected at {point})")
    raise ZeroDivisionError(f"injected bug at {point}")


_arrivals: dict[str, int] = {}
_lock = threading.Lock()
