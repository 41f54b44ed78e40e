"""End-to-end runs of ``actprep run`` on generated media: every manifest row ends as one
sample or one recorded failure, and the shards hold what the index says."""
from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from actprep.extractors.decode import output_size
from actprep.extractors.probe import probe
from actprep.schemas.sample import decode_sample
from conftest import LOCAL_BEAM, clip_key


def _index(out: str) -> list[dict]:
    return pq.read_table(os.path.join(out, "index")).to_pylist()


def _samples(out: str) -> dict[str, dict]:
    shards = sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    urls = [os.path.join(out, s) for s in shards]
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}


# the fixture sets fail more than half their rows on purpose (every kind of bad video)
FAILURES_EXPECTED = ["--max-failed-fraction", "1"]


def _run_kinetics(run_cli, kinetics_set, out, *extra) -> int:
    return run_cli(["run", "--dataset", "kinetics", "--manifest", kinetics_set["manifest"],
                    "--video-root", kinetics_set["videos"], "--output", out,
                    "--shard-size", "4", "--no-progress", *FAILURES_EXPECTED, *extra,
                    *LOCAL_BEAM])


@pytest.fixture(scope="module")
def kinetics_run(kinetics_set, tmp_path_factory):
    from actprep.commands.cli import main

    out = str(tmp_path_factory.mktemp("out") / "k")
    code = main(["run", "--dataset", "kinetics", "--manifest", kinetics_set["manifest"],
                 "--video-root", kinetics_set["videos"], "--output", out, "--shard-size", "4",
                 "--no-progress", *FAILURES_EXPECTED, *LOCAL_BEAM])
    assert code == 0
    return out


@pytest.mark.e2e
def test_every_row_is_a_sample_or_a_recorded_failure(kinetics_set, kinetics_run):
    rows = _index(kinetics_run)
    clips = kinetics_set["clips"]
    assert len(rows) == len(clips)
    by_key = {r["key"]: r for r in rows}
    assert set(by_key) == {clip_key(c) for c in clips}
    for clip in clips:
        row = by_key[clip_key(clip)]
        if clip.fail_stage is None:
            assert row["status"] == "ok", row
        else:
            assert row["status"] == "failed", row
            assert row["failure_stage"] == clip.fail_stage, row
            assert clip.fail_text in row["failure_reason"], row
    samples = _samples(kinetics_run)
    assert set(samples) == {r["key"] for r in rows if r["status"] == "ok"}
    assert not os.path.exists(os.path.join(kinetics_run, "_work"))


@pytest.mark.e2e
def test_samples_match_their_sources(kinetics_set, kinetics_run):
    labels = json.load(open(os.path.join(kinetics_run, "labels.json")))["classes"]
    assert labels == sorted({c.label for c in kinetics_set["clips"]})
    rows = {r["key"]: r for r in _index(kinetics_run)}
    samples = _samples(kinetics_run)
    for clip in kinetics_set["clips"]:
        if clip.fail_stage:
            continue
        key = clip_key(clip)
        path = os.path.join(kinetics_set["videos"], clip.folder, key + clip.ext)
        info = probe(path)
        width, height = output_size(info.width, info.height, short_side=256)
        arrays = decode_sample(samples[key])
        meta, row = arrays["meta"], rows[key]
        # frame count = duration x fps (the AVI's container duration includes mp3 padding)
        assert abs(meta["frames"] - info.duration * info.fps) <= 1, (key, meta["frames"])
        assert arrays["rgb"].shape == (meta["frames"], height, width, 3)
        assert row["frames"] == meta["frames"] and row["width"] == width
        assert min(width, height) == 256
        assert arrays["label"] == labels.index(clip.label) == row["label_index"]
        assert meta["label"] == clip.label and meta["split"] == "train"
        assert meta["source_path"].endswith(key + clip.ext)
        assert meta["layout_version"] == 1 and meta["params"]["mfcc"]["n_mfcc"] == 40
        has_audio = clip.make.get("audio_freq", 440.0) is not None
        assert row["has_audio"] is has_audio
        if has_audio:
            expected_cols = info.duration * 16000 // 160 + 1
            assert arrays["mfcc"].shape[0] == 40
            assert abs(arrays["mfcc"].shape[1] - expected_cols) <= 4
            assert meta["audio_sample_rate"] == 16000 == row["audio_sample_rate"]
        else:
            assert arrays["mfcc"] is None and meta["audio_sample_rate"] is None
            assert "mfcc.npy" not in samples[key]


@pytest.mark.e2e
def test_shards_read_with_plain_webdataset(kinetics_run):
    """A trainer needs neither actprep nor custom decoders."""
    rows = {r["key"]: r for r in _index(kinetics_run) if r["status"] == "ok"}
    ds = wds.WebDataset(sorted(os.path.join(kinetics_run, f) for f in os.listdir(kinetics_run)
                               if f.endswith(".tar")), shardshuffle=False).decode("rgb")
    seen = 0
    for sample in ds:
        row = rows[sample["__key__"]]
        frames = sorted(k for k in sample if k.startswith("rgb."))
        assert frames[0] == "rgb.000001.jpg" and len(frames) == row["frames"]
        assert sample[frames[-1]].shape == (row["height"], row["width"], 3)
        assert sample["cls"] == row["label_index"]
        assert sample["json"]["frames"] == row["frames"]
        seen += 1
    assert seen == len(rows)


@pytest.mark.e2e
def test_shard_headers_are_fixed_and_index_matches(kinetics_run):
    import hashlib
    import tarfile

    rows = {r["key"]: r for r in _index(kinetics_run) if r["status"] == "ok"}
    digests: dict[str, "hashlib._Hash"] = {}
    counts: dict[str, int] = {}
    for name in sorted(f for f in os.listdir(kinetics_run) if f.endswith(".tar")):
        with tarfile.open(os.path.join(kinetics_run, name)) as tar:
            for m in tar:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444)
                key = m.name.split(".", 1)[0]
                h = digests.setdefault(key, hashlib.sha256())
                h.update(m.name.encode() + b"\0" + tar.extractfile(m).read())
                counts[key] = counts.get(key, 0) + 1
    assert {k: h.hexdigest() for k, h in digests.items()} == \
        {k: r["sample_sha256"] for k, r in rows.items()}
    assert counts == {k: r["members"] for k, r in rows.items()}


def _same_output(out: str, reference: str) -> None:
    names = sorted(f for f in os.listdir(reference) if f.endswith(".tar"))
    assert names == sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    for name in names:
        assert open(os.path.join(out, name), "rb").read() == \
            open(os.path.join(reference, name), "rb").read(), name
    for name in os.listdir(os.path.join(reference, "index")):
        assert open(os.path.join(out, "index", name), "rb").read() == \
            open(os.path.join(reference, "index", name), "rb").read(), name


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "3"])
def test_video_threads_give_identical_shards(kinetics_set, kinetics_run, tmp_path, run_cli,
                                             workers):
    out = str(tmp_path / workers)
    assert _run_kinetics(run_cli, kinetics_set, out, "--workers", workers) == 0
    _same_output(out, kinetics_run)


@pytest.mark.slow
@pytest.mark.e2e
def test_single_video_units_commit_after_the_shuffle(kinetics_set, kinetics_run, tmp_path,
                                                     capsys):
    """Dataflow's shape (units of single videos, each shard committed after the group by
    shard) gives the same bytes as whole-shard units committed by their worker."""
    from actprep.commands.cli import make_parser
    from actprep.commands.runargs import run_options
    from actprep.commands.runner import run

    out = str(tmp_path / "units")
    args, beam_args = make_parser().parse_known_args([
        "run", "--dataset", "kinetics", "--manifest", kinetics_set["manifest"],
        "--video-root", kinetics_set["videos"], "--output", out, "--shard-size", "4",
        "--no-progress", "--workers", "2", *FAILURES_EXPECTED])
    opts = dataclasses.replace(run_options(args), unit_size=1)
    assert run(opts, beam_args) == 0
    assert f"{len(kinetics_set['clips'])} manifest rows" in capsys.readouterr().err
    _same_output(out, kinetics_run)


@pytest.mark.parametrize("mode", ["multi_threading", "multi_processing"])
def test_beams_multi_worker_modes_are_refused(kinetics_set, tmp_path, run_cli, capsys, mode):
    """Beam's multi-worker DirectRunner modes drop and corrupt elements (its data channel
    flushes from a timer thread): refused before any work, with the way out named."""
    out = str(tmp_path / mode)
    code = run_cli(["run", "--dataset", "kinetics", "--manifest", kinetics_set["manifest"],
                    "--video-root", kinetics_set["videos"], "--output", out, "--no-progress",
                    "--direct_num_workers=2", f"--direct_running_mode={mode}"])
    err = capsys.readouterr().err
    assert code == 2 and f"--direct_running_mode={mode}" in err and "--workers" in err, err
    assert "Traceback" not in err and not os.path.exists(os.path.join(out, "plan.jsonl"))


@pytest.mark.e2e
def test_rerun_of_finished_job_does_nothing(kinetics_set, kinetics_run, run_cli, capsys):
    before = {f: os.stat(os.path.join(kinetics_run, f)).st_mtime_ns
              for f in os.listdir(kinetics_run) if f.endswith(".tar")}
    # decoder threads do not change the output, so they may differ between runs
    assert _run_kinetics(run_cli, kinetics_set, kinetics_run, "--decode-threads", "0") == 0
    assert "nothing to do" in capsys.readouterr().err
    after = {f: os.stat(os.path.join(kinetics_run, f)).st_mtime_ns
             for f in os.listdir(kinetics_run) if f.endswith(".tar")}
    assert before == after


@pytest.mark.e2e
def test_rerun_with_other_options_is_refused(kinetics_set, kinetics_run, run_cli, capsys):
    assert _run_kinetics(run_cli, kinetics_set, kinetics_run, "--fps", "10") == 2
    err = capsys.readouterr().err
    assert "fps" in err and kinetics_run in err


@pytest.mark.slow
@pytest.mark.e2e
def test_size_and_fps_options(kinetics_set, tmp_path, run_cli):
    out = str(tmp_path / "sized")
    assert _run_kinetics(run_cli, kinetics_set, out, "--size", "340x256", "--fps", "10",
                         "--modalities", "rgb") == 0
    ok = [r for r in _index(out) if r["status"] == "ok"]
    assert len(ok) == 5
    for row in ok:
        assert (row["width"], row["height"], row["fps"]) == (340, 256, 10.0)
        assert abs(row["frames"] - row["duration"] * 10) < 1e-6
        assert row["mfcc_frames"] is None
    sample = next(iter(_samples(out).values()))
    assert "mfcc.npy" not in sample
    img = cv2.imdecode(np.frombuffer(sample["rgb.000001.jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (256, 340, 3)


def test_bad_manifest_is_a_clear_error(tmp_path, run_cli, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("label,youtube_id,time_start,time_end,split\n"
                        "abseiling,abc,1,11,train\nabseiling,def,1\n")
    (tmp_path / "v").mkdir()
    code = run_cli(["run", "--dataset", "kinetics", "--manifest", manifest, "--video-root",
                    tmp_path / "v", "--output", tmp_path / "o", *LOCAL_BEAM])
    assert code == 2
    assert f"{manifest}:3" in capsys.readouterr().err


def test_misspelt_option_is_not_passed_to_beam(tmp_path, run_cli, capsys):
    code = run_cli(["run", "--dataset", "generic", "--manifest", tmp_path / "m.csv",
                    "--output", tmp_path / "o", "--shard_size", "3"])
    assert code == 2
    assert "--shard_size" in capsys.readouterr().err


def _mit_set(root, make):
    videos = root / "Moments_in_Time" / "training"
    rows = [("clapping/yt-abc_1.mp4", "clapping"), ("running/getty-run.2.mp4", "running"),
            ("clapping/missing.mp4", "clapping"), ("flying/x.mp4", "flying")]
    for rel, _ in rows[:2] + rows[3:]:
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        make(str(videos / rel), duration=1.0, size=(160, 120))
    manifest = root / "Moments_in_Time" / "trainingSet.csv"
    manifest.write_text("".join(f"{rel},{label},3,0\n" for rel, label in rows))
    (root / "Moments_in_Time" / "moments_categories.txt").write_text(
        "running,1\nclapping,0\nswimming,2\n")
    return manifest, videos.parent


@pytest.mark.slow
@pytest.mark.e2e
def test_moments_in_time(tmp_path, run_cli):
    from actprep.extractors.synth import make_video

    manifest, root = _mit_set(tmp_path, make_video)
    out = tmp_path / "mit"
    assert run_cli(["run", "--dataset", "mit", "--manifest", manifest, "--video-root", root,
                    "--output", out, "--short-side", "64", "--no-progress", *LOCAL_BEAM]) == 0
    rows = {r["line"]: r for r in _index(str(out))}
    assert [rows[i]["status"] for i in (1, 2, 3, 4)] == ["ok", "ok", "failed", "failed"]
    assert rows[1]["label_index"] == 0 and rows[2]["label_index"] == 1
    assert rows[1]["split"] == "train" and rows[2]["key"] == "running__getty-run_2"
    assert "video not found" in rows[3]["failure_reason"]
    assert "unknown label 'flying'" in rows[4]["failure_reason"]
    assert json.load(open(out / "labels.json"))["classes"] == ["clapping", "running", "swimming"]


@pytest.mark.slow
@pytest.mark.e2e
def test_generic_jsonl_with_bad_rows(tmp_path, run_cli):
    from actprep.extractors.synth import make_video

    videos = tmp_path / "clips"
    (videos / "a").mkdir(parents=True)
    make_video(str(videos / "a" / "one.mp4"), duration=1.0, size=(160, 120), audio_freq=None)
    make_video(str(videos / "two.webm"), duration=1.0, size=(160, 120), vcodec="libvpx-vp9")
    lines = [{"path": "a/one.mp4", "label": "cat", "split": "val"},
             {"path": "two.webm", "label": "dog"},
             {"path": "../escape.mp4", "label": "dog"},
             {"path": "a/one.mp4", "label": "cat"},
             {"path": "unlabelled.mp4"}]
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "gen"
    assert run_cli(["run", "--dataset", "generic", "--manifest", manifest, "--video-root",
                    videos, "--output", out, "--short-side", "64", "--no-progress",
                    *FAILURES_EXPECTED, *LOCAL_BEAM]) == 0
    rows = {r["line"]: r for r in _index(str(out))}
    assert len(rows) == len(lines)
    assert rows[1]["status"] == "ok" and rows[1]["split"] == "val" and not rows[1]["has_audio"]
    assert rows[2]["status"] == "ok" and rows[2]["label_index"] == 1
    assert "escapes the video root" in rows[3]["failure_reason"]
    assert "duplicate key a__one (first at line 1)" in rows[4]["failure_reason"]
    assert rows[5]["status"] == "failed" and rows[5]["label"] is None
    sample = _samples(str(out))["a__one"]
    assert "cls" in sample and "mfcc.npy" not in sample


@pytest.mark.slow
@pytest.mark.e2e
def test_mfcc_options_reach_the_samples(tmp_path, run_cli):
    from actprep.extractors.synth import make_video

    make_video(str(tmp_path / "tone.mp4"), duration=1.0, size=(96, 64), audio_freq=1000)
    (tmp_path / "list.csv").write_text("path,label\ntone.mp4,beep\n")
    out = tmp_path / "o"
    assert run_cli(["run", "--dataset", "generic", "--manifest", tmp_path / "list.csv",
                    "--output", out, "--modalities", "mfcc", "--mfcc-n-mfcc", "20",
                    "--mfcc-hop-length", "320", "--no-progress", *LOCAL_BEAM]) == 0
    s = decode_sample(next(iter(_samples(str(out)).values())))
    assert s["mfcc"].shape == (20, 16000 // 320 + 1)
    assert s["meta"]["params"]["mfcc"]["n_mfcc"] == 20 and s["rgb"].shape[0] == 0
    assert s["meta"]["frames"] is None


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_command_end_to_end(tmp_path):
    """The installed console script, with its default runner settings, on the built-in
    demo set; with another ffmpeg first on PATH (Debian's 5.1 where installed, whose
    generated clips and decoded AAC differ): the bundled one makes and decodes the clips,
    so the MFCC of every clip with audio covers the whole clip."""
    import shutil
    import subprocess

    exe = shutil.which("actprep")
    assert exe, "the actprep console script is not installed"
    other = tmp_path / "bin"
    other.mkdir()
    os.symlink("/usr/bin/ffmpeg" if os.path.exists("/usr/bin/ffmpeg") else "/bin/false",
               other / "ffmpeg")
    env = {**os.environ, "PATH": f"{other}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ACTPREP_FFMPEG", None)
    proc = subprocess.run([exe, "demo", "--output", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from imageio-ffmpeg" in proc.stderr and "11 samples ok, 1 failed" in proc.stderr
    rows = _index(str(tmp_path / "demo" / "shards"))
    assert len(rows) == 12 and sum(r["status"] == "ok" for r in rows) == 11
    heard = [r for r in rows if r["mfcc_frames"]]
    assert heard
    for row in heard:  # centred frames, hop 160 at 16 kHz: 100 a second, plus one
        assert abs((row["mfcc_frames"] - 1) / 100 - row["duration"]) < 0.05, row
    suggested = [line.split() for line in proc.stderr.splitlines()
                 if line.startswith(("  actprep stats ", "  actprep verify "))]
    assert [words[:2] for words in suggested] == [["actprep", "stats"], ["actprep", "verify"]]
    for words in suggested:  # the commands the closing message suggests work as given
        done = subprocess.run([exe, *words[1:]], capture_output=True, text=True, timeout=600,
                              env=env)
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_mangled_checkpoint_refuses_its_shard_then_a_rerun_redoes_it(
        kinetics_set, kinetics_run, tmp_path, run_cli, capsys):
    """A result record that is not its plan entry's (another key) is never committed: the
    run commits the other shards, names the shard and the keys, exits 1, and leaves the
    reason in the work folder; once the record is gone a rerun gives the clean output."""
    from actprep.pipelines import layout
    from actprep.commands.cli import make_parser
    from actprep.commands.runargs import run_options
    from actprep.pipelines.planfile import iter_entries
    from actprep.pipelines.planner import load_or_create_plan

    out = str(tmp_path / "mangled")
    args, _ = make_parser().parse_known_args([
        "run", "--dataset", "kinetics", "--manifest", kinetics_set["manifest"],
        "--video-root", kinetics_set["videos"], "--output", out, "--shard-size", "4"])
    load_or_create_plan(run_options(args))
    victim = next(e for e in iter_entries(out) if not e.error)
    bogus = layout.result_path(out, victim.shard, victim.line)
    os.makedirs(os.path.dirname(bogus))
    with open(bogus, "w") as f:
        json.dump({"key": "someone_else", "line": victim.line, "status": "ok"}, f)
    assert _run_kinetics(run_cli, kinetics_set, out) == 1
    err = capsys.readouterr().err
    name = f"shard-{victim.shard:06d}"
    assert f"{name} is not committed" in err and "someone_else" in err, err
    assert f"no result for: {victim.key}" in err, err
    assert "rerun the same command" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(out, f"{name}.tar"))
    refusal = json.load(open(layout.incomplete_path(out, victim.shard)))
    assert refusal["missing"] == [victim.key] and refusal["extra"] == ["someone_else"]
    others = sorted(f for f in os.listdir(kinetics_run) if f.endswith(".tar") and
                    f != f"{name}.tar")
    assert others == sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    os.remove(bogus)
    assert _run_kinetics(run_cli, kinetics_set, out) == 0
    _same_output(out, kinetics_run)


def test_units_that_do_not_cover_their_shard_are_refused(kinetics_set, tmp_path):
    """Dataflow's commit step: a shard whose unit summaries leave entries uncovered (an
    element lost on the way) is refused with those keys named, never committed short."""
    from actprep.pipelines import layout
    from actprep.commands.cli import make_parser
    from actprep.pipelines.job import CommitShards
    from actprep.commands.runargs import run_options
    from actprep.pipelines.planfile import read_spans, shard_entries
    from actprep.pipelines.planner import load_or_create_plan
    from actprep.pipelines.units import UnitSummary

    out = str(tmp_path / "units")
    args, _ = make_parser().parse_known_args([
        "run", "--dataset", "kinetics", "--manifest", kinetics_set["manifest"],
        "--video-root", kinetics_set["videos"], "--output", out, "--shard-size", "4"])
    opts = run_options(args)
    load_or_create_plan(opts)
    span = read_spans(out)[0]
    entries = shard_entries(out, span)
    commit = CommitShards(opts)
    commit.setup()
    summaries = [UnitSummary(first=0, count=1, ok=0, failed=1).to_dict(),
                 UnitSummary(first=2, count=span.count - 2, ok=0, failed=0).to_dict()]
    assert list(commit.process((0, summaries))) == []
    refusal = json.load(open(layout.incomplete_path(out, 0)))
    assert refusal["missing"] == [entries[1].key] and refusal["extra"] == []
    assert not os.path.exists(layout.shard_tar(out, 0))
