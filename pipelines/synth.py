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
from fractions import Fraction

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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}) making {path}: {proc.stderr.strip()}")
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
