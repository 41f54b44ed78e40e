"""One run at a time per output folder: ``run.lock``, kept fresh by a heartbeat.

The lock names its holder (host, pid) and is rewritten every ``HEARTBEAT_S`` seconds while
the run lasts. A later run treats it as held when the heartbeat is recent and, on the same
host, the process still exists; so a run killed with ``kill -9`` on this machine is replaced
at once, and one that died elsewhere (another launcher, a lost VM) after ``STALE_S``.
A job on a remote runner (Dataflow) outlives the process that submitted it, so its lock
says so (``remote_job``): no pid check then, and the job's workers keep the heartbeat fresh
(``worker_heartbeat``) even when the launcher is gone (a Flex Template launcher, a closed
laptop). Local folders are locked with an exclusive create; object stores (gs://), which have no such
primitive through Beam's FileSystems, by writing the lock and reading it back after a pause:
two launchers starting within that pause is the remaining, documented, window.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from actprep.pipelines import storage

LOCK = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 180.0
SETTLE_S = 2.0  # object stores: pause before reading the lock back
HAND_OVER_GRACE_S = 900.0  # a remote job's workers start within this (VMs, driver, image)


class RunLocked(Exception):
    """Another run is writing this output."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def holder_alive(held: dict, now: float | None = None) -> bool:
    """Whether the run that wrote ``held`` still runs, as far as can be told from here."""
    now = time.time() if now is None else now
    if now - float(held.get("heartbeat", 0)) > STALE_S:
        return False
    if held.get("host") == socket.gethostname() and not held.get("remote_job"):
        return _pid_alive(int(held.get("pid", -1)))
    return True


class RunLock:
    """The held lock of one run; ``release()`` (or leaving the ``with``) gives it up."""

    def __init__(self, output: str, remote_job: bool = False):
        self.path = storage.join(output, LOCK)
        self.doc = {"host": socket.gethostname(), "pid": os.getpid(),
                    "token": uuid.uuid4().hex, "started": time.time(),
                    "remote_job": remote_job}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.doc["token"]

    def _content(self) -> bytes:
        return json.dumps({**self.doc, "heartbeat": time.time()}, sort_keys=True).encode()

    def _write(self) -> None:
        storage.write_atomic(self.path, self._content())

    def _read(self) -> dict | None:
        """The lock's document; None without a lock, {} (stale) when unreadable."""
        if not storage.exists(self.path):
            return None
        try:
            doc = json.loads(storage.read_text(self.path))
        except Exception:  # noqa: BLE001 - half-written or garbage: as good as no holder
            return {}
        return doc if isinstance(doc, dict) else {}

    def _refuse(self, held: dict) -> RunLocked:
        age = time.time() - float(held.get("heartbeat", 0))
        return RunLocked(
            f"another actprep run is writing {os.path.dirname(self.path) or '.'} (host "
            f"{held.get('host')}, pid {held.get('pid')}, last heartbeat {age:.0f} s ago); "
            f"wait for it to finish, or if it is gone, delete {self.path} (a lock whose "
            f"heartbeat is over {STALE_S:.0f} s old is replaced by itself)")

    def acquire(self) -> RunLock:
        held = self._read()
        if held is not None and holder_alive(held):
            raise self._refuse(held)
        if storage.is_local(self.path):
            if held is not None:
                storage.delete([self.path])  # stale: its holder is gone
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise self._refuse(self._read() or {}) from None
            try:
                os.write(fd, self._content())
            finally:
                os.close(fd)
        else:
            self._write()
            time.sleep(SETTLE_S)
            now = self._read() or {}
            if now.get("token") != self.doc["token"]:
                raise self._refuse(now)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run.lock")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the run goes on
                pass

    def hand_over(self, grace_s: float = HAND_OVER_GRACE_S) -> None:
        """Leaves the lock to a remote job that goes on without this process: the beats
        stop, and the heartbeat is set ``grace_s`` ahead so the lock holds while the
        job's workers start (they then keep it fresh, see ``worker_heartbeat``)."""
        if self._stop_beating():
            doc = {**self.doc, "heartbeat": time.time() + grace_s, "handed_over": True}
            storage.write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())

    def release(self) -> None:
        if self._stop_beating():
            storage.delete([self.path])

    def _stop_beating(self) -> bool:
        """Stops the heartbeat; returns whether the lock is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._read()
        return bool(held) and held.get("token") == self.doc["token"]

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_last_beats: dict[tuple[str, str], float] = {}
_beats_lock = threading.Lock()


def worker_heartbeat(output: str, token: str | None, now: float | None = None) -> bool:
    """Called by the job's workers as they go: refreshes the lock of run ``token`` at most
    every ``HEARTBEAT_S`` per process, and only while the lock is still that run's (a
    released lock is not recreated). Returns whether it wrote."""
    if not token:
        return False
    now = time.time() if now is None else now
    with _beats_lock:
        if now - _last_beats.get((output, token), float("-inf")) < HEARTBEAT_S:
            return False
        _last_beats[(output, token)] = now
    path = storage.join(output, LOCK)
    try:
        held = json.loads(storage.read_text(path))
    except Exception:  # noqa: BLE001 - gone (the run ended) or being rewritten
        return False
    if not isinstance(held, dict) or held.get("token") != token:
        return False
    held.update(heartbeat=now, worker=socket.gethostname())
    try:
        storage.write_atomic(path, json.dumps(held, sort_keys=True).encode())
    except Exception:  # noqa: BLE001 - a missed beat is retried; the job goes on
        return False
    return True
