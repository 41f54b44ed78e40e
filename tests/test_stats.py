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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["stats", "verify"])
def test_the_folder_above_an_output_names_it_and_the_command(output, run_cli, capsys,
                                                              command):
    """As after ``actprep demo --output DIR``: DIR holds the videos, the manifest and the
    output (here root/out); stats and verify name the output and the command to run."""
    root = output.parent
    capsys.readouterr()
    assert run_cli([command, root]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"actprep {command}: error: {root} is not an actprep output (no "
                            f"run.json); it holds one: {output}. Try: actprep {command} "
                            f"{output}\n")
    suggested = captured.err.rsplit("Try: ", 1)[1].split()  # the command it suggests works
    assert suggested[:2] == ["actprep", command]
    assert run_cli(suggested[1:]) == 0


def test_the_folder_above_several_outputs_names_them(run_cli, tmp_path, capsys):
    """Only immediate subfolders count: an output two levels down is not searched for."""
    for name in ("b", "a", "c/deeper"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "run.json").write_text("{}")
    (tmp_path / "videos").mkdir()
    (tmp_path / "run.json.txt").write_text("")
    assert run_cli(["stats", tmp_path]) == 2
    err = capsys.readouterr().err
    assert (f"it holds 2: {tmp_path / 'a'}, {tmp_path / 'b'}. Try: actprep stats "
            f"{tmp_path / 'a'}") in err
    assert "deeper" not in err


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


@pytest.mark.e2e
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


# --- the text report: classes and units --------------------------------------------------

@pytest.mark.e2e
def test_stats_text_has_per_class_counts_and_units(output, run_cli, capsys):
    capsys.readouterr()
    assert run_cli(["stats", output]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    # the header: every figure with its unit
    assert re.fullmatch(rf"{re.escape(str(output))}: 3 samples ok, 1 failed, 2 shards, "
                        r"\d+(\.\d+)? (kB|MB), 4\.5 s of video, 60 frames, 57 flow pairs",
                        lines[0]), lines[0]
    # samples per class (a 2, b 1, c 0), largest first, with the balance summary
    assert "classes: 3, 1 with no sample, 0 under 1 sample (--min-class-samples)" in lines
    assert "ok samples per class: min 0 (c), median 1, max 2 (a); largest/smallest " \
           "non-empty 2x" in lines
    table = lines.index("  samples  class")
    assert lines[table + 1:table + 4] == ["        2  a", "        1  b", "        0  c"]
    # distributions: one row per figure with its unit, values as the JSON has them
    s = _stats(run_cli, capsys, output)
    header = next(line for line in lines if line.startswith("of ok samples"))
    assert header.split()[3:] == ["mean", "min", "p5", "median", "p95", "max", "samples"]
    rows = {line.rsplit(")", 1)[0] + ")": line.rsplit(")", 1)[1].split() for line in lines
            if line.startswith(("duration (", "frame rate (", "flow magnitude (",
                                "audio RMS level ("))}
    assert list(rows) == ["duration (s)", "frame rate (fps)", "flow magnitude (px)",
                          "audio RMS level (dBFS)"]
    for name, row in zip(("duration", "fps", "flow_magnitude", "audio_rms_dbfs"),
                         rows.values()):
        d = s[name]
        assert [float(v) for v in row[:6]] == pytest.approx(
            [d[f] for f in ("mean", "min", "p5", "median", "p95", "max")], rel=1e-3)
        assert int(row[6]) == d["count"]
    assert rows["audio RMS level (dBFS)"][6] == "2"  # v2 has no audio
    assert "frame rates: 2 samples at 10 fps, 1 at 20 fps" in lines
    assert "stored resolution: 3 samples at 64x48 px" in lines
    assert "source resolution: 3 samples at 64x48 px" in lines


def _many_classes(n_classes: int = 50):
    """Index rows of one shard with class k holding k + 1 ok samples (k = 0..n-1), the
    last class none; and the stats of them."""
    names = [f"class{k:02d}" for k in range(n_classes)]
    rows = [{"key": f"{name}_{i}", "line": 0, "shard": "shard-000000", "status": "ok",
             "label": name}
            for k, name in enumerate(names[:-1]) for i in range(k + 1)]
    labels = LabelMap(tuple(names), "test")
    return names, compute(index_table(rows), {"shard-000000": 10 ** 6}, labels)


def test_stats_text_of_many_classes_is_bounded():
    """Kinetics has 400-700 classes: the text shows min/median/max and the classes at the
    extremes; --all-classes (render_text's all_classes) every class."""
    names, s = _many_classes()
    lines = stats.render_text(s, "OUT").splitlines()
    assert "ok samples per class: min 0 (class49), median 24.5, max 49 (class48); " \
           "largest/smallest non-empty 49x" in lines
    table = lines.index("  samples  class")
    shown = lines[table + 1:table + 12]
    assert shown[:5] == [f"  {k + 1:>7}  class{k:02d}" for k in (48, 47, 46, 45, 44)]
    assert shown[5] == "      ...  40 more classes (--all-classes lists every class, " \
                       "--json has them all)"
    assert shown[6:] == [f"  {n:>7}  class{k:02d}" for n, k in
                         ((4, 3), (3, 2), (2, 1), (1, 0), (0, 49))]
    assert not re.match(r" +\d+  class", lines[table + 12])  # the table ends there
    everything = stats.render_text(s, "OUT", all_classes=True).splitlines()
    table = everything.index("  samples  class")
    assert [line.split()[-1] for line in everything[table + 1:table + 51]] == \
        names[-2::-1] + [names[-1]]
    assert s["classes"] == {name: (k + 1 if k < 49 else 0) for k, name in enumerate(names)}


@pytest.mark.e2e
def test_stats_all_classes_flag(output, run_cli, capsys):
    capsys.readouterr()
    assert run_cli(["stats", output, "--all-classes"]) == 0
    assert "        2  a\n        1  b\n        0  c\n" in capsys.readouterr().out


def test_sizes_and_durations_have_units():
    assert [stats.size_text(n) for n in (0, 999, 1000, 13_912_880, 2.5e9, 3.2e13)] == \
        ["0 B", "999 B", "1 kB", "13.9 MB", "2.5 GB", "32 TB"]
    assert [stats.duration_text(s) for s in (0, 22.7, 600, 45_000)] == \
        ["0 s", "22.7 s", "10 min", "12.5 h"]


# --- the HTML report's figures ------------------------------------------------------------

@pytest.fixture(scope="module")
def rgb_output(output, run_cli_module):
    """The same videos with rgb only: no flow and no audio values."""
    root = output.parent
    out = root / "rgb_only"
    assert run_cli_module(["run", "--dataset", "generic", "--manifest", root / "list.csv",
                           "--classes", root / "classes.txt", "--output", out,
                           "--size", "64x48", "--modalities", "rgb", "--shard-size", "2",
                           "--no-progress", *LOCAL_BEAM]) == 0
    return out


def _drawn(ax) -> list[float]:
    """The values an axes draws: bar lengths and histogram counts."""
    from matplotlib.patches import Rectangle, StepPatch

    values = []
    for patch in ax.patches:
        if isinstance(patch, StepPatch):
            values += list(patch.get_data().values)
        elif isinstance(patch, Rectangle):
            values.append(max(abs(patch.get_width()), abs(patch.get_height())))
    return values


def _check_figures(stats_of: dict) -> dict:
    """Every figure of the report has data on every axes, and every count axis ticks
    whole numbers only; returns the figures by name (closed)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from actprep.reports.stats_html import COUNT, figures

    made = figures(stats_of)
    try:
        for name, fig in made.items():
            fig.canvas.draw()
            for ax in fig.axes:
                values = _drawn(ax)
                assert values and any(v > 0 for v in values), f"{name}: empty axes"
                counts = [axis for axis in (ax.xaxis, ax.yaxis)
                          if axis.get_label().get_text() == COUNT]
                assert len(counts) == (0 if name == "shards" else 1), name
                for axis in counts:
                    assert isinstance(axis.get_major_locator(), MaxNLocator), name
                    ticks = axis.get_majorticklocs()
                    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), \
                        (name, ticks)
        return made
    finally:
        for fig in made.values():
            plt.close(fig)


def _shard_ticks(fig) -> dict[int, str]:
    ax = fig.axes[0]
    return {int(round(t)): label.get_text() for t, label in
            zip(ax.get_xticks(), ax.get_xticklabels())}


@pytest.mark.e2e
def test_html_figures_of_a_full_output(output):
    s = output_stats(str(output), LabelMap.from_json((output / "labels.json").read_text()))
    made = _check_figures(s)
    assert set(made) == {"classes", "duration", "fps", "flow_magnitude", "audio_rms_dbfs",
                         "fps_values", "stored_resolution", "source_resolution", "shards"}
    assert _shard_ticks(made["shards"]) == {0: "shard-000000", 1: "shard-000001"}


@pytest.mark.e2e
def test_html_of_an_output_without_flow_or_audio_leaves_their_panels_out(rgb_output, tmp_path,
                                                                          run_cli, capsys):
    from actprep.reports.stats_html import render

    s = output_stats(str(rgb_output))
    assert s["flow_magnitude"] is None and s["audio_rms_dbfs"] is None
    made = _check_figures(s)
    assert set(made) == {"classes", "duration", "fps", "fps_values", "stored_resolution",
                         "source_resolution", "shards"}
    page = render(s, str(rgb_output))
    assert page.count("data:image/png;base64,") == len(made)
    assert "<p>Left out, no ok sample has a value: flow magnitude, audio level</p>" in page
    assert "no values" not in page
    capsys.readouterr()
    assert run_cli(["stats", rgb_output]) == 0
    text = capsys.readouterr().out
    assert "duration (s)" in text and "flow magnitude" not in text and "audio RMS" not in text
    assert "flow pairs" not in text.splitlines()[0]


def test_html_shard_names_are_thinned_when_many():
    from actprep.reports.stats_html import SHARD_LABELS

    names = [f"shard-{n:06d}" for n in range(237)]
    rows = [{"key": f"k{n}", "line": n, "shard": name, "status": "ok", "label": "a"}
            for n, name in enumerate(names)]
    s = compute(index_table(rows), {name: 10 ** 6 + n for n, name in enumerate(names)})
    ticks = _shard_ticks(_check_figures(s)["shards"])
    assert 10 <= len(ticks) <= SHARD_LABELS
    assert ticks[0] == names[0] and all(names[i] == label for i, label in ticks.items())
    steps = {b - a for a, b in zip(sorted(ticks), sorted(ticks)[1:])}
    assert len(steps) == 1  # evenly spaced


def test_html_class_chart_of_many_classes_is_bounded():
    """Kinetics' 400-700 classes: a histogram of the classes by count and bars for the
    largest and smallest, not one unreadable bar per class; 50 classes: a bar each."""
    from matplotlib.patches import Rectangle

    from actprep.reports.stats_html import CLASS_BARS, CLASS_ENDS

    names, s = _many_classes(700)
    fig = _check_figures(s)["classes"]
    hist, ends = fig.axes
    assert fig.get_size_inches()[1] < 12
    assert sum(p.get_height() for p in hist.patches if isinstance(p, Rectangle)) == 700
    labels = [t.get_text() for t in ends.get_yticklabels()]
    largest = [f"class{k:02d}" for k in range(698, 698 - CLASS_ENDS, -1)]
    smallest = [f"class{k:02d}" for k in range(CLASS_ENDS - 2, -1, -1)] + ["class699"]
    assert labels == largest + [f"... {700 - 2 * CLASS_ENDS} more classes"] + smallest
    assert [p.get_width() for p in ends.patches] == \
        [699 - i for i in range(CLASS_ENDS)] + [CLASS_ENDS - 1 - i for i in range(CLASS_ENDS)]
    assert ends.patches[-1].get_facecolor()[:3] != ends.patches[0].get_facecolor()[:3]  # red

    _, few = _many_classes(CLASS_BARS)
    bars = _check_figures(few)["classes"].axes
    assert len(bars) == 1 and len(bars[0].patches) == CLASS_BARS


def test_html_of_an_output_without_ok_samples_draws_no_empty_panel():
    rows = [{"key": f"k{n}", "line": n, "shard": "shard-000000", "status": "failed",
             "failure_stage": "probe", "failure_reason": "bad"} for n in range(3)]
    labels = LabelMap(("a", "b"), "test")
    s = compute(index_table(rows), {"shard-000000": 4096}, labels)
    assert s["classes"] == {"a": 0, "b": 0}
    assert set(_check_figures(s)) == {"shards"}
