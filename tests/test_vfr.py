"""Variable-frame-rate sources (issue 14): without ``--fps`` they are decoded at one constant
rate, their average (frames / span), so frames / fps is their duration; constant-rate sources
are decoded as before; truncation is judged by time. All media is made with the bundled ffmpeg."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from actprep.extractors.decode import DecodedSpan, iter_frames
from actprep.extractors.ffmpeg_bin import ffmpeg_exe
from actprep.extractors.probe import average_rate, frame_timing, probe
from actprep.extractors.synth import (jittered_times, join_videos, make_video, make_vfr_video,
                                     truncate_file)
from conftest import LOCAL_BEAM, clip_key

STEPS = [k * 0.1 for k in range(15)] + [1.5 + k / 30 for k in range(45)]  # 3.0 s, 60 frames
PHONE = dict(frames=90, dropped=(40, 41))  # ~30 fps, +-4 ms jitter, 2 frames skipped

# name -> (source frames, span in s, the rate chosen); the MKV's 1 ms timestamps make
# its last interval, hence its span, 2 ms shorter
EXPECTED = {"steps": (60, 3.0, 20.0), "joined": (60, 3.0, 20.0),
            "phone": (90, 3.0702, 29.31), "phone_mkv": (90, 3.069, 29.33)}


def _faststart(src: str, dst: str) -> str:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", src, "-c", "copy",
                    "-movflags", "+faststart", dst], check=True)
    return dst


@pytest.fixture(scope="module")
def vfr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The issue's two constructions, a phone-like clip (MP4 with audio, and MKV), a
    constant-rate control and a phone clip cut off halfway (moov first, like a download)."""
    d = tmp_path_factory.mktemp("vfr")
    m = {"steps": make_vfr_video(str(d / "steps.mp4"), STEPS),
         "phone": make_vfr_video(str(d / "phone.mp4"), jittered_times(**PHONE), audio_freq=440),
         "phone_mkv": make_vfr_video(str(d / "phone_mkv.mkv"), jittered_times(**PHONE)),
         "cfr": make_video(str(d / "cfr.mp4"), duration=2.0, fps=25, size=(64, 48))}
    slow = make_video(str(d / "p10.mp4"), duration=1.5, fps=10, size=(64, 48), audio_freq=None)
    fast = make_video(str(d / "p30.mp4"), duration=1.5, fps=30, size=(64, 48), audio_freq=None)
    m["joined"] = join_videos(str(d / "joined.mp4"), [slow, fast])
    long = make_vfr_video(str(d / "long.mp4"), jittered_times(240, dropped=(100,)),
                          audio_freq=440)
    m["cut"] = truncate_file(_faststart(long, str(d / "long_fs.mp4")), str(d / "cut.mp4"), 0.5)
    return m


@pytest.fixture(scope="module")
def cfr_media(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Constant-rate clips of every container and rate the other tests use."""
    d = tmp_path_factory.mktemp("cfr")
    return [make_video(str(d / "h264.mp4"), size=(64, 48)),
            make_video(str(d / "ntsc.mkv"), fps=30000 / 1001, size=(64, 48), audio_freq=None),
            make_video(str(d / "vp9.webm"), fps=30, size=(64, 48), vcodec="libvpx-vp9"),
            make_video(str(d / "mpeg4.avi"), fps=15, size=(64, 48), vcodec="mpeg4"),
            make_video(str(d / "ntsc.mp4"), fps=30000 / 1001, size=(64, 48)),
            make_video(str(d / "24.mp4"), duration=1.5, fps=24, size=(64, 48))]


def test_constant_rate_sources_are_left_alone(cfr_media) -> None:
    """Evenly spaced frames (Matroska's 1 ms rounding included) are not resampled: the
    decode is the one from before this change, byte for byte."""
    for path in cfr_media:
        info = probe(path)
        assert info.with_frame_timing(path) == info and info.vfr_fps is None, path
        timing = frame_timing(path)
        assert timing.regular() and abs(timing.span - info.duration) < 1 / info.fps


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_frame_timing_finds_the_variable_rate(vfr, name) -> None:
    frames, span, rate = EXPECTED[name]
    timing = frame_timing(vfr[name])
    assert len(timing.pts) == frames and not timing.regular()
    assert timing.span == pytest.approx(span, abs=0.002)
    assert probe(vfr[name]).with_frame_timing(vfr[name]).vfr_fps == rate


def test_average_rate_is_written_short_when_that_keeps_the_count() -> None:
    assert average_rate(60, 3.0) == 20
    assert average_rate(300, 10.01) == 30  # 300.3 frames at 30 fps: the count holds
    assert average_rate(3000, 100.1) == pytest.approx(30000 / 1001)
    assert average_rate(90, 3.0667) == 29.35  # 29.3475: 29.35 is 0.008 frames off
    assert average_rate(100000, 3000.37) == pytest.approx(100000 / 3000.37)  # no short form
    assert abs(average_rate(100000, 3000.37) * 3000.37 - 100000) < 1e-6


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vfr_decodes_at_its_average_rate(vfr, name) -> None:
    """frames x (1/fps) is the source's duration within a frame, and ffmpeg's own account
    of where its output ended agrees."""
    frames, span, rate = EXPECTED[name]
    info = probe(vfr[name]).with_frame_timing(vfr[name])
    end = DecodedSpan()
    count = sum(1 for _ in iter_frames(vfr[name], (64, 48), info.vfr_fps, span=end))
    assert abs(count - frames) <= 1
    assert abs(count / rate - info.duration) <= 1 / rate
    assert end.seconds == pytest.approx(count / rate, abs=1e-3)


@pytest.mark.parametrize("name", ["steps", "joined"])
def test_slow_stretch_repeats_and_fast_stretch_thins(vfr, name) -> None:
    """At 20 fps the 10 fps first half shows each frame twice; the 30 fps second half has
    a new frame in every slot."""
    frames = list(iter_frames(vfr[name], (64, 48), 20.0))
    same = [np.array_equal(a, b) for a, b in zip(frames, frames[1:])]
    assert same[:30] == [True, False] * 15 and not any(same[30:])


def test_decoded_span_leaves_frames_unchanged(vfr) -> None:
    """The progress report that gives the decoded time does not touch the frames."""
    end = DecodedSpan()
    with_span = list(iter_frames(vfr["cfr"], (64, 48), span=end))
    plain = list(iter_frames(vfr["cfr"], (64, 48)))
    assert len(with_span) == len(plain) == 50
    assert all(np.array_equal(a, b) for a, b in zip(with_span, plain))
    assert end.seconds == pytest.approx(2.0)


def _rows(out: str) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(os.path.join(out, "index")).to_pylist()}


def _metas(out: str) -> dict[str, dict]:
    shards = sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".tar"))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}


@pytest.mark.slow
@pytest.mark.e2e
def test_run_end_to_end(vfr, kinetics_set, tmp_path, run_cli) -> None:
    """``actprep run`` without --fps: each VFR clip's index row and sample JSON give its
    average rate, frames / fps = its duration, and as many RGB members as frames; the
    constant-rate clip is as before; a cut-off file, VFR or not, is still truncated."""
    root = tmp_path / "videos"
    root.mkdir()
    for name, path in vfr.items():
        shutil.copy(path, root / (name + os.path.splitext(path)[1]))
    trunc = next(c for c in kinetics_set["clips"] if c.youtube_id == "Trunc_Fast_")
    shutil.copy(os.path.join(kinetics_set["videos"], trunc.folder, clip_key(trunc) + ".mp4"),
                root / "trunc_fast.mp4")
    names = sorted(os.listdir(root))
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{n},x\n" for n in names))
    out = str(tmp_path / "out")
    assert run_cli(["run", "--dataset", "generic", "--manifest", tmp_path / "list.csv",
                    "--video-root", root, "--output", out, "--short-side", "48",
                    "--no-progress", "--max-failed-fraction", "1", *LOCAL_BEAM]) == 0
    rows, samples = _rows(out), _metas(out)
    for name, (frames, span, rate) in EXPECTED.items():
        row, meta = rows[name], json.loads(samples[name]["json"])
        assert row["status"] == "ok", row
        assert row["fps"] == meta["fps"] == rate
        assert row["frames"] == meta["frames"] and abs(row["frames"] - frames) <= 1
        assert row["duration"] == meta["duration"] == row["frames"] / rate
        assert abs(row["duration"] - probe(vfr[name]).duration) <= 1 / rate
        assert sum(k.startswith("rgb.") for k in samples[name]) == row["frames"]
    assert rows["phone"]["has_audio"] and rows["phone"]["mfcc_frames"] > 300
    assert (rows["cfr"]["frames"], rows["cfr"]["fps"], rows["cfr"]["duration"]) == (50, 25, 2.0)
    for name in ("cut", "trunc_fast"):
        row = rows[name]
        assert (row["status"], row["failure_stage"]) == ("failed", "decode"), row
        assert row["failure_reason"].startswith("truncated: decoded "), row
    assert rows["trunc_fast"]["failure_reason"] == \
        "truncated: decoded 50 frames (2.00 s) of the 4.00 s its header declares"
