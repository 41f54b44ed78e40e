"""Read a video's basic facts by parsing ``ffmpeg -i`` (no ffprobe is needed or assumed).

``ffmpeg -hide_banner -i PATH`` prints the input description to stderr and exits 1 with "At least
one output file must be specified" for a good file; that is the normal case here.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from actprep.extractors.errors import MediaError
from actprep.extractors.ffmpeg_bin import ffmpeg_exe

PROBE_TIMEOUT_S = 60.0

_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6,
                    "octagonal": 8, "hexadecagonal": 16}
_NOISE = ("At least one output file must be specified", "misdetection possible",
          "Error opening input file ")


@dataclass(frozen=True)
class MediaInfo:
    """What the pipeline needs to know about a file before decoding it.

    width/height are the display size: sample aspect ratio applied and ±90° rotation swapped.
    """

    duration: float | None
    fps: float | None
    width: int
    height: int
    video_codec: str
    has_audio: bool
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None


def _even(x: float) -> int:
    """Nearest even integer, at least 2 (yuv420 and most encoders need even sizes)."""
    return max(2, 2 * round(x / 2))


def _rate(text: str, unit: str) -> float | None:
    """Parse ffmpeg's "29.97 fps"/"25 tbr"/"1k tbr" figure; snap 2-decimal NTSC rates to N/1.001."""
    m = re.search(rf"([\d.]+)(k?) {unit}\b", text)
    if not m:
        return None
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    ntsc = round(value * 1.001) / 1.001
    return ntsc if value != round(value) and abs(ntsc - value) < 0.006 else value


def _channels(text: str) -> int | None:
    """Channel count from the layout field: mono, stereo, 5.1(side), 5.1.2, "6 channels"..."""
    m = re.search(r",\s*(\d+) channels", text)
    if m:
        return int(m.group(1))
    for field in (f.strip() for f in text.split(",")):
        name = field.split("(")[0].strip()
        if name in _LAYOUT_CHANNELS:
            return _LAYOUT_CHANNELS[name]
        if re.fullmatch(r"\d+(\.\d+)+", name):
            return sum(int(p) for p in name.split("."))
    return None


def _reason(stderr: str) -> str:
    """ffmpeg's last meaningful error line (with the more specific line before it, if any)."""
    lines = []
    for raw in stderr.splitlines():
        line = re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*", "", raw.strip())
        line = re.sub(r"^Error opening input(?: files)?:\s*", "", line)
        if line and not any(n in line for n in _NOISE) and line not in lines:
            lines.append(line)
    if not lines:
        return "ffmpeg could not read the file"
    return lines[-1] if len(lines) == 1 else f"{lines[-1]} ({lines[-2]})"


def parse_probe(stderr: str) -> MediaInfo | None:
    """MediaInfo from ``ffmpeg -i`` stderr text; None when it shows no video stream."""
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", stderr)
    duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None
    # Each stream block: its "Stream #" line plus the indented lines up to the next stream.
    blocks = re.split(r"\n(?=\s*Stream #)", stderr)
    video = next((b for b in blocks if re.match(r"\s*Stream #.*?: Video: ", b)
                  and "(attached pic)" not in b.split("\n", 1)[0]), None)
    audio = next((b for b in blocks if re.match(r"\s*Stream #.*?: Audio: ", b)), None)
    if video is None:
        return None
    head = video.split("\n", 1)[0]
    codec = re.search(r"Video: ([^\s,]+)", head).group(1)
    size = re.search(r",\s*(\d+)x(\d+)", head)
    width, height = (int(size.group(1)), int(size.group(2))) if size else (0, 0)
    sar = re.search(r"SAR (\d+):(\d+)", head)
    if sar and int(sar.group(1)) > 0 and int(sar.group(2)) > 0 and sar.group(1) != sar.group(2):
        width = _even(width * int(sar.group(1)) / int(sar.group(2)))
    rot = re.search(r"display ?matrix: rotation of (-?[\d.]+) degrees", video, re.IGNORECASE)
    if rot and round(abs(float(rot.group(1)))) % 180 == 90:
        width, height = height, width
    info = dict(duration=duration, fps=_rate(head, "fps") or _rate(head, "tbr"),
                width=width, height=height, video_codec=codec, has_audio=audio is not None)
    if audio is not None:
        ahead = audio.split("\n", 1)[0]
        rate = re.search(r"(\d+) Hz", ahead)
        info.update(audio_codec=re.search(r"Audio: ([^\s,]+)", ahead).group(1),
                    audio_sample_rate=int(rate.group(1)) if rate else None,
                    audio_channels=_channels(ahead))
    return MediaInfo(**info)


def probe(path: str) -> MediaInfo:
    """Probe `path` with ``ffmpeg -i``; MediaError("probe", reason) when it is not a usable video."""
    if not os.path.isfile(path):
        raise MediaError("probe", f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise MediaError("probe", f"empty file (0 bytes): {path}")
    try:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                              capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MediaError("probe", f"ffmpeg -i timed out after {PROBE_TIMEOUT_S:.0f} s") from None
    stderr = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in stderr:
        raise MediaError("probe", _reason(stderr))
    info = parse_probe(stderr)
    if info is None:
        raise MediaError("probe", "no video stream")
    if info.width <= 0 or info.height <= 0:
        raise MediaError("probe", "the video stream has no frame size")
    return info
