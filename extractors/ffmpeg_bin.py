"""Locate the ffmpeg binary once per process.

Order: ``$ACTPREP_FFMPEG``, then ``ffmpeg`` on PATH, then the static build bundled with
imageio-ffmpeg (so a bare ``pip install`` works on machines without a system ffmpeg).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess


def _locate() -> tuple[str, str]:
    """Return (path, origin) of the ffmpeg binary to use."""
    env = os.environ.get("ACTPREP_FFMPEG")
    if env:
        found = shutil.which(env)
        if not found:
            raise RuntimeError(f"ACTPREP_FFMPEG={env!r} is not an executable ffmpeg")
        return found, "$ACTPREP_FFMPEG"
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path, "PATH"
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe(), "imageio-ffmpeg"
    except (ImportError, RuntimeError) as exc:
        raise RuntimeError(
            "no ffmpeg binary found: install one on PATH, `pip install imageio-ffmpeg`, "
            "or set ACTPREP_FFMPEG=/path/to/ffmpeg"
        ) from exc


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (cached; ``ffmpeg_exe.cache_clear()`` to look again)."""
    return _locate()[0]


def ffmpeg_source() -> str:
    """One line saying which ffmpeg is used and why, e.g. for logs and ``actprep --version``."""
    path, origin = _locate()
    if path != ffmpeg_exe():  # the environment changed since the cached lookup
        path, origin = ffmpeg_exe(), "an earlier lookup"
    try:
        out = subprocess.run(
            [path, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30
        ).stdout
        match = re.search(r"ffmpeg version n?(\d+(?:\.\d+)*)", out)
        version = match.group(1) if match else (out.split("\n", 1)[0] or "unknown version")
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"(not runnable: {exc})"
    return f"ffmpeg {version} from {origin} ({path})"
