"""Crash safety and resumption: a job killed with SIGKILL at any stage and rerun gives the
bytes of an uninterrupted run; finished videos are not recomputed; one run per output;
``--retry-failed`` reprocesses only the failures."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from actprep.pipelines.runlock import LOCK, STALE_S
from actprep.extractors.synth import make_garbage, make_video
from conftest import LOCAL_BEAM

CLIPS = 7          # 6 videos and one garbage file, 3 per shard: shards of 3, 3 and 1
SHARD_SIZE = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small videos with motion and a tone, a garbage file, and a generic manifest."""
    root = tmp_path_factory.mktemp("resume_media")
    rows = ["path,label"]
    for i in range(CLIPS):
        name = f"clip{i}.mp4"
        if i == 4:
            make_garbage(str(root / name), seed=4)
        else:
            make_video(str(root / name), duration=1.2, fps=10, size=(64, 48),
                       audio_freq=300 + 100 * i, motion=(1.0 + i % 3, 0.5))
        rows.append(f"{name},{'ab'[i % 2]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


def _command(media, out, vggish_weights: str) -> list[str]:
    return [sys.executable, "-m", "actprep.commands.cli", "run", "--dataset", "generic",
            "--manifest", str(media / "list.csv"), "--output", str(out),
            "--shard-size", str(SHARD_SIZE), "--size", "64x48",
            "--modalities", "rgb,flow,mfcc,vggish",
            "--flow-backend", "opencv", "--vggish-weights", vggish_weights,
            "--no-progress", *LOCAL_BEAM]


def _run(command: list[str], crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACTPREP_CRASH_AT"}
    if crash_at:
        env["ACTPREP_CRASH_AT"] = crash_at
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _outputs(out) -> dict[str, bytes]:
    """Every file a finished output holds, by relative path."""
    files = {}
    for dirpath, _, names in os.walk(out):
        for name in names:
            path = os.path.join(dirpath, name)
            files[os.path.relpath(path, out)] = open(path, "rb").read()
    return files


@pytest.fixture(scope="module")
def clean(media, vggish_ref, tmp_path_factory):
    """The uninterrupted run every resumed one is compared with."""
    out = tmp_path_factory.mktemp("clean") / "out"
    done = _run(_command(media, out, vggish_ref.weights_path))
    assert done.returncode == 0, done.stderr
    files = _outputs(out)
    assert {f for f in files if f.endswith(".tar")} == {
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"}
    assert not any(f.startswith("_work") for f in files) and LOCK not in files
    return files


def _counts(stderr: str) -> tuple[int, int]:
    """(processed, reused or fixed by the plan) as the run's summary says."""
    m = re.search(r"this run processed (\d+) videos, reused (\d+) checkpointed by an earlier "
                  r"run and recorded (\d+) manifest failures", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2)) + int(m.group(3))


# killed while decoding the third video; after a fragment, before its result; after four
# results; in the commit of the first shard (index written, tar not); half-way through the
# second shard's tar; with the first tar in place but its work files not yet dropped
CRASHES = ("process:decoding:3", "process:fragment:2", "process:result:4", "commit:index:1",
           "commit:tar:2", "commit:renamed:1")


def _checkpoints(out) -> tuple[int, int]:
    """(videos checkpointed in uncommitted shards, rows of committed shards) after a crash."""
    work, pending, committed = out / "_work", 0, 0
    for shard in os.listdir(work) if work.exists() else []:
        if not (out / f"{shard}.tar").exists():
            pending += sum(n.endswith(".result.json") for n in os.listdir(work / shard))
    for name in os.listdir(out):
        if name.endswith(".tar"):
            committed += len(pq.read_table(out / "index" / name.replace(".tar", ".parquet")))
    return pending, committed


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("point", CRASHES)
def test_killed_run_resumes_to_identical_output(media, vggish_ref, clean, tmp_path, point):
    out = tmp_path / "out"
    command = _command(media, out, vggish_ref.weights_path)
    killed = _run(command, crash_at=point)
    assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
    assert os.path.exists(out / LOCK)  # a SIGKILLed run leaves its lock behind
    pending, committed = _checkpoints(out)
    resumed = _run(command)
    assert resumed.returncode == 0, resumed.stderr
    processed, reused = _counts(resumed.stderr)
    # every checkpointed video is reused, only the others are processed
    assert reused == pending and processed == CLIPS - committed - pending
    if point.startswith("commit:"):  # a shard commits once its own videos are done
        assert pending + committed >= SHARD_SIZE
    else:
        assert processed >= 1 and committed == 0
    if point == "commit:renamed:1":
        assert "finished the interrupted commit of 1 shards" in resumed.stderr
    files = _outputs(out)
    assert sorted(files) == sorted(clean)
    for name, data in clean.items():
        assert files[name] == data, f"{name} differs after a crash at {point}"
    again = _run(command)  # a finished job: nothing to do, nothing changes
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert _outputs(out) == clean


# --- one run per output ---------------------------------------------------------------------

def _write_lock(out, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x",
           "started": time.time(), "heartbeat": time.time(), **fields}
    (out / LOCK).write_text(json.dumps(doc))


def _small_run(run_cli, media, out) -> int:
    return run_cli(["run", "--dataset", "generic", "--manifest", media / "list.csv",
                    "--output", out, "--shard-size", str(SHARD_SIZE), "--modalities", "mfcc",
                    "--no-progress", *LOCAL_BEAM])


def test_second_run_on_a_busy_output_is_refused(run_cli, media, tmp_path, capsys):
    out = tmp_path / "out"
    _write_lock(out)  # held by a live process (this one) with a fresh heartbeat
    assert _small_run(run_cli, media, out) == 3
    err = capsys.readouterr().err
    assert "another actprep run is writing" in err and f"pid {os.getpid()}" in err
    assert not (out / "plan.jsonl").exists()
    _write_lock(out, host="elsewhere")  # another machine, fresh heartbeat: also refused
    assert _small_run(run_cli, media, out) == 3


@pytest.mark.e2e
@pytest.mark.parametrize("holder", ["dead_pid", "stale_heartbeat", "garbage"])
def test_lock_of_a_gone_run_is_replaced(run_cli, media, tmp_path, holder):
    out = tmp_path / "out"
    if holder == "dead_pid":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        _write_lock(out, pid=gone.pid)
    elif holder == "stale_heartbeat":
        _write_lock(out, host="elsewhere", heartbeat=time.time() - STALE_S - 5)
    else:
        out.mkdir(parents=True)
        (out / LOCK).write_text("{not json")
    assert _small_run(run_cli, media, out) == 0
    assert not (out / LOCK).exists()  # released at the end
    assert len(pq.read_table(out / "index")) == CLIPS


# --- --retry-failed -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.e2e
def test_retry_failed_reprocesses_only_the_failures(run_cli, media, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(media, data)
    with open(data / "list.csv", "a") as f:
        f.write("clip0.mp4,a\n")  # a duplicate key: a manifest failure, never retried
    out = tmp_path / "out"
    assert _small_run(run_cli, data, out) == 0
    rows = pq.read_table(out / "index").to_pylist()
    broken = next(r for r in rows if r["status"] == "failed" and r["failure_stage"] != "manifest")
    assert broken["failure_stage"] == "probe" and broken["attempts"] == 1
    before = _outputs(out)

    make_video(broken["source_path"], duration=1.2, fps=10, size=(64, 48), audio_freq=700)
    capsys.readouterr()
    assert run_cli(["run", "--dataset", "generic", "--manifest", data / "list.csv",
                    "--output", out, "--shard-size", str(SHARD_SIZE), "--modalities", "mfcc",
                    "--no-progress", "--retry-failed", *LOCAL_BEAM]) == 0
    err = capsys.readouterr().err
    assert "reopened 1 committed shards" in err, err
    processed, reused = _counts(err)
    assert processed == 1 and reused == SHARD_SIZE - 1  # only the failure ran again
    after = {r["line"]: r for r in pq.read_table(out / "index").to_pylist()}
    fixed = after[broken["line"]]
    assert fixed["status"] == "ok" and fixed["attempts"] == 2 and fixed["mfcc_frames"] > 0
    duplicate = [r for r in after.values() if r["failure_stage"] == "manifest"]
    assert len(duplicate) == 1 and duplicate[0]["attempts"] == 1
    files = _outputs(out)
    shard = f"shard-{fixed['shard'][len('shard-'):]}.tar"
    changed = {n for n in files if files[n] != before.get(n)}
    assert changed == {shard, f"index/{fixed['shard']}.parquet"}
    # the rebuilt shard is the one a clean run on the repaired data writes
    fresh = tmp_path / "fresh"
    assert _small_run(run_cli, data, fresh) == 0
    assert files[shard] == (fresh / shard).read_bytes()
    # nothing left to retry: the shards stay as they are
    assert run_cli(["run", "--dataset", "generic", "--manifest", data / "list.csv",
                    "--output", out, "--shard-size", str(SHARD_SIZE), "--modalities", "mfcc",
                    "--no-progress", "--retry-failed", *LOCAL_BEAM]) == 0
    assert "reopened 0 committed shards" in capsys.readouterr().err
    assert _outputs(out) == files


KILL_ONE = """
import os, sys
from actprep.commands.cli import make_parser
from actprep.commands.runargs import run_options
from actprep.pipelines.planfile import iter_entries
from actprep.pipelines.planner import load_or_create_plan
from actprep.pipelines.process import process_entry
opts = run_options(make_parser().parse_known_args(sys.argv[1:])[0])
load_or_create_plan(opts)
entry = list(iter_entries(opts.output))[int(os.environ["LINE"])]
process_entry(entry, opts)  # ACTPREP_CRASH_AT kills this process in the decode
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_worker_is_never_recorded_as_the_videos_failure(run_cli, media, tmp_path):
    """Killed three times while processing the same video (as by the OOM killer): a dead
    worker is a fault of the environment, not of the video. Nothing is recorded for it,
    and the rerun gives the bytes of an uninterrupted run, attempts included."""
    out = tmp_path / "out"
    args = ["run", "--dataset", "generic", "--manifest", str(media / "list.csv"),
            "--output", str(out), "--shard-size", str(SHARD_SIZE), "--modalities", "rgb",
            "--no-progress", *LOCAL_BEAM]
    env = {**os.environ, "LINE": "1", "ACTPREP_CRASH_AT": "process:decoding"}
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", KILL_ONE, *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == -9, done.stderr
    assert run_cli(args) == 0
    rows = pq.read_table(out / "index").to_pylist()
    assert all(r["attempts"] == 1 for r in rows)
    assert [r["failure_stage"] for r in rows if r["status"] == "failed"] == ["probe"]
    fresh = tmp_path / "fresh"
    assert run_cli([fresh if a == str(out) else a for a in args]) == 0
    assert _outputs(out) == _outputs(fresh)
