"""Damaged outputs: a committed shard whose index is missing or unreadable, or whose tar is
not the size recorded at its commit, is redone by a rerun to a clean run's bytes; stats and
verify name it without a traceback. Also: resuming with the same manifest named another way,
no output folder left by bad input, and a summary that says how many failure reasons more."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from actprep.commands import exitcodes
from actprep.extractors.synth import make_garbage, make_video
from conftest import LOCAL_BEAM, shards_and_index


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair_media")
    rows = ["path,label"]
    for i in range(5):
        make_video(str(root / f"c{i}.mp4"), duration=1.0, fps=10, size=(64, 48),
                   audio_freq=300 + 100 * i)
        rows.append(f"c{i}.mp4,{'ab'[i % 2]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


def _args(manifest, out, *extra) -> list:
    return ["run", "--dataset", "generic", "--manifest", manifest, "--output", out,
            "--shard-size", "2", "--modalities", "rgb,mfcc", "--no-progress", *LOCAL_BEAM,
            *extra]


@pytest.fixture(scope="module")
def clean(media, tmp_path_factory):
    from actprep.commands.cli import main

    out = tmp_path_factory.mktemp("repair_clean") / "out"
    assert main([str(a) for a in _args(media / "list.csv", out)]) == 0
    return shards_and_index(out)


def _damage(out) -> None:
    """Shard 0 loses its index, shard 1's index is garbage, shard 2's tar is cut short."""
    (out / "index" / "shard-000000.parquet").unlink()
    (out / "index" / "shard-000001.parquet").write_bytes(b"not parquet at all\n")
    tar = out / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.e2e
def test_damaged_shards_are_redone_to_a_clean_runs_bytes(run_cli, media, clean, tmp_path,
                                                         capsys):
    out = tmp_path / "out"
    assert run_cli(_args(media / "list.csv", out)) == 0
    _damage(out)
    capsys.readouterr()
    assert run_cli(_args(media / "list.csv", out)) == exitcodes.OK
    err = capsys.readouterr().err
    assert "shard-000000 is damaged (its index is missing): redoing it" in err, err
    assert "shard-000001 is damaged (its index is not a readable Parquet file" in err
    assert "shard-000002 is damaged (its tar is " in err and "when it was committed" in err
    assert shards_and_index(out) == clean


@pytest.mark.slow
@pytest.mark.e2e
def test_stats_and_verify_name_a_damaged_output_without_traceback(run_cli, media, tmp_path,
                                                                  capsys):
    out = tmp_path / "out"
    assert run_cli(_args(media / "list.csv", out)) == 0
    (out / "index" / "shard-000000.parquet").unlink()
    (out / "index" / "shard-000001.parquet").write_bytes(b"not parquet at all\n")
    capsys.readouterr()
    assert run_cli(["stats", out]) == 1
    text = capsys.readouterr().out
    assert "WARNING: shard-000000 is damaged: its index is missing" in text
    assert "WARNING: shard-000001 is damaged: its index is not a readable index file" in text
    assert "Traceback" not in text
    assert run_cli(["stats", out, "--json"]) == 1
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["damaged"]) == {"shard-000000", "shard-000001"}
    assert stats["samples_ok"] == 1  # the intact shard-000002's
    assert run_cli(["verify", out]) != 0
    captured = capsys.readouterr()
    report = captured.out + captured.err
    assert "shard-000000" in report and "shard-000001" in report and "Traceback" not in report


@pytest.mark.slow
@pytest.mark.e2e
def test_stats_warns_of_planned_shards_not_committed(run_cli, media, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(_args(media / "list.csv", out)) == 0
    (out / "shard-000001.tar").unlink()
    (out / "index" / "shard-000001.parquet").unlink()
    capsys.readouterr()
    assert run_cli(["stats", out]) == 0
    assert ("WARNING: 1 of 3 planned shards are not committed (a run still going, or "
            "stopped): shard-000001") in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.e2e
def test_the_same_manifest_named_another_way_resumes(run_cli, media, tmp_path, monkeypatch,
                                                     capsys):
    """A relative path, an absolute one and a symlink name the same manifest and root."""
    monkeypatch.chdir(media)
    out = tmp_path / "out"
    assert run_cli(_args("list.csv", out, "--video-root", ".")) == 0
    os.symlink(media, tmp_path / "link")
    capsys.readouterr()
    assert run_cli(_args(tmp_path / "link" / "list.csv", out, "--video-root",
                         tmp_path / "link")) == 0
    assert "nothing to do: every shard is committed" in capsys.readouterr().err


def test_bad_input_leaves_no_output_folder(run_cli, tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path,label\na.mp4,x,extra\n")
    out = tmp_path / "new" / "out"
    assert run_cli(_args(tmp_path / "list.csv", out)) == exitcodes.USAGE
    assert "list.csv:2: expected 2 fields" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.e2e
def test_the_summary_says_how_many_failure_reasons_it_left_out(run_cli, tmp_path, capsys):
    """Twelve unknown labels are twelve failure reasons: ten listed, the rest counted."""
    rows = ["path,label"]
    for i in range(12):
        make_garbage(str(tmp_path / f"v{i}.mp4"), 64, seed=i)
        rows.append(f"v{i}.mp4,label{i}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("known\n")
    code = run_cli(_args(tmp_path / "list.csv", tmp_path / "out", "--classes",
                         tmp_path / "classes.txt", "--max-failed-fraction", "1"))
    err = capsys.readouterr().err
    assert code == exitcodes.OK, err
    assert err.count("  failed x1: manifest: unknown label") == 10
    assert (f"... and 2 more failure reasons (2 rows): 'actprep stats {tmp_path / 'out'}' "
            f"lists them all") in err


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_commit_leaves_no_tar_without_its_index(media, tmp_path):
    """The commit writes the tar under a temporary name, then the index (with the tar's
    size), then renames the tar: killed after the index, the shard is not committed and
    the rerun commits it; the index records the size of the tar it sits beside."""
    from actprep.commands.cli import main
    from actprep.schemas.index import index_footer

    out = tmp_path / "out"
    env = {**os.environ, "ACTPREP_CRASH_AT": "commit:index:1"}
    done = subprocess.run([sys.executable, "-m", "actprep.commands.cli",
                           *map(str, _args(media / "list.csv", out))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    assert not (out / "shard-000000.tar").exists()
    assert main([str(a) for a in _args(media / "list.csv", out)]) == 0
    for shard in range(3):
        data = (out / "index" / f"shard-{shard:06d}.parquet").read_bytes()
        assert index_footer(data)[1] == (out / f"shard-{shard:06d}.tar").stat().st_size
