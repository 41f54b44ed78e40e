"""Tests for ffmpeg lookup, probe, streaming decode and the synthetic media they run on."""
from __future__ import annotations

import os
import subprocess
import tracemalloc

import cv2
import numpy as np
import pytest

from actprep.extractors.decode import decode_audio, iter_frames, output_size
from actprep.extractors.errors import MediaError
from actprep.extractors.ffmpeg_bin import ffmpeg_exe
from actprep.extractors.probe import parse_probe, probe
from actprep.extractors.synth import make_garbage, make_video, truncate_file


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small set of videos shared by the tests of this module (made once)."""
    d = tmp_path_factory.mktemp("media")
    m = {
        "mp4": make_video(str(d / "h264_aac.mp4")),
        "webm": make_video(str(d / "vp9_opus.webm"), vcodec="libvpx-vp9", size=(160, 120)),
        "avi": make_video(str(d / "mpeg4_mp3.avi"), vcodec="mpeg4", size=(160, 120)),
        "mkv": make_video(str(d / "silent.mkv"), audio_freq=None, size=(160, 120)),
        "ntsc": make_video(str(d / "ntsc.mp4"), fps=30000 / 1001, size=(160, 120),
                           audio_freq=None),
        "portrait": make_video(str(d / "portrait.mp4"), size=(120, 160), audio_freq=None),
        "stereo": make_video(str(d / "stereo.mkv"), size=(64, 48), audio_channels=2,
                             audio_freq=1000.0),
        "moving": make_video(str(d / "moving.mp4"), size=(320, 240), motion=(1.5, -2.0),
                             audio_freq=None),
    }
    rotated = str(d / "rotated.mp4")  # coded 160x120, displayed rotated by 90 degrees
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i", m["mkv"],
                    "-c", "copy", rotated], check=True)
    m["rotated"] = rotated
    return m


@pytest.mark.parametrize("name, vcodec, acodec, rate, size", [
    ("mp4", "h264", "aac", 44100, (320, 240)),
    ("webm", "vp9", "opus", 48000, (160, 120)),
    ("avi", "mpeg4", "mp3", 44100, (160, 120)),
])
def test_probe_codecs(media, name, vcodec, acodec, rate, size) -> None:
    info = probe(media[name])
    assert (info.video_codec, info.audio_codec, info.audio_sample_rate) == (vcodec, acodec, rate)
    assert (info.width, info.height) == size
    assert info.has_audio and info.audio_channels == 1
    assert info.fps == 25 and info.duration == pytest.approx(2.0, abs=0.05)


def test_probe_no_audio_ntsc_portrait_rotated(media) -> None:
    silent = probe(media["mkv"])
    assert not silent.has_audio and silent.audio_codec is None and silent.audio_channels is None
    assert probe(media["ntsc"]).fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert (probe(media["portrait"]).width, probe(media["portrait"]).height) == (120, 160)
    assert (probe(media["rotated"]).width, probe(media["rotated"]).height) == (120, 160)
    assert probe(media["stereo"]).audio_channels == 2


def test_parse_probe_sar_attached_pic_layouts() -> None:
    text = """Input #0, matroska,webm, from 'x.mkv':
  Duration: N/A, start: 0.000000, bitrate: N/A
  Stream #0:0: Video: mjpeg (Baseline), yuvj420p(pc), 600x600 [SAR 1:1 DAR 1:1], 90k tbr (attached pic)
  Stream #0:1(eng): Video: mpeg2video (Main), yuv420p(tv, top first), 720x576 [SAR 64:45 DAR 16:9], 25 fps, 25 tbr, 1k tbn
    Side data:
      displaymatrix: rotation of -90.00 degrees
  Stream #0:2(eng): Audio: ac3, 48000 Hz, 5.1(side), fltp, 448 kb/s
  Stream #0:3: Audio: aac, 44100 Hz, stereo, fltp
"""
    info = parse_probe(text)
    assert info is not None and info.duration is None and info.video_codec == "mpeg2video"
    assert (info.width, info.height) == (576, 1024)  # 720*64/45 = 1024, then rotated
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("ac3", 48000, 6)
    six = parse_probe(text.replace("5.1(side)", "6 channels (FL+FR+FC+LFE+BL+BR)"))
    assert six is not None and six.audio_channels == 6
    assert parse_probe(text.replace("25 fps, ", "")).fps == 25  # falls back to tbr
    only_art = "Input #0\n  Stream #0:0: Video: png, rgb24, 10x10 (attached pic)\n"
    assert parse_probe(only_art) is None


def test_probe_errors(tmp_path) -> None:
    with pytest.raises(MediaError, match="file not found") as e:
        probe(str(tmp_path / "missing.mp4"))
    assert e.value.stage == "probe"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        probe(str(tmp_path / "empty.mp4"))
    with pytest.raises(MediaError, match="Invalid data found") as e:
        probe(make_garbage(str(tmp_path / "garbage.mp4")))
    assert e.value.stage == "probe"
    audio_only = str(tmp_path / "tone.m4a")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=d=0.5",
                    audio_only], check=True)
    with pytest.raises(MediaError, match="no video stream"):
        probe(audio_only)


def test_truncated_mp4_fails_in_probe_or_decode(media, tmp_path) -> None:
    cut = truncate_file(media["mp4"], str(tmp_path / "cut.mp4"), 0.1)
    with pytest.raises(MediaError) as e:
        info = probe(cut)
        list(iter_frames(cut, (info.width, info.height)))
    assert e.value.stage in ("probe", "decode")


def test_output_size() -> None:
    assert output_size(320, 240) == (320, 240)
    assert output_size(320, 240, size=(340, 256)) == (340, 256)
    assert output_size(320, 240, short_side=256) == (342, 256)  # 341.33 -> even 342
    assert output_size(240, 320, short_side=256) == (256, 342)
    assert output_size(1920, 1080, short_side=256) == (456, 256)  # 455.1 -> 456
    with pytest.raises(ValueError):
        output_size(320, 240, short_side=256, size=(10, 10))


@pytest.mark.parametrize("name", ["mp4", "webm", "ntsc", "rotated"])
def test_iter_frames_source_rate(media, name) -> None:
    info = probe(media[name])
    frames = list(iter_frames(media[name], (info.width, info.height)))
    assert len(frames) == round(info.duration * info.fps)
    assert all(f.shape == (info.height, info.width, 3) and f.dtype == np.uint8 for f in frames)


def test_iter_frames_resampled_and_scaled(media) -> None:
    frames = list(iter_frames(media["mp4"], (64, 48), fps=10))
    assert len(frames) == 20
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0].flags.writeable and not np.shares_memory(frames[0], frames[1])


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Translation of b relative to a, by phase correlation on gray frames."""
    ga, gb = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64) for f in (a, b))
    window = cv2.createHanningWindow(ga.shape[::-1], cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(ga, gb, window)
    return dx, dy


@pytest.mark.parametrize("name, motion", [("mp4", (2.0, 1.0)), ("moving", (1.5, -2.0))])
def test_pattern_moves_by_requested_motion(media, name, motion) -> None:
    frames = list(iter_frames(media[name], (320, 240)))
    # The window moves over the texture, so the content moves the opposite way.
    dx, dy = _shift(frames[0], frames[1])
    assert abs(-dx - round(motion[0])) < 0.5 and abs(-dy - round(motion[1])) < 0.5
    dx, dy = _shift(frames[10], frames[20])  # 10 frames: fractional motion adds up exactly
    assert abs(-dx - 10 * motion[0]) < 0.5 and abs(-dy - 10 * motion[1]) < 0.5


def _children() -> set[int]:
    """Pids (zombies included) whose parent is this process."""
    kids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    kids.add(int(pid))
        except (OSError, IndexError):
            pass
    return kids


def test_early_close_kills_ffmpeg(media) -> None:
    before_kids, before_fds = _children(), len(os.listdir("/proc/self/fd"))
    gen = iter_frames(media["mp4"], (320, 240))
    next(gen)
    assert _children() - before_kids  # ffmpeg is running
    gen.close()
    assert _children() == before_kids  # killed and reaped: no zombie
    assert len(os.listdir("/proc/self/fd")) == before_fds


def test_decode_errors(tmp_path) -> None:
    garbage = make_garbage(str(tmp_path / "garbage.mkv"))
    with pytest.raises(MediaError, match="status") as e:
        list(iter_frames(garbage, (32, 32)))
    assert e.value.stage == "decode"
    with pytest.raises(MediaError) as e:
        decode_audio(garbage)
    assert e.value.stage == "audio"


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("name, freq", [("mp4", 440.0), ("webm", 440.0), ("avi", 440.0),
                                        ("stereo", 1000.0)])
def test_decode_audio(media, name, freq) -> None:
    audio = decode_audio(media[name])
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Probed (container) duration: mp3 in AVI keeps its encoder padding, and so does the length.
    assert len(audio) == pytest.approx(probe(media[name]).duration * 16000, rel=0.01)
    assert np.abs(audio).max() <= 1.0
    assert abs(_peak_hz(audio, 16000) - freq) < 5


def test_stereo_is_averaged_to_mono(media) -> None:
    # Both channels carry the same tone (amplitude 1/8): the mean keeps it, a sum would double it.
    mono_peak = np.percentile(np.abs(decode_audio(media["mp4"])), 99)
    stereo_peak = np.percentile(np.abs(decode_audio(media["stereo"])), 99)
    assert stereo_peak == pytest.approx(mono_peak, rel=0.1)
    assert decode_audio(media["stereo"], sample_rate=8000).shape[0] == pytest.approx(16000, rel=0.01)


def test_decode_audio_without_audio_stream(media) -> None:
    with pytest.raises(MediaError, match="no audio stream") as e:
        decode_audio(media["mkv"])
    assert e.value.stage == "audio"


def test_long_video_memory_stays_flat(tmp_path) -> None:
    path = make_video(str(tmp_path / "long.mp4"), duration=20.0, fps=10, size=(640, 480),
                      audio_freq=None)
    frame_bytes = 640 * 480 * 3
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_frames(path, (640, 480)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200
    assert peak < 20 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"
