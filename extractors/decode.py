"""Streaming decode with ffmpeg (via ffmpeg-python): RGB frames one at a time, and mono audio.

Frames come through a pipe as raw rgb24, exactly W*H*3 bytes each, so memory stays flat however
long the video is. ffmpeg's stderr is drained by a thread so neither pipe can fill and deadlock.
"""
from __future__ import annotations

import collections
import subprocess
import threading
from typing import IO, Iterator

import ffmpeg
import numpy as np

from actprep.extractors.errors import MediaError
from actprep.extractors.ffmpeg_bin import ffmpeg_exe

AUDIO_TIMEOUT_S = 600.0


def _even(x: float) -> int:
    """Nearest even integer, at least 2."""
    return max(2, 2 * round(x / 2))


def output_size(width: int, height: int, short_side: int | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(W, H) to decode to: `size` exactly, or the short side scaled to `short_side` keeping the
    aspect ratio (the long side rounded to an even integer), or the source size."""
    if short_side is not None and size is not None:
        raise ValueError("give short_side or size, not both")
    if size is not None:
        return int(size[0]), int(size[1])
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, _even(height * short_side / width)
    return _even(width * short_side / height), short_side


def _drain(pipe: IO[bytes], tail: collections.deque[str]) -> None:
    """Keep the last stderr lines while letting ffmpeg write freely (runs in a thread)."""
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            tail.append(line)


def _failure(proc: subprocess.Popen, tail: collections.deque[str]) -> str:
    """Reason text for a failed ffmpeg run: exit status and its last stderr line."""
    last = tail[-1] if tail else "no error output"
    return f"ffmpeg exited with status {proc.returncode}: {last}"


def _reap(proc: subprocess.Popen, reader: threading.Thread) -> None:
    """Kill ffmpeg if still running, wait for it, join the stderr thread and close the pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    reader.join(timeout=10)
    for pipe in (proc.stdout, proc.stderr, proc.stdin):
        if pipe is not None:
            pipe.close()


def iter_frames(path: str, out_size: tuple[int, int],
                fps: float | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames of shape (H, W, 3) in time order, at constant frame rate.

    `fps` resamples with the fps filter; without it the source rate is kept (as CFR). Raises
    MediaError("decode", ...) when ffmpeg fails or produces no frame. Closing the generator early
    kills and reaps ffmpeg.
    """
    width, height = out_size
    video = ffmpeg.input(path)["V:0"]  # first real video stream, never cover art
    if fps is not None:
        video = video.filter("fps", fps=fps)
    video = video.filter("scale", width, height, flags="bicubic").filter("setsar", 1)
    stream = (video.output("pipe:", format="rawvideo", pix_fmt="rgb24", an=None, fps_mode="cfr")
              .global_args("-nostdin", "-v", "error"))
    proc = stream.run_async(cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
    reader.start()
    frame_bytes = width * height * 3
    count = 0
    try:
        while True:
            buf = bytearray(frame_bytes)  # fresh and writable: callers may keep or modify it
            if proc.stdout.readinto(buf) < frame_bytes:  # EOF (a partial frame is dropped)
                break
            count += 1
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
        proc.wait()
        reader.join(timeout=10)
        if proc.returncode != 0:
            raise MediaError("decode", _failure(proc, tail))
        if count == 0:
            raise MediaError("decode", "no frames decoded")
    finally:
        _reap(proc, reader)


def decode_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream as float32 mono in [-1, 1] at `sample_rate` (always re-decoded,
    never stream-copied, so any codec ffmpeg reads works). MediaError("audio", ...) on failure."""
    stream = (ffmpeg.input(path)["a:0"]
              .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, vn=None)
              .global_args("-nostdin", "-v", "error"))
    proc = stream.run_async(cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True)
    try:
        out, err = proc.communicate(timeout=AUDIO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise MediaError("audio", f"ffmpeg timed out after {AUDIO_TIMEOUT_S:.0f} s") from None
    stderr = err.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "matches no streams" in stderr:
            raise MediaError("audio", "no audio stream")
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else "no error output"
        raise MediaError("audio", f"ffmpeg exited with status {proc.returncode}: {last}")
    samples = np.frombuffer(out[: len(out) // 4 * 4], dtype="<f4")
    return np.clip(samples, -1.0, 1.0).astype(np.float32)
