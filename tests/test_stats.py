"""``actprep stats``: figures of a real output, checked against what was generated."""
from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pytest

from actprep.reports import stats
from actprep.reports.stats import compute, failure_reason, load_index, output_stats
from actprep.extractors.synth import make_garbage, make_video
from actprep.schemas.index import INDEX_SCHEMA, index_table
from actprep.schemas.labels import LabelMap
from conftest import LOCAL_BEAM

# name, duration s, fps, audio, motion px/frame (x); labels: a a b b (garbage: b)
VIDEOS = [("v0.mp4", 1.0, 10, 440.0, 1.0), ("v1.mp4", 2.0, 10, 440.0, 3.0),
          ("v2.mp4", 1.5, 20, None, 2.0)]


@pytest.fixture(scope="module")
def output(tmp_path_factory, run_cli_module):
    root = tmp_path_factory.mktemp("stats")
    rows = ["path,label"]
    for (name, duration, fps, audio, dx), label in zip(VIDEOS, "aab"):
        make_video(str(root / name), duration=duration, fps=fps, size=(64, 48),
                   audio_freq=audio, motion=(dx, 0.0))
        rows.append(f"{name},{label}")
    make_garbage(str(root / "bad.mp4"))
    rows.append("bad.mp4,b")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("a\nb\nc\n")  # c: a class without samples
    out = root / "out"
    assert run_cli_module(["run", "--dataset", "generic", "--manifest", root / "list.csv",
                           "--classes", root / "classes.txt", "--output", out,
                           "--size", "64x48", "--modalities", "rgb,flow,mfcc",
                           "--flow-backend", "opencv", "--shard-size", "2", "--no-progress",
                           *LOCAL_BEAM]) == 0
    return out


@pytest.fixture(scope="module")
def run_cli_module():
    from actprep.commands.cli import main

    def run(args):
        try:
            return main([str(a) for a in args])
        except SystemExit as exc:
            return int(exc.code or 0)
    return run


def _stats(run_cli, capsys, *args) -> dict:
    capsys.readouterr()
    assert run_cli(["stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_json(output, run_cli, capsys):
    s = _stats(run_cli, capsys, output)
    assert s["samples_ok"] == 3 and s["samples_failed"] == 1 and s["shards"] == 2
    tars = [f for f in os.listdir(output) if f.endswith(".tar")]
    assert s["bytes"] == sum(os.path.getsize(output / f) for f in tars)
    assert s["classes"] == {"a": 2, "b": 1, "c": 0}
    assert s["classes_missing"] == ["c"]
    (reason,) = s["failures"]
    assert reason.startswith("probe: Invalid data found when processing input")
    assert s["failures_by_stage"] == {"probe": 1}
    assert s["frames"] == 10 + 20 + 30 and s["flow_pairs"] == 9 + 19 + 29
    assert s["hours"] == pytest.approx(4.5 / 3600, abs=1e-4)
    assert s["coverage"] == {"rgb": 1.0, "flow": 1.0, "mfcc": 0.6667, "vggish": 0.0,
                             "audio": 0.6667}
    assert s["duration"]["min"] == 1.0 and s["duration"]["max"] == 2.0
    assert s["fps_values"] == {"10": 2, "20": 1}
    assert s["stored_resolution"] == {"64x48": 3}
    # the synthetic motions, 1, 3 and 2 px per frame, are what the flow summary sees
    assert s["flow_magnitude"]["min"] == pytest.approx(1.0, abs=0.25)
    assert s["flow_magnitude"]["max"] == pytest.approx(3.0, abs=0.5)
    # ffmpeg's sine source: amplitude 1/8, so RMS 1/(8 sqrt 2) = -21.1 dBFS
    assert s["audio_rms_dbfs"]["median"] == pytest.approx(-21.1, abs=0.3)
    assert [r["ok"] + r["failed"] for r in s["shard_table"]] == [2, 2]
    # each shard's classes and largest class, as its ok rows in the index have them; none
    # flagged (shards of 2 never are: the rule allows 3 samples over twice the share)
    table, _ = load_index(str(output))
    for row in s["shard_table"]:
        labels = [r["label"] for r in table.to_pylist()
                  if r["shard"] == row["shard"] and r["status"] == "ok"]
        top = max(labels.count(x) for x in labels)
        assert (row["classes"], row["top_share"]) == (len(set(labels)),
                                                      round(top / len(labels), 4))
    assert s["shards_badly_mixed"] == [] and s["shard_order"] == "stratified-1"
    assert sum(s["histograms"]["duration"]["counts"]) == 3


def test_stats_text_and_html(output, run_cli, capsys, tmp_path):
    report = tmp_path / "report.html"
    assert run_cli(["stats", output, "--html", report, "--min-class-samples", "2"]) == 0
    text = capsys.readouterr().out
    assert "3 samples ok, 1 failed, 2 shards" in text
    assert "classes missing: c (0)" in text and "classes under threshold: b (1)" in text
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") >= 6
    assert not re.search(r'(src|href)="(http|//)', page)  # self-contained
    assert "Invalid data found when processing input" in page
    assert "0 of 2 badly mixed (largest class over 2x its share of the split" in page


def test_stats_ignores_an_index_without_its_shard(output, run_cli, capsys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    os.remove(copy / "shard-000001.tar")  # as if its commit were in progress
    s = _stats(run_cli, capsys, copy)
    assert s["shards"] == 1 and s["samples_ok"] + s["samples_failed"] == 2


def test_stats_of_a_folder_that_is_no_output(run_cli, tmp_path, capsys):
    assert run_cli(["stats", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "not an actprep output" in err and "inside it" not in err


def test_stats_of_the_folder_above_an_output_names_it(run_cli, tmp_path, capsys):
    """As after ``actprep demo --output DIR``: DIR holds the videos and DIR/shards the output."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "run.json").write_text("{}")
    (tmp_path / "videos").mkdir()
    assert run_cli(["stats", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "not an actprep output" in err
    assert f"the output inside it: {tmp_path / 'shards'}" in err


def test_failure_reasons_group_without_paths():
    assert failure_reason("probe", "/data/x/abc.mp4: Invalid data", "/data/x/abc.mp4") == \
        "probe: <video>: Invalid data"
    assert failure_reason("fetch", "file not found: gs://b/v/q.webm", "gs://b/v/q.webm") == \
        "fetch: file not found: <video>"


def test_compute_on_an_empty_index():
    s = compute(INDEX_SCHEMA.empty_table(), {})
    assert s["samples_ok"] == 0 and s["shards"] == 0 and s["duration"] is None
    assert s["classes"] == {} and s["histograms"]["duration"] is None
    table = pa.Table.from_pylist([], schema=INDEX_SCHEMA)
    assert compute(table, {})["coverage"]["rgb"] == 0.0


def test_failure_reasons_group_without_keys():
    reason = "video not found: no abc_000001_000011.{mp4/mkv/webm/avi} under the video root"
    assert failure_reason("manifest", reason, None, "abc_000001_000011") == \
        "manifest: video not found: no <key>.{mp4/mkv/webm/avi} under the video root"
    rows = [{"key": key, "line": i, "shard": "shard-000000", "status": "failed",
             "failure_stage": "manifest", "failure_reason": f"video not found: no {key}.mp4"}
            for i, key in enumerate(["a_1", "b_2", "c_3"])]
    s = compute(index_table(rows), {"shard-000000": 1024})
    assert s["failures"] == {"manifest: video not found: no <key>.mp4": 3}
    assert s["shard_table"] == [{"shard": "shard-000000", "ok": 0, "failed": 3, "bytes": 1024,
                                 "classes": 0, "top_class": None, "top_share": None,
                                 "badly_mixed": False}]


def test_streamed_stats_equal_the_whole_table(output, monkeypatch):
    """The CLI adds the index a batch of shards at a time; the figures are those of the
    whole table, whether a batch holds every shard or one."""
    labels = LabelMap.from_json((output / "labels.json").read_text())
    whole = compute(*load_index(str(output)), labels)
    streamed = output_stats(str(output), labels)
    # what only the streamed reading reports: the output's damage and missing shards
    checks = {k: streamed.pop(k) for k in ("damaged", "shards_planned", "shards_missing",
                                           "shards_missing_names", "shard_order")}
    assert streamed == whole
    assert checks["damaged"] == {} and checks["shards_missing"] == 0
    assert checks["shard_order"] == "stratified-1"
    monkeypatch.setattr(stats, "BATCH_ROWS", 1)
    streamed = output_stats(str(output), labels, workers=1)
    assert {k: v for k, v in streamed.items() if k not in checks} == whole
