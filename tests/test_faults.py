"""Whose fault: a video's own faults are recorded as its failure; faults of the environment
(a full disk, a read-only output) stop the run with one line and are never recorded, and a
rerun after the fix gives the bytes of an uninterrupted run; a bug is recorded with its
traceback, makes the run exit 4 and is retried by a plain rerun. Real faults: tmpfs mounts
(root needed; CI runs as root), not mocks."""
from __future__ import annotations

import os
import subprocess

import pyarrow.parquet as pq
import pytest

from actprep.commands import exitcodes
from actprep.pipelines import faults
from actprep.extractors.synth import make_garbage, make_video
from conftest import LOCAL_BEAM, shards_and_index

CLIPS = 6  # 5 videos and a garbage file (a media failure), 3 per shard


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_media")
    rows = ["path,label"]
    for i in range(CLIPS):
        name = f"clip{i}.mp4"
        if i == 4:
            make_garbage(str(root / name), seed=4)
        else:
            make_video(str(root / name), duration=1.5, fps=10, size=(96, 64),
                       audio_freq=300 + 100 * i, motion=(1.0 + i % 3, 0.5))
        rows.append(f"{name},{'ab'[i % 2]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


def _args(media, out, *extra) -> list:
    return ["run", "--dataset", "generic", "--manifest", media / "list.csv", "--output", out,
            "--shard-size", "3", "--modalities", "rgb,mfcc", "--no-progress", "--workers",
            "2", *LOCAL_BEAM, *extra]


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory):
    """An uninterrupted run's shards and index."""
    from actprep.commands.cli import main

    out = tmp_path_factory.mktemp("fault_ref") / "out"
    assert main([str(a) for a in _args(media, out)]) == 0
    return shards_and_index(out)


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of the size given (KiB) at a fresh folder; ``remount(**options)``
    changes it in place. Skips where mounting is not permitted, except under CI."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(kib: int) -> str:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs",
                               str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            message = f"cannot mount a tmpfs here: {done.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        mounted.append(point)
        return point

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)

    mount.remount = remount
    yield mount
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], check=False)


def _rows(out) -> list[dict]:
    return pq.read_table(out / "index").to_pylist() if (out / "index").exists() else []


@pytest.mark.slow
@pytest.mark.e2e
def test_a_full_disk_stops_the_run_and_a_rerun_gives_the_same_bytes(
        run_cli, media, reference, tmpfs, capsys):
    """The output's disk fills mid-run: one line names the cause and the output, exit 1,
    and nothing is committed as a video's failure. After space is freed, the same command
    resumes to the shards and index of an uninterrupted run, byte for byte."""
    need = sum(len(b) for b in reference.values()) // 1024
    point = tmpfs(max(64, need // 2))  # room for the plan and part of the work
    out = point / "out"
    code = run_cli(_args(media, out))
    err = capsys.readouterr().err
    assert code == exitcodes.ERROR, err
    assert "actprep: error: no space left on the device" in err and str(out) in err, err
    assert "Traceback" not in err and len(err.splitlines()) < 8, err
    # what was committed holds no environment fault as a failure
    assert all(r["failure_stage"] in (None, "probe") for r in _rows(out))
    tmpfs.remount("size=64m")
    code = run_cli(_args(media, out))
    err = capsys.readouterr().err
    assert code == exitcodes.OK, err
    assert shards_and_index(out) == reference


def test_a_read_only_output_is_one_line(run_cli, media, tmpfs, capsys):
    point = tmpfs(1024)
    (point / "out").mkdir()
    tmpfs.remount("ro")
    assert run_cli(_args(media, point / "out")) == exitcodes.ERROR
    err = capsys.readouterr().err
    assert "actprep: error: read-only file system" in err and str(point / "out") in err, err
    assert "Traceback" not in err
    with pytest.raises(faults.EnvironmentFault):  # --debug: the traceback, for a person who asks for it
        run_cli(_args(media, point / "out", "--debug"))


def test_an_output_that_is_a_file_is_one_line(run_cli, media, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert run_cli(_args(media, tmp_path / "out")) == exitcodes.ERROR
    err = capsys.readouterr().err
    assert err.count("\n") <= 3 and str(tmp_path / "out") in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.e2e
def test_a_transient_fault_is_retried_and_changes_nothing(run_cli, media, reference,
                                                          tmp_path, monkeypatch, caplog):
    """An I/O error while processing a video: the video is tried again (the run goes on,
    its attempts stay 1) and the output is that of a run without the fault."""
    monkeypatch.setenv("ACTPREP_FAULT_AT", "eio@process:extract:2")
    faults._arrivals.clear()
    out = tmp_path / "out"
    assert run_cli(_args(media, out)) == exitcodes.OK
    assert "input/output error" in caplog.text and "trying again" in caplog.text
    assert shards_and_index(out) == reference


@pytest.mark.slow
@pytest.mark.e2e
def test_a_bug_is_recorded_exits_4_and_a_plain_rerun_retries_it(run_cli, media, reference,
                                                                 tmp_path, monkeypatch, capsys):
    # the second video to arrive: the third of shard-000000 in plan order is the garbage
    # clip4 (it reaches extract too), whose retry would fail in probe, not end ok
    monkeypatch.setenv("ACTPREP_FAULT_AT", "bug@process:extract:2")
    faults._arrivals.clear()
    out = tmp_path / "out"
    assert run_cli(_args(media, out)) == exitcodes.FAILURES
    err = capsys.readouterr().err
    internal = out / "_work" / "internal"
    assert "1 videos met an internal error: a bug in actprep" in err and str(internal) in err
    (bug,) = [r for r in _rows(out) if r["failure_stage"] == "internal"]
    assert bug["failure_reason"] == "ZeroDivisionError: injected bug at process:extract"
    (trace,) = internal.iterdir()
    assert bug["key"] in trace.read_text() and "Traceback" in trace.read_text()
    monkeypatch.delenv("ACTPREP_FAULT_AT")
    assert run_cli(_args(media, out)) == exitcodes.OK
    err = capsys.readouterr().err
    assert "reopened 1 committed shards to retry the videos that met an internal error" in err
    rows = {r["key"]: r for r in _rows(out)}
    assert rows[bug["key"]]["status"] == "ok" and rows[bug["key"]]["attempts"] == 2
    assert not (out / "_work").exists()


@pytest.mark.e2e
def test_too_many_failures_exit_4_but_commit(run_cli, tmp_path, capsys):
    """Every row failed (here: no video found): the shards are committed, the exit status
    says so unless --max-failed-fraction allows it."""
    (tmp_path / "list.csv").write_text("path,label\na.mp4,x\nb.mp4,y\n")
    args = ["run", "--dataset", "generic", "--manifest", tmp_path / "list.csv",
            "--video-root", tmp_path, "--output", tmp_path / "out", "--no-progress",
            *LOCAL_BEAM]
    assert run_cli(args) == exitcodes.FAILURES
    err = capsys.readouterr().err
    assert "2 of 2 rows failed (100%), more than --max-failed-fraction 0.5" in err
    assert (tmp_path / "out" / "shard-000000.tar").exists()
    assert run_cli(args + ["--max-failed-fraction", "1"]) == exitcodes.OK


def test_local_paths_with_a_remote_runner_are_refused_before_planning(run_cli, tmp_path,
                                                                      capsys):
    (tmp_path / "list.csv").write_text("path,label\na.mp4,x\n")
    code = run_cli(["run", "--dataset", "generic", "--manifest", tmp_path / "list.csv",
                    "--output", "gs://bucket/out", "--runner=DataflowRunner",
                    "--project=p", "--region=us-central1"])
    err = capsys.readouterr().err
    assert code == exitcodes.USAGE, err
    assert f"cannot read this machine's disk: --manifest {tmp_path / 'list.csv'}" in err
    assert "Traceback" not in err


def test_a_kinetics_csv_given_as_moments_in_time_is_an_input_error(run_cli, tmp_path, capsys):
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                        "abseiling,abc,0,10,train\n")
    code = run_cli(["run", "--dataset", "mit", "--manifest", tmp_path / "train.csv",
                    "--video-root", tmp_path, "--output", tmp_path / "out", *LOCAL_BEAM])
    assert code == exitcodes.USAGE
    assert "use --dataset kinetics" in capsys.readouterr().err


def test_what_is_whose_fault():
    """The sorting itself: errno faults and service errors are the environment's (the
    transient ones retried), anything else unexpected is a bug."""
    import errno

    from google.api_core.exceptions import ServiceUnavailable

    full = faults.environment_fault(OSError(errno.ENOSPC, "No space left", "/out/x.tar"))
    assert (full.cause, full.path, full.transient) == ("no space left on the device",
                                                      "/out/x.tar", False)
    assert faults.environment_fault(OSError(errno.EIO, "I/O")).transient
    assert faults.environment_fault(ServiceUnavailable("busy")).transient
    assert faults.environment_fault(MemoryError()).cause == "out of memory"
    assert faults.environment_fault(KeyError("x")) is None
    assert faults.environment_fault(ValueError("x")) is None


def test_a_fault_is_found_in_a_remote_runners_error_text():
    """Dataflow reports a worker's error as text: the launcher finds the fault in it."""
    text = ("Workflow failed. Causes: S04:Process failed., The job failed because a work "
            "item has failed 4 times.\nTraceback (most recent call last):\n  ...\n"
            "actprep.pipelines.faults.EnvironmentFault: actprep environment fault: "
            "actprep environment fault: permission denied (gs://b/out/_work/shard-000002/"
            "000000031.tar) [while running 'Process']\n")
    assert faults.fault_in_text(text) == ("permission denied "
                                          "(gs://b/out/_work/shard-000002/000000031.tar)")
    assert faults.fault_in_text("Workflow failed: quota") is None
