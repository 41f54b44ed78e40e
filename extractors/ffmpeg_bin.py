"""The one ffmpeg a process decodes with, chosen on purpose.

By default the static build that imageio-ffmpeg installs with actprep, whatever ffmpeg is on
PATH: the same wheel gives the same decoder on every machine, hence the same bytes. Another
binary only when asked (``--ffmpeg PATH`` or ``$ACTPREP_FFMPEG``), and only from
``MIN_VERSION`` on: older releases decode differently (docs/FORMAT.md, "ffmpeg").
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

ENV = "ACTPREP_FFMPEG"
# The oldest release whose decode matches the bundled build's on actprep's media: before
# 9.0 the MP4 demuxer keeps the encoder padding at the end of AAC audio (about 20 ms more
# samples per video, two more MFCC frames; benchmarks/ffmpeg_versions.py, docs/FORMAT.md).
MIN_VERSION = (9, 0)
MIN_LIBAVFORMAT = (63, 0)  # what 9.0 ships: checked too, as git builds have no release number


class FfmpegError(RuntimeError):
    """The ffmpeg asked for cannot be used: not found, not runnable or too old."""


@dataclass(frozen=True)
class Ffmpeg:
    """A checked ffmpeg binary."""

    path: str
    origin: str  # "imageio-ffmpeg", "--ffmpeg" or "$ACTPREP_FFMPEG"
    version: str  # as ``ffmpeg -version`` names it, e.g. "5.1.9-0+deb12u1"
    libavformat: tuple[int, int]

    def describe(self) -> str:
        return f"ffmpeg {self.version} from {self.origin} ({self.path})"


def bundled_path() -> str:
    """The static ffmpeg of the imageio-ffmpeg wheel (an install requirement)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FfmpegError(f"the bundled ffmpeg is missing ({exc}); reinstall actprep, or "
                          f"give an ffmpeg with --ffmpeg PATH") from None


def inspect(path: str, origin: str) -> Ffmpeg:
    """Runs ``path -version``; raises FfmpegError unless it is an ffmpeg of MIN_VERSION or
    newer (by release number where it has one, and by libavformat)."""
    found = shutil.which(path)
    if not found:
        raise FfmpegError(f"{origin} {path}: no such executable")
    try:
        out = subprocess.run([found, "-hide_banner", "-version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise FfmpegError(f"{origin} {found}: cannot run it ({exc})") from None
    name = re.search(r"^ffmpeg version (\S+)", out, re.MULTILINE)
    lib = re.search(r"^libavformat\s+(\d+)\.\s*(\d+)\.", out, re.MULTILINE)
    if not name or not lib:
        raise FfmpegError(f"{origin} {found}: not an ffmpeg (its -version output names no "
                          f"ffmpeg version and libavformat)")
    ffmpeg = Ffmpeg(found, origin, name.group(1), (int(lib.group(1)), int(lib.group(2))))
    release = re.match(r"n?(\d+)\.(\d+)", ffmpeg.version)
    too_old = ffmpeg.libavformat < MIN_LIBAVFORMAT or (
        release is not None and (int(release.group(1)), int(release.group(2))) < MIN_VERSION)
    if too_old:
        raise FfmpegError(
            f"{origin} {found} is ffmpeg {ffmpeg.version} (libavformat "
            f"{_dotted(ffmpeg.libavformat)}); actprep needs ffmpeg {_dotted(MIN_VERSION)} or "
            f"newer (libavformat {_dotted(MIN_LIBAVFORMAT)}): older releases keep the encoder "
            f"padding at the end of AAC audio in MP4 files, which changes the audio features. "
            f"Leave out --ffmpeg to use the one installed with actprep")
    return ffmpeg


def _dotted(numbers: tuple[int, ...]) -> str:
    return ".".join(map(str, numbers))


def locate(requested: str | None = None) -> Ffmpeg:
    """The ffmpeg to use: ``requested`` (``--ffmpeg``), else ``$ACTPREP_FFMPEG``, else the
    bundled build. Never the one on PATH unless named."""
    if requested:
        return inspect(requested, "--ffmpeg")
    if os.environ.get(ENV):
        return inspect(os.environ[ENV], f"${ENV}")
    return inspect(bundled_path(), "imageio-ffmpeg")


_lock = threading.Lock()
_chosen: Ffmpeg | None = None


def use(requested: str | None = None, expect_version: str | None = None) -> Ffmpeg:
    """Chooses this process's ffmpeg (see ``locate``). ``expect_version``: the version the
    run was started with; a worker whose ffmpeg differs raises FfmpegError rather than
    write samples that say otherwise."""
    global _chosen
    ffmpeg = locate(requested)
    if expect_version is not None and ffmpeg.version != expect_version:
        raise FfmpegError(f"this worker's {ffmpeg.describe()} is not the ffmpeg {expect_version} "
                          f"the run was started with")
    with _lock:
        _chosen = ffmpeg
    return ffmpeg


def chosen() -> Ffmpeg:
    """This process's ffmpeg: the one ``use`` chose, else ``locate()``'s (looked up once)."""
    global _chosen
    with _lock:
        if _chosen is None:
            _chosen = locate()
        return _chosen


def ffmpeg_exe() -> str:
    """Path of this process's ffmpeg."""
    return chosen().path
