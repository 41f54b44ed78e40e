"""One run at a time per output folder: ``run.lock``, kept fresh by a heartbeat.

The lock names its holder (host, pid, a token) and is rewritten every ``HEARTBEAT_S``
seconds while the run lasts. A later run treats it as held when the heartbeat is recent and,
on the same host, the process still exists; so a run killed with ``kill -9`` on this machine
is replaced at once, and one that died elsewhere (another launcher, a lost VM) after
``STALE_S``. A job on a remote runner (Dataflow) outlives the process that submitted it, so
its lock says so (``remote_job``): no pid check then, and the job's workers keep the
heartbeat fresh (``worker_heartbeat``) even when the launcher is gone (a Flex Template
launcher, a closed laptop).

Every change of the lock is conditional on the version that was read, so that of several
runs only one wins, whether they create a missing lock or replace a stale one, and a
heartbeat never overwrites a lock that another run took over (the run then stops with
``LockLost``). One way per backend (``_store_for``):

- local folders: a complete temporary file is ``link``ed into place (never replacing, never
  seen half-written); a change holds ``flock`` on the lock file, checks the path still names
  that file with the content read, and renames a new complete file over it. NFS emulates
  ``flock`` with byte-range locks, which holds across clients that use it.
- gs://: google-cloud-storage generation preconditions (``if_generation_match=0`` to create,
  the generation read to rewrite or delete), with the client Beam's GCS filesystem makes.
- other object stores (through Beam's FileSystems, e.g. the tests' mem://): no conditional
  write there, so check, write, pause ``SETTLE_S`` and read back; two runs within that pause
  is the remaining, documented, window, and a beat may overwrite a takeover made within
  the moment between its read and its write.

A lock that is empty or cut short (a prefix of a JSON object: a crash while writing it, or a
writer of another kind) counts as held until its modification time is ``STALE_S`` old; bytes
that cannot be the start of a lock at all count as no holder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

from apache_beam.io.filesystems import FileSystems

from actprep.pipelines import storage
from actprep.pipelines.faults import EnvironmentFault
from actprep.schemas.naming import LOCK

HEARTBEAT_S = 30.0
STALE_S = 180.0
SETTLE_S = 2.0  # object stores without conditional writes: pause before reading back
HAND_OVER_GRACE_S = 900.0  # a remote job's workers start within this (VMs, driver, image)
ATTEMPTS = 3  # conditional writes tried again after the lock changed under them
PAUSE_ENV = "ACTPREP_RUNLOCK_PAUSE_S"  # test hook: widens every read-then-write window

log = logging.getLogger(__name__)


class RunLocked(Exception):
    """Another run is writing this output."""


class LockLost(EnvironmentFault, RunLocked):
    """This run's lock now belongs to another run (taken over as stale, or deleted and
    taken): the run must stop writing. An ``EnvironmentFault``, so runners report it as one
    line (also from a worker's error text), and a ``RunLocked``."""


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


def _race_window(step: str) -> None:
    """Test hook: sleeps ``$ACTPREP_RUNLOCK_PAUSE_S`` between reading the lock and writing
    it, so tests can make concurrent runs meet there. Unset, it costs a lookup."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        log.debug("run.lock: pausing %s s before %s", pause, step)
        time.sleep(float(pause))


# --- what a lock's bytes say ---------------------------------------------------------------

_PARTIAL_VALUE = re.compile(r"t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?|[-+.0-9eE]*")


def _parse(data: bytes) -> dict | None:
    """The lock's document, or None when the bytes are not one."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _unfinished(data: bytes) -> bool:
    """Whether unparseable ``data`` may be a lock caught being written or cut short by a
    crash: empty, zero-filled, or the start of a JSON object."""
    text = data.replace(b"\x00", b"").decode("utf-8", "ignore").strip()
    if not text:
        return True
    if not text.startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return (err.msg.startswith("Unterminated string")
                or _PARTIAL_VALUE.fullmatch(text[err.pos:]) is not None)
    return False  # complete JSON that is no lock document


@dataclass(frozen=True)
class _Seen:
    """The lock as read: its bytes, when it was last written, and what identifies this very
    version for a conditional change (backend-specific)."""
    data: bytes
    mtime: float
    version: object

    @property
    def doc(self) -> dict | None:
        return _parse(self.data)

    def blocks(self, now: float | None = None) -> bool:
        """Whether this lock keeps other runs out."""
        now = time.time() if now is None else now
        doc = self.doc
        if doc is not None:
            return holder_alive(doc, now)
        return _unfinished(self.data) and now - self.mtime <= STALE_S


# --- backends: read, and change only the version read -------------------------------------

class _LocalStore:
    """A lock file on a local (or NFS-mounted) disk."""

    atomic = True

    def __init__(self, path: str):
        self.path = path

    def read(self) -> _Seen | None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        return _Seen(data, st.st_mtime, (st.st_dev, st.st_ino, data))

    def _complete_temp(self, data: bytes) -> str:
        """A hidden temporary beside the lock holding ``data`` (a name that
        ``storage.drop_temporaries`` removes when a crash left it)."""
        head, name = os.path.split(self.path)
        storage.makedirs(head)
        tmp = os.path.join(head, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def create(self, data: bytes) -> bool:
        """Puts ``data`` in place when there is no lock; False when there is one."""
        tmp = self._complete_temp(data)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            return False  # a holder's drop_temporaries took our temporary: it holds the lock
        except OSError:  # no hard links here (FAT, some FUSE/SMB): exclusive create instead
            return self._create_exclusive(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _create_exclusive(self, data: bytes) -> bool:
        """``create`` without hard links; readers may meet it empty for a moment, which
        counts as held (``_unfinished``)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    @contextlib.contextmanager
    def _pinned(self, seen: _Seen) -> Iterator[bool]:
        """Holds ``flock`` on the lock file and yields whether the path still names the
        version ``seen``; every change is made inside, so no two interleave."""
        try:
            fd = os.open(self.path, os.O_RDWR)  # writable: NFS's emulated flock needs it
        except FileNotFoundError:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            try:
                at_path = os.stat(self.path)
            except FileNotFoundError:
                at_path = None
            same = (at_path is not None and (at_path.st_dev, at_path.st_ino)
                    == (st.st_dev, st.st_ino) and (st.st_dev, st.st_ino, data) == seen.version)
            yield same
        finally:
            os.close(fd)  # releases the flock

    def replace(self, seen: _Seen, data: bytes) -> bool:
        """Puts ``data`` in place of the version ``seen``; False when it changed."""
        with self._pinned(seen) as same:
            if not same:
                return False
            tmp = self._complete_temp(data)
            try:
                os.rename(tmp, self.path)
            except FileNotFoundError:
                return False  # our temporary was dropped by a drop_temporaries
            return True

    def delete(self, seen: _Seen) -> bool:
        """Removes the version ``seen``; False when it changed."""
        with self._pinned(seen) as same:
            if same:
                os.unlink(self.path)
            return same


_gcs_client = None
_gcs_client_lock = threading.Lock()


def _gcs():
    """The google-cloud-storage client, made as Beam's GCS filesystem makes it (its
    credentials, ``STORAGE_EMULATOR_HOST``), once per process."""
    global _gcs_client
    with _gcs_client_lock:
        if _gcs_client is None:
            from apache_beam.io.gcp.gcsio import GcsIO
            _gcs_client = GcsIO(pipeline_options={}).client
        return _gcs_client


class _GcsStore:
    """A lock object on Google Cloud Storage: changes are conditional on its generation."""

    atomic = True

    def __init__(self, path: str):
        from apache_beam.io.gcp.gcsio import parse_gcs_path
        self.path = path
        bucket, name = parse_gcs_path(path)
        self.blob = _gcs().bucket(bucket).blob(name)

    def read(self) -> _Seen | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed
        for _ in range(ATTEMPTS):
            blob = self.blob.bucket.get_blob(self.blob.name)
            if blob is None:
                return None
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation)
            except (NotFound, PreconditionFailed):
                continue  # rewritten or deleted between the two requests
            return _Seen(data, blob.updated.timestamp(), blob.generation)
        raise OSError(f"{self.path}: changing too fast to be read")

    def _upload(self, data: bytes, generation: int) -> bool:
        from google.api_core.exceptions import PreconditionFailed
        try:
            self.blob.upload_from_string(data, content_type="application/json",
                                         if_generation_match=generation)
        except PreconditionFailed:
            return False
        return True

    def create(self, data: bytes) -> bool:
        return self._upload(data, 0)

    def replace(self, seen: _Seen, data: bytes) -> bool:
        return self._upload(data, int(seen.version))

    def delete(self, seen: _Seen) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed
        try:
            self.blob.delete(if_generation_match=int(seen.version))
        except (NotFound, PreconditionFailed):
            return False
        return True


class _FileSystemStore:
    """A lock in any other store Beam's FileSystems reaches: no conditional write there,
    so each change checks the version first (a window remains; ``atomic`` is False and
    acquiring reads the lock back after ``SETTLE_S``)."""

    atomic = False

    def __init__(self, path: str):
        self.path = path

    def read(self) -> _Seen | None:
        try:
            data = storage.read_bytes(self.path)
        except FileNotFoundError:
            return None
        try:
            mtime = FileSystems.last_updated(self.path)
        except Exception:  # noqa: BLE001 - no such metadata: as if written now (held)
            mtime = time.time()
        return _Seen(data, mtime, data)

    def _unchanged(self, seen: _Seen | None) -> bool:
        now = self.read()
        return (now is None) if seen is None else (now is not None and now.data == seen.data)

    def create(self, data: bytes) -> bool:
        if not self._unchanged(None):
            return False
        storage.write_atomic(self.path, data)
        return True

    def replace(self, seen: _Seen, data: bytes) -> bool:
        if not self._unchanged(seen):
            return False
        storage.write_atomic(self.path, data)
        return True

    def delete(self, seen: _Seen) -> bool:
        if not self._unchanged(seen):
            return False
        storage.delete([self.path])
        return True


def _store_for(path: str):
    """The backend that changes ``path`` conditionally, as well as its store allows."""
    if storage.is_local(path):
        return _LocalStore(path)
    if path.startswith("gs://"):
        return _GcsStore(path)
    return _FileSystemStore(path)


# --- the heartbeat, shared by a run's launcher and its job's workers -----------------------

def _lost(path: str, seen: _Seen | None) -> LockLost:
    held = (seen.doc if seen else None) or {}
    return LockLost(
        f"another run took over {path} (host {held.get('host')}, pid {held.get('pid')}) "
        f"while this run was writing: stopped so as not to write into that run's output; "
        f"rerun once it has finished")


def _refresh(store, token: str, update: Callable[[dict], dict], known: bool) -> bool:
    """Rewrites the lock as ``update(doc)`` while it carries ``token``: read, compare the
    token, write conditionally on the version read. Returns False when there is no lock.
    Raises LockLost when another run's lock is there and ``token`` is known to have held
    it (``known``, or the new holder says it replaced ``token``); else returns False."""
    for _ in range(ATTEMPTS):
        seen = store.read()
        if seen is None:
            return False
        doc = seen.doc or {}
        if doc.get("token") != token:
            if known or doc.get("replaced") == token:
                raise _lost(store.path, seen)
            return False
        _race_window("rewriting the lock")
        data = json.dumps(update(doc), sort_keys=True).encode()
        if store.replace(seen, data):
            return True
        # changed since read: by another beat of this run (read again), or a takeover
    return False


def _no_error_in_flight() -> bool:
    """Whether no exception is being handled here (raising then would hide it)."""
    return sys.exc_info()[0] is None


class RunLock:
    """The held lock of one run; ``release()`` (or leaving the ``with``) gives it up."""

    def __init__(self, output: str, remote_job: bool = False):
        self.path = storage.join(output, LOCK)
        self.doc = {"host": socket.gethostname(), "pid": os.getpid(),
                    "token": uuid.uuid4().hex, "started": time.time(),
                    "remote_job": remote_job}
        self._store = _store_for(self.path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: LockLost | None = None

    @property
    def token(self) -> str:
        return self.doc["token"]

    def _doc(self, heartbeat: float | None = None, **extra) -> dict:
        """The lock's document with a heartbeat of now (or ``heartbeat``)."""
        heartbeat = time.time() if heartbeat is None else heartbeat
        return {**self.doc, "heartbeat": heartbeat, **extra}

    def _content(self) -> bytes:
        return json.dumps(self._doc(), sort_keys=True).encode()

    def _refuse(self, seen: _Seen | None) -> RunLocked:
        where = os.path.dirname(self.path) or "."
        hint = (f"wait for it to finish, or if it is gone, delete {self.path} (a lock whose "
                f"heartbeat is over {STALE_S:.0f} s old is replaced by itself)")
        held = (seen.doc if seen else None)
        if held is None:
            age = time.time() - (seen.mtime if seen else time.time())
            return RunLocked(f"another actprep run is starting to write {where} (its lock is "
                             f"being written, {age:.0f} s ago); {hint}")
        age = time.time() - float(held.get("heartbeat", 0))
        return RunLocked(
            f"another actprep run is writing {where} (host {held.get('host')}, pid "
            f"{held.get('pid')}, last heartbeat {age:.0f} s ago); {hint}")

    def _mine(self, seen: _Seen | None) -> bool:
        return seen is not None and (seen.doc or {}).get("token") == self.token

    def _take(self, seen: _Seen | None) -> bool:
        """One try at taking the lock as read: create it when missing, replace it when its
        holder is gone; False when it changed meanwhile. Refuses a live holder."""
        if seen is None:
            self.doc.pop("replaced", None)
            _race_window("creating the lock")
            return self._store.create(self._content())
        if seen.blocks():
            raise self._refuse(seen)
        replaced = (seen.doc or {}).get("token")
        if replaced:
            self.doc["replaced"] = replaced  # its workers learn from this that they lost
        _race_window("replacing a stale lock")
        return self._store.replace(seen, self._content())

    def _settled(self) -> bool:
        """Stores without conditional writes: whether the lock still is ours after a pause
        (another run writing within it has its own read back find its token gone)."""
        if self._store.atomic:
            return True
        time.sleep(SETTLE_S)
        return self._mine(self._store.read())

    def acquire(self) -> RunLock:
        """Takes the lock, or raises RunLocked naming the run that holds it."""
        seen = self._store.read()
        for _ in range(ATTEMPTS):
            if not self._mine(seen) and not self._take(seen):
                seen = self._store.read()  # changed under us: judge the new one
                if not self._mine(seen):  # (a lost reply of a write that was made)
                    continue
            if not self._settled():
                raise self._refuse(self._store.read())
            self._start_beating()
            return self
        raise self._refuse(seen)

    def _start_beating(self) -> None:
        _here[self.token] = self
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run.lock")
        self._thread.start()

    def beat(self) -> bool:
        """One heartbeat now: rewrites the lock while it is this run's, or puts it back
        when it was deleted (unless another run was first). Raises LockLost when the lock
        is another run's; returns False when the beat could not be written."""
        self.check()
        try:
            if self._rewrite():
                return True
            if self._stop.is_set():
                return False  # released meanwhile: nothing to put back
            return self._store.create(self._content()) or self._rewrite()
        except LockLost as exc:
            self._lost = exc
            raise

    def _rewrite(self, **extra) -> bool:
        """Rewrites the lock while it is this run's (see ``_refresh``)."""
        return _refresh(self._store, self.token, lambda _: self._doc(**extra), known=True)

    def check(self) -> None:
        """Raises LockLost when the heartbeat found the lock taken by another run."""
        if self._lost is not None:
            raise self._lost

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except LockLost as exc:
                log.error("%s", exc.message)
                return
            except Exception:  # noqa: BLE001 - a missed beat is retried; the run goes on
                pass

    def hand_over(self, grace_s: float = HAND_OVER_GRACE_S) -> None:
        """Leaves the lock to a remote job that goes on without this process: the beats
        stop, and the heartbeat is set ``grace_s`` ahead so the lock holds while the
        job's workers start (they then keep it fresh, see ``worker_heartbeat``). Raises
        LockLost when the lock is another run's, unless an error is already on its way."""
        self._stop_beating()
        self._finish(lambda: self._rewrite(heartbeat=time.time() + grace_s, handed_over=True))

    def release(self) -> None:
        """Deletes the lock if it is still this run's. Raises LockLost when it is another
        run's, unless an error is already on its way (it would be hidden)."""
        self._stop_beating()
        self._finish(self._delete_own)

    def _delete_own(self) -> bool:
        for _ in range(ATTEMPTS):
            seen = self._store.read()
            if seen is None:
                return False
            if not self._mine(seen):
                raise _lost(self.path, seen)
            if self._store.delete(seen):
                return True
        return False

    def _finish(self, step: Callable[[], bool]) -> None:
        """Runs the last change of the lock; a LockLost found there (or by a beat) is
        raised only when no other error is being handled (it would hide that one)."""
        quiet = not _no_error_in_flight()
        try:
            self.check()
            step()
        except LockLost as exc:
            self._lost = exc
            if not quiet:
                raise
            log.error("%s", exc.message)

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _here.pop(self.token, None)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_here: dict[str, RunLock] = {}  # the locks this process holds, by token
_last_beats: dict[tuple[str, str], float] = {}
_confirmed: set[tuple[str, str]] = set()  # (output, token) seen holding the lock here
_beats_lock = threading.Lock()


def worker_heartbeat(output: str, token: str | None, now: float | None = None) -> bool:
    """Called by the job's workers as they go: refreshes the lock of run ``token`` at most
    every ``HEARTBEAT_S`` per process, and only while the lock is still that run's (a
    released lock is not recreated). Returns whether it wrote. Raises LockLost when
    another run took the lock over from ``token`` (its launcher here found so, this process
    saw ``token`` hold it before, or the new holder names it as replaced)."""
    if not token:
        return False
    held_here = _here.get(token)
    if held_here is not None:
        held_here.check()
    now = time.time() if now is None else now
    with _beats_lock:
        if now - _last_beats.get((output, token), float("-inf")) < HEARTBEAT_S:
            return False
        _last_beats[(output, token)] = now
        known = (output, token) in _confirmed
    def update(doc: dict) -> dict:
        return {**doc, "heartbeat": now, "worker": socket.gethostname()}

    try:
        wrote = _refresh(_store_for(storage.join(output, LOCK)), token, update,
                         known or held_here is not None)
    except LockLost:
        raise
    except Exception:  # noqa: BLE001 - a missed beat is retried; the job goes on
        return False
    if wrote:
        with _beats_lock:
            _confirmed.add((output, token))
    return wrote
