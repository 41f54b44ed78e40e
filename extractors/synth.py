"""Synthetic test and demo media made with the ffmpeg binary.

Videos show a static texture seen through a window that moves by a known number of pixels per
frame, so tests can check decode (frame counts, geometry) and optical flow against ground truth,
plus an optional sine tone whose frequency tests can recover. Output is deterministic (bitexact
flags, single-threaded encoders), so equal arguments give equal bytes.
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import tempfile
from fractions import Fraction
from typing import Sequence

from actprep.extractors.ffmpeg_bin import ffmpeg_exe

DEFAULT_AUDIO_CODEC = {".mp4": "aac", ".mov": "aac", ".m4v": "aac", ".webm": "libopus",
                       ".mkv": "libvorbis", ".avi": "libmp3lame"}
_VCODEC_ARGS = {  # speed first: these files only need to be decodable, not pretty
    "libx264": ["-preset", "veryfast", "-crf", "18"],
    "libvpx-vp9": ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "30"],
    "libvpx": ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"],
    "mpeg4": ["-q:v", "3"],
}


def _texture_chain(n: int, rate: Fraction, size: tuple[int, int],
                   motion: tuple[float, float], pix_fmt: str) -> str:
    """lavfi graph: one textured frame, looped, cropped by a window moving `motion` px/frame."""
    w, h = size
    dx, dy = motion
    span_x, span_y = abs(dx) * max(n - 1, 0), abs(dy) * max(n - 1, 0)
    tw, th = w + math.ceil(span_x) + 2, h + math.ceil(span_y) + 2
    x0, y0 = (span_x if dx < 0 else 0.0), (span_y if dy < 0 else 0.0)
    return (
        f"testsrc2=s={tw}x{th}:r={rate},trim=end_frame=1,"
        # fine-grained static noise over the test card: phase correlation and flow need texture
        f"format=yuv444p,noise=alls=40:allf=u,gblur=sigma=0.8,"
        f"loop=loop=-1:size=1,"
        f"crop=w={w}:h={h}:x='floor({x0}+n*{dx}+0.5)':y='floor({y0}+n*{dy}+0.5)':exact=1,"
        f"trim=end_frame={n},setsar=1,format={pix_fmt}"
    )


def make_video(
    path: str,
    *,
    duration: float = 2.0,
    fps: float = 25,
    size: tuple[int, int] = (320, 240),
    vcodec: str = "libx264",
    audio_freq: float | None = 440.0,
    audio_codec: str | None = None,
    audio_rate: int = 44100,
    audio_channels: int = 1,
    motion: tuple[float, float] = (2.0, 1.0),
    pix_fmt: str = "yuv420p",
) -> str:
    """Write a moving-texture video of round(duration*fps) frames (plus a tone) to `path`.

    The window moves by round(n*motion) pixels at frame n (so integer motions are exact). The
    container follows the extension; the audio codec defaults by container. Returns `path`.
    """
    ext = os.path.splitext(path)[1].lower()
    rate = Fraction(fps).limit_denominator(1001)
    n = max(1, round(duration * float(rate)))
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
           "-f", "lavfi", "-i", _texture_chain(n, rate, size, motion, pix_fmt)]
    if audio_freq is not None:
        cmd += ["-f", "lavfi", "-i",
                f"sine=frequency={audio_freq}:sample_rate={audio_rate}:duration={float(n / rate):.6f}"]
    cmd += ["-map", "0:v", "-c:v", vcodec, *_VCODEC_ARGS.get(vcodec, []),
            "-g", str(max(1, round(float(rate)))), "-pix_fmt", pix_fmt, "-r", str(rate),
            "-frames:v", str(n)]
    if audio_freq is not None:
        acodec = audio_codec or DEFAULT_AUDIO_CODEC.get(ext, "aac")
        cmd += ["-map", "1:a", "-c:a", acodec, "-ac", str(audio_channels)]
    cmd += ["-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-flags:a", "+bitexact", "-map_metadata", "-1", path]
    _run(cmd, path)
    return path


def _run(cmd: list[str], path: str) -> None:
    """Runs an ffmpeg command that makes `path`; RuntimeError with its stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}) making {path}: "
                           f"{proc.stderr.strip()}")


def _times_expr(times: Sequence[float]) -> str:
    """ffmpeg expression of the frame number N giving ``times[N]``: a balanced tree of
    ``if(lt(N,k),...)``, so hundreds of frames stay a few levels deep."""
    def tree(lo: int, hi: int) -> str:
        if hi - lo == 1:
            return f"{times[lo]:.6f}"
        mid = (lo + hi) // 2
        return f"if(lt(N\\,{mid})\\,{tree(lo, mid)}\\,{tree(mid, hi)})"
    return tree(0, len(times))


def make_vfr_video(path: str, times: Sequence[float], *, size: tuple[int, int] = (64, 48),
                   time_base: int = 90000, audio_freq: float | None = None,
                   motion: tuple[float, float] = (2.0, 1.0)) -> str:
    """Write an H.264 video (MP4/MKV by extension) whose frame N is shown at ``times[N]``
    seconds (increasing), in a ``1/time_base`` time base: a variable frame rate, as a phone
    or a timecodes file (mkvmerge's v2 format) gives. The last frame lasts as long as the
    interval before it, and the optional tone as long as the frames. Returns `path`."""
    n = len(times)
    end = times[-1] + (times[-1] - times[-2] if n > 1 else 0.04)
    chain = (f"{_texture_chain(n, Fraction(30), size, motion, 'yuv420p')},"
             f"settb=1/{time_base},setpts='round(({_times_expr(times)})/TB)'")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", chain]
    if audio_freq is not None:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={audio_freq}:duration={end:.6f}"]
    cmd += ["-map", "0:v", "-c:v", "libx264", *_VCODEC_ARGS["libx264"], "-pix_fmt", "yuv420p",
            "-fps_mode", "passthrough", "-enc_time_base", f"1/{time_base}"]
    if audio_freq is not None:
        ext = os.path.splitext(path)[1].lower()
        cmd += ["-map", "1:a", "-c:a", DEFAULT_AUDIO_CODEC.get(ext, "aac")]
    cmd += ["-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-flags:a", "+bitexact", "-map_metadata", "-1", path]
    _run(cmd, path)
    return path


def jittered_times(frames: int, fps: float = 30.0, jitter: float = 0.004, seed: int = 0,
                   dropped: Sequence[int] = ()) -> list[float]:
    """Frame times of a phone-style capture: ``fps`` nominal, each frame but the first up
    to ``jitter`` s early or late (seeded; keep it under half a frame so times increase),
    and a gap where each slot of ``dropped`` was skipped."""
    rng = random.Random(seed)
    skip = set(dropped)
    slots = [k for k in range(frames + len(skip)) if k not in skip][:frames]
    return [k / fps + (rng.uniform(-jitter, jitter) if k else 0.0) for k in slots]


def join_videos(path: str, parts: Sequence[str], time_base: int = 15360) -> str:
    """Join MP4 `parts` (same codec and size) end to end by stream copy, as an editor or a
    camera that changed modes does: each part keeps its own frame rate, so mixed rates
    give a variable-rate file. The parts are first remuxed to one ``1/time_base`` track
    time base, which ffmpeg's concat demuxer needs to keep their times. Returns `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = os.path.join(tmp, "parts.txt")
        with open(listing, "w", encoding="utf-8") as f:
            for number, part in enumerate(parts):
                same = os.path.join(tmp, f"{number}.mp4")
                _run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", part, "-map", "0",
                      "-c", "copy", "-video_track_timescale", str(time_base), same], same)
                f.write(f"file '{same}'\n")
        _run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0",
              "-i", listing, "-c", "copy", "-fflags", "+bitexact", "-map_metadata", "-1", path],
             path)
    return path


def truncate_file(src: str, dst: str, fraction: float) -> str:
    """Copy the first `fraction` of `src`'s bytes to `dst` (a cut-off download). Returns dst."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return dst


def make_garbage(path: str, nbytes: int = 4096, seed: int = 0) -> str:
    """Write `nbytes` seeded random bytes (under a video extension): undecodable input."""
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(nbytes))
    return path
