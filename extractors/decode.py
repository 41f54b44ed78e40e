"""Streaming decode with ffmpeg (via ffmpeg-python): RGB frames one at a time, and mono audio.

Frames come through a pipe as raw rgb24, exactly W*H*3 bytes each, so memory stays flat however
long the video is. ffmpeg's stderr is drained by a thread so neither pipe can fill and deadlock.
"""
from __future__ import annotations

import collections
import re
import subprocess
import threading
from dataclasses import dataclass
from typing import IO, Iterator

try:
    import fcntl
except ImportError:  # not on Windows: pipes keep their default size
    fcntl = None

import ffmpeg
import numpy as np

from actprep.extractors.errors import MediaError
from actprep.extractors.ffmpeg_bin import ffmpeg_exe


# A line of ffmpeg's ``-progress`` report ("out_time_us=2000000"), told apart from its errors.
_PROGRESS_LINE = re.compile(r"[a-z][a-z0-9_]*=\S*")


@dataclass
class DecodedSpan:
    """Where a finished decode's output ended, in seconds, by ffmpeg's own account (its
    ``-progress`` report): the frames' timestamps, whatever rate they were made at, so
    truncation can be judged by time. None until ffmpeg has finished."""

    seconds: float | None = None


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


def _drain(pipe: IO[bytes], tail: collections.deque[str],
           progress: dict[str, str] | None = None) -> None:
    """Keep the last stderr lines while letting ffmpeg write freely (runs in a thread);
    with ``progress``, its ``-progress`` lines go there (latest value per key) instead."""
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if progress is not None and _PROGRESS_LINE.fullmatch(line):
            key, value = line.split("=", 1)
            progress[key] = value
        elif line:
            tail.append(line)


def _progress_seconds(progress: dict[str, str]) -> float | None:
    """The output's end time from ffmpeg's final ``-progress`` report, if it gave one."""
    value = progress.get("out_time_us", "")
    if progress.get("progress") != "end" or not value.isdigit():
        return None
    return int(value) / 1e6


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


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def _widen(pipe: IO[bytes], nbytes: int) -> None:
    """Lets ffmpeg run a few frames ahead of the reader instead of in lockstep through the
    default 64 KiB pipe (Linux; 7-15 % more frames/s measured with 2 decoders on 2 cores)."""
    if fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(nbytes, _pipe_max()))
        except OSError:
            pass


def _pipe(stream: ffmpeg.nodes.OutputStream, chunk_bytes: int, stage: str,
          exact: bool, progress: dict[str, str] | None = None) -> Iterator[bytearray]:
    """Runs ffmpeg and yields its stdout in chunks of ``chunk_bytes`` (the last one may be
    shorter unless ``exact``, when a partial chunk is dropped). Raises MediaError(stage)
    when ffmpeg fails or produces nothing. Closing early kills and reaps ffmpeg. With
    ``progress``, ffmpeg's ``-progress`` report is collected there."""
    extra = ["-progress", "pipe:2"] if progress is not None else []
    proc = (stream.global_args("-nostdin", "-v", "error", *extra)
            .run_async(cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True))
    _widen(proc.stdout, 4 * chunk_bytes)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=_drain, args=(proc.stderr, tail, progress), daemon=True)
    reader.start()
    produced = False
    try:
        while True:
            buf = bytearray(chunk_bytes)  # fresh and writable: callers may keep or modify it
            got = proc.stdout.readinto(buf)
            if got == chunk_bytes or (got and not exact):
                produced = True
                yield buf if got == chunk_bytes else buf[:got]
            if got < chunk_bytes:
                break
        proc.wait()
        reader.join(timeout=10)
        if proc.returncode != 0:
            no_stream = stage == "audio" and any("matches no streams" in ln for ln in tail)
            raise MediaError(stage, "no audio stream" if no_stream else _failure(proc, tail))
        if not produced:
            raise MediaError(stage, "no frames decoded" if stage == "decode" else "no samples decoded")
    finally:
        _reap(proc, reader)


def iter_frames(path: str, out_size: tuple[int, int], fps: float | None = None,
                threads: int = 0, span: DecodedSpan | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames of shape (H, W, 3) in time order, at constant frame rate.

    `fps` resamples with the fps filter; without it the source rate is kept (as CFR): right
    for constant-rate sources only (a variable-rate one needs an `fps`, see
    ``probe.with_frame_timing``). Raises MediaError("decode", ...) when ffmpeg fails or
    produces no frame. Closing the generator early kills and reaps ffmpeg. `threads` is
    ffmpeg's decoder thread count (0: ffmpeg decides); when several videos decode at once, 1
    spends the least CPU per frame. `span`, when given, receives where the output ended
    once the last frame has been read.
    """
    width, height = out_size
    video = ffmpeg.input(path, threads=threads)["V:0"]  # first real video stream, never cover art
    if fps is not None:
        video = video.filter("fps", fps=fps)
    video = video.filter("scale", width, height, flags="bicubic").filter("setsar", 1)
    stream = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", an=None, fps_mode="cfr")
    progress: dict[str, str] | None = {} if span is not None else None
    for buf in _pipe(stream, width * height * 3, "decode", exact=True, progress=progress):
        yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
    if span is not None:
        span.seconds = _progress_seconds(progress)


def iter_audio(path: str, sample_rate: int = 16000, chunk_seconds: float = 30.0,
               channels: int | None = None) -> Iterator[np.ndarray]:
    """The first audio stream as float32 mono in [-1, 1] at `sample_rate`, in chunks of
    `chunk_seconds` (always re-decoded, never stream-copied, so any codec ffmpeg reads works).
    With `channels` (the stream's count, from the probe) the channels are decoded apart and
    averaged, as the VGGish reference does (ffmpeg's own downmix weights them otherwise);
    without it ffmpeg downmixes.
    Streaming keeps memory flat for long videos.
    MediaError("audio", ...) on failure or when there is no audio stream."""
    ac = channels if channels and channels > 0 else 1
    stream = (ffmpeg.input(path)["a:0"]
              .output("pipe:", format="f32le", acodec="pcm_f32le", ac=ac, ar=sample_rate,
                      vn=None))
    chunk_bytes = 4 * ac * max(1, int(chunk_seconds * sample_rate))
    for buf in _pipe(stream, chunk_bytes, "audio", exact=False):
        samples = np.frombuffer(buf[: len(buf) // (4 * ac) * 4 * ac], dtype="<f4")
        mono = samples.reshape(-1, ac).mean(axis=1, dtype=np.float32) if ac > 1 else samples
        yield np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def decode_audio(path: str, sample_rate: int = 16000, channels: int | None = None) -> np.ndarray:
    """The whole first audio stream at once (see `iter_audio`)."""
    return np.concatenate(list(iter_audio(path, sample_rate, channels=channels)))
