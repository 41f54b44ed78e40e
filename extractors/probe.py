"""Read a video's basic facts by parsing ``ffmpeg -i`` (no ffprobe is needed or assumed).

``ffmpeg -hide_banner -i PATH`` prints the input description to stderr and exits 1 with "At least
one output file must be specified" for a good file; that is the normal case here.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction

from actprep.extractors.errors import MediaError
from actprep.extractors.ffmpeg_bin import ffmpeg_exe

PROBE_TIMEOUT_S = 60.0
SCAN_TIMEOUT_S = 600.0
# Frame times within this much of an even grid are constant-rate: container rounding (1 ms
# in Matroska/WebM) is one tick of the time base, and 0.1 ms is far below any visible jitter.
GRID_TOLERANCE_S = 1e-4
_NOPTS = -(2 ** 63)

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
    # Set by ``with_frame_timing`` when the frames are not evenly spaced: the one constant
    # rate they are decoded at (their average rate). None: decoded at the stream's own rate.
    vfr_fps: float | None = None

    def with_frame_timing(self, path: str) -> MediaInfo:
        """This info with ``vfr_fps`` set if `path` has a variable frame rate (see the
        module's ``with_frame_timing``)."""
        return with_frame_timing(path, self)


@dataclass(frozen=True)
class FrameTiming:
    """When the first video stream's frames are shown: their sorted presentation times, in
    ticks of ``time_base``, and where the last one ends."""

    pts: tuple[int, ...]
    end: int
    time_base: Fraction

    @property
    def span(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return float((self.end - self.pts[0]) * self.time_base)

    def regular(self) -> bool:
        """True when every frame lies on an even grid from the first to the last one
        (within a tick of the time base or GRID_TOLERANCE_S): a constant frame rate."""
        n = len(self.pts)
        if n < 3:
            return True
        step = (self.pts[-1] - self.pts[0]) / (n - 1)
        tolerance = max(1.0, GRID_TOLERANCE_S / float(self.time_base)) + 1e-6
        return all(abs(p - self.pts[0] - k * step) <= tolerance for k, p in enumerate(self.pts))


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


def _timing(lines: list[str]) -> FrameTiming | None:
    """FrameTiming from ``-f framecrc`` text; None without a time base or a timed frame.

    The last frame is taken to last as long as the interval before it: packet durations
    are decode-order (dts) steps, which B-frames and edit lists make unreliable here."""
    base, times, duration = None, [], 0
    for line in lines:
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            base = Fraction(int(num), int(den))
        elif line and not line.startswith("#"):
            _, dts, pts, duration = (int(v) for v in line.split(",")[:4])
            if pts == _NOPTS and dts == _NOPTS:
                return None
            times.append(pts if pts != _NOPTS else dts)
    if base is None or not times:
        return None
    times.sort()
    last = times[-1] - times[-2] if len(times) > 1 else duration
    return FrameTiming(tuple(times), times[-1] + max(last, 1), base)


def frame_timing(path: str) -> FrameTiming | None:
    """The first video stream's frame times, read by demuxing alone (a stream copy into
    ffmpeg's framecrc listing; nothing is decoded). None when ffmpeg cannot list them: the
    decode then reports what is wrong with the file."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", path,
           "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=SCAN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    return _timing(proc.stdout.decode("ascii", "replace").splitlines())


def average_rate(frames: int, span: float) -> float:
    """``frames / span`` written short where that changes the frame count by at most half a
    frame over ``span``: a whole number, an NTSC N/1.001 rate, or 2 or 3 decimals."""
    exact = frames / span
    for rate in (round(exact), round(exact * 1.001) / 1.001, round(exact, 2), round(exact, 3)):
        if rate > 0 and abs(rate - exact) * span <= 0.5:
            return float(rate)
    return exact


def with_frame_timing(path: str, info: MediaInfo) -> MediaInfo:
    """``info`` with ``vfr_fps`` set when the frames are not evenly spaced (a variable frame
    rate): they are then decoded at their average rate, frames / span, which keeps both the
    frame count and the duration. Constant-rate sources come back unchanged (decoded as
    before, at ffmpeg's rate for the stream)."""
    timing = frame_timing(path)
    if timing is None or timing.regular():
        return info
    return dataclasses.replace(info, vfr_fps=average_rate(len(timing.pts), timing.span))
