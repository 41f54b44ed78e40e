"""Step 2 of a run, for one video: decode, extract, write the sample as a checkpointed
fragment, and return its index row. Plain Python: the Beam wrapper lives in job.py."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import traceback
from typing import Any, Iterator

import numpy as np

from actprep.extractors.audio.mfcc import MfccStream
from actprep.extractors.audio.vggish_input import SAMPLE_RATE
from actprep.extractors.audio.vggish_pca import postprocess
from actprep.extractors.decode import DecodedSpan, iter_audio, iter_frames, output_size
from actprep.extractors.errors import MediaError
from actprep.extractors.probe import MediaInfo, probe
from actprep.extractors.flow.engine import FlowEngine
from actprep.extractors.flow.quantize import quantize
from actprep.extractors.rgb import encode_gray_jpeg, encode_jpeg
from actprep.pipelines import layout, storage
from actprep.pipelines.crashpoints import crash_point
from actprep.pipelines.faults import as_fault, injected
from actprep.pipelines.fragment import SampleWriter, sample_writer
from actprep.pipelines.models import Models, load_models
from actprep.pipelines.options import RunOptions
from actprep.pipelines.stageclock import NoClock, StageClock
from actprep.schemas import sample
from actprep.schemas.index import FAILED, INTERNAL, OK
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import PlanEntry


def base_row(entry: PlanEntry) -> dict[str, Any]:
    return {"key": entry.key, "line": entry.line, "shard": shard_name(entry.shard),
            "dataset": entry.dataset, "split": entry.split, "label": entry.label,
            "label_index": entry.label_index, "source_path": entry.path}


def failed(entry: PlanEntry, stage: str, reason: str) -> dict[str, Any]:
    return {**base_row(entry), "status": FAILED, "failure_stage": stage, "failure_reason": reason}


def plan_result(entry: PlanEntry) -> dict[str, Any] | None:
    """The result the plan alone fixes: a manifest failure (missing video, unknown label,
    duplicate key...), recorded without processing or checkpointing; None otherwise."""
    if not entry.error:
        return None
    return {**failed(entry, "manifest", entry.error), "attempts": 1}


def load_result(output: str, entry: PlanEntry) -> dict[str, Any] | None:
    """The checkpointed result of an earlier attempt at this video, if any."""
    path = layout.result_path(output, entry.shard, entry.line)
    text = storage.read_text_if_exists(path)
    return json.loads(text) if text is not None else None


def process_entry(entry: PlanEntry, opts: RunOptions, models: Models | None = None,
                  attempts: int = 1, clock: StageClock | None = None) -> dict[str, Any]:
    """Processes one video and checkpoints it (fragment, then result record). Any
    failure becomes a recorded result with its stage and reason; a manifest failure is
    the plan's (``plan_result``) and writes nothing. ``models``: from
    ``load_models``, built once per worker; loaded here when none are given.
    ``attempts``: which processing of this video this is (recorded). ``clock``, when
    given, is charged the time of each stage (not recorded: timings vary run to run)."""
    clock = clock or NoClock()
    fixed = plan_result(entry)
    if fixed is not None:
        return fixed
    result = _process_media(entry, opts, models, clock)
    result["attempts"] = attempts
    if attempts > 1 and result.get("failure_stage") != INTERNAL:  # a bug's retry came through
        storage.delete([layout.internal_error_path(opts.output, entry.shard, entry.line)])
    crash_point("process:fragment")
    with clock.stage("write"):
        storage.write_atomic(layout.result_path(opts.output, entry.shard, entry.line),
                             json.dumps(result, sort_keys=True).encode())
    crash_point("process:result")
    return result


def _process_media(entry: PlanEntry, opts: RunOptions, models: Models | None,
                   clock: StageClock) -> dict[str, Any]:
    """The result of a video the plan found: its sample's fields, or its failure. A fault
    of the environment is raised (an EnvironmentFault), never recorded; an internal error
    (a bug) is recorded, its traceback kept for the user and the next run retries it."""
    try:
        injected("process:extract")
        if models is None:
            models = load_models(opts)
        return {**base_row(entry), "status": OK, **_extract(entry, opts, models, clock)}
    except MediaError as exc:
        return failed(entry, exc.stage, exc.reason)
    except Exception as exc:  # noqa: BLE001 - sorted: the environment's, else a bug
        fault = as_fault(exc, f"output {opts.output}, processing {entry.path}")
        if fault is not None:
            raise fault from exc
        storage.write_atomic(layout.internal_error_path(opts.output, entry.shard, entry.line),
                             f"{entry.key} (manifest line {entry.line}, {entry.path}):\n"
                             f"{traceback.format_exc()}".encode())
        return failed(entry, INTERNAL, f"{type(exc).__name__}: {exc}")


def _fetch(path: str | None, root: str | None = None):
    """A context giving the local file to read for the video ``path``, checked again as
    the planner's listing checked it, since a symlink may have changed in between
    (``storage.readable``): locally its real path, inside ``root``'s real path and a
    regular file (a FIFO is never opened); on an object store a download, the path under
    ``root``. ``root``: the video root, or the manifest's folder without one; None checks
    the file but not the root. MediaError("fetch", ...) when it must not be read."""
    if path is None:
        raise MediaError("fetch", "no video path")
    try:
        source = storage.readable(path, root)
    except storage.Unreadable as exc:
        raise MediaError("fetch", str(exc)) from None
    return storage.local_copy(source)


def _extract(entry: PlanEntry, opts: RunOptions, models: Models,
             clock: StageClock) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        with clock.stage("fetch"):
            local = stack.enter_context(_fetch(entry.path, opts.videos_within()))
        with clock.stage("probe"):
            info = probe(local)
        width, height = output_size(info.width, info.height, opts.short_side, opts.size)
        if opts.fps is None:  # a variable frame rate becomes its average (docs/FORMAT.md)
            with clock.stage("probe"):
                info = info.with_frame_timing(local)
        fps = opts.fps or info.vfr_fps or info.fps
        if fps is None:
            raise MediaError("probe", "the video's frame rate is unknown; pass --fps")
        frag = layout.fragment_path(opts.output, entry.shard, entry.line)
        # what no nested stage claims (tar members, the fragment's upload) is "write"
        with clock.stage("write"), storage.atomic_writer(frag) as stream, \
                sample_writer(stream) as writer:
            if entry.label_index is not None:
                writer.add(sample.member_name(entry.key, sample.CLS),
                           sample.cls_bytes(entry.label_index))
            frames, pairs, magnitude = _write_frames(writer, entry.key, local, info,
                                                     (width, height), fps, opts, models.flow,
                                                     clock)
            audio = _write_audio(writer, entry.key, local, info, opts, models, clock)
            duration = frames / fps if frames is not None else info.duration
            meta = sample.sample_metadata(
                key=entry.key, dataset=entry.dataset, split=entry.split, label=entry.label,
                label_index=entry.label_index, source_path=entry.path,
                source_bytes=os.path.getsize(local), duration=duration, fps=fps, frames=frames,
                width=width, height=height, audio_sample_rate=audio["audio_sample_rate"],
                source=_source_info(info), params=opts.extractor_params(models.ran()))
            writer.add(sample.member_name(entry.key, sample.JSON), sample.json_bytes(meta))
    return {"source_bytes": meta["source_bytes"], "duration": duration, "fps": fps,
            "frames": frames, "width": width, "height": height,
            "source_width": info.width, "source_height": info.height,
            "flow_magnitude": magnitude,
            "has_audio": info.has_audio, **audio,
            "flow_pairs": pairs, "flow_backend": models.flow.backend if models.flow else None,
            "members": writer.members, "sample_bytes": writer.bytes,
            "sample_sha256": writer.sha256}


class _FrameTap:
    """Passes decoded frames on unchanged, counting them and queueing their RGB JPEGs
    (None when rgb is off) until the caller writes them, so RGB and flow share one decode."""

    def __init__(self, frames: Iterator[np.ndarray], quality: int, keep_rgb: bool,
                 clock: StageClock):
        self._frames = clock.iterate(frames, "decode")
        self._clock = clock
        self._quality = quality
        self._keep_rgb = keep_rgb
        self.count = 0
        self.pending: collections.deque[tuple[int, bytes | None]] = collections.deque()

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self._frames:
            self.count += 1
            if self.count == 2:
                crash_point("process:decoding")
            jpeg = None
            if self._keep_rgb:
                with self._clock.stage("rgb"):
                    jpeg = encode_jpeg(frame, self._quality)
            self.pending.append((self.count, jpeg))
            yield frame

    def write_rgb(self, writer: SampleWriter, key: str, upto: int) -> None:
        """Writes the queued RGB members numbered up to ``upto``."""
        while self.pending and self.pending[0][0] <= upto:
            number, jpeg = self.pending.popleft()
            if jpeg is not None:
                writer.add(sample.member_name(key, sample.rgb_suffix(number)), jpeg)


def _write_frames(writer: SampleWriter, key: str, path: str, info: MediaInfo,
                  size: tuple[int, int], fps: float, opts: RunOptions,
                  engine: FlowEngine | None,
                  clock: StageClock) -> tuple[int | None, int | None, float | None]:
    """RGB and flow members from one streaming decode; returns (frames, flow pairs, mean
    flow magnitude), None for what was not extracted. Members go per frame N: ``rgb.N``
    then flow N (N to N+1),
    whatever the flow batch size, so equal options give equal bytes. At most a flow batch
    of frames is held at once. Frames are resampled to ``--fps``, or a variable-rate
    source to ``info.vfr_fps``; a constant-rate one keeps its own rate (``fps``)."""
    want_rgb = "rgb" in opts.modalities
    if not want_rgb and engine is None:
        return None, None, None
    span = DecodedSpan()
    frames = iter_frames(path, size, opts.fps or info.vfr_fps, opts.decode_threads, span)
    tap = _FrameTap(frames, opts.jpeg_quality, want_rgb, clock)
    pairs, magnitude = None, None
    if engine is not None:
        pairs, total = 0, 0.0
        for pairs, flow in enumerate(clock.iterate(engine.flows(tap), "flow"), 1):
            tap.write_rgb(writer, key, upto=pairs)
            with clock.stage("flow_jpeg"):
                _write_flow(writer, key, pairs, flow, opts.flow_bound, opts.jpeg_quality,
                            opts.flow_raw)
                total += float(np.sqrt(np.square(flow, dtype=np.float32).sum(-1)).mean())
        magnitude = round(total / pairs, 4) if pairs else None
    else:
        for _ in tap:
            tap.write_rgb(writer, key, upto=tap.count)
    tap.write_rgb(writer, key, upto=tap.count)
    _check_length(tap.count, span.seconds, info, fps, opts.min_decoded_fraction)
    if pairs is not None and pairs != tap.count - 1:
        raise RuntimeError(f"flow: {pairs} flow fields for {tap.count} frames (expected "
                           f"{tap.count - 1})")
    return tap.count, pairs, magnitude


def _write_flow(writer: SampleWriter, key: str, number: int, flow: np.ndarray, bound: float,
                quality: int, raw: bool) -> None:
    """Flow ``number`` as x/y grayscale JPEGs quantized to +-``bound``, plus float16
    [2, H, W] with ``raw``."""
    q = quantize(flow, bound)
    writer.add(sample.member_name(key, sample.flow_x_suffix(number)),
               encode_gray_jpeg(q[:, :, 0], quality))
    writer.add(sample.member_name(key, sample.flow_y_suffix(number)),
               encode_gray_jpeg(q[:, :, 1], quality))
    if raw:
        half = np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float16)
        writer.add(sample.member_name(key, sample.flow_raw_suffix(number)),
                   sample.npy_bytes(half))


def _check_length(count: int, seconds: float | None, info: MediaInfo, fps: float,
                  min_fraction: float) -> None:
    """Raises MediaError when the decode ended clearly before the duration the header
    declares. Judged by time: ``seconds``, where ffmpeg says its output ended (the frames'
    timestamps, right whatever rate ffmpeg chose), else ``count / fps``; one frame of slack."""
    if info.duration and min_fraction > 0:
        decoded = seconds if seconds is not None else count / fps
        if decoded < min_fraction * info.duration - 1 / fps:
            raise MediaError("decode", f"truncated: decoded {count} frames ({decoded:.2f} s) "
                             f"of the {info.duration:.2f} s its header declares")


def _write_audio(writer: SampleWriter, key: str, path: str, info: MediaInfo,
                 opts: RunOptions, models: Models, clock: StageClock) -> dict[str, Any]:
    """MFCC and VGGish members from one streaming audio decode per sample rate; returns
    the index fields (None for what was not extracted). A video without audio gets none."""
    sinks: dict[str, tuple[int, Any]] = {}  # stage name -> (sample rate, stream)
    if "mfcc" in opts.modalities:
        sinks["mfcc"] = (opts.mfcc.sample_rate, MfccStream(opts.mfcc))
    if models.vggish is not None:
        sinks["vggish"] = (SAMPLE_RATE, models.vggish.stream())
    fields = {"audio_sample_rate": None, "mfcc_frames": None, "vggish_examples": None,
              "audio_rms_dbfs": None}
    if not info.has_audio or not sinks:
        return fields
    level = _Level()
    for number, rate in enumerate(sorted({r for r, _ in sinks.values()})):
        streams = [(name, s) for name, (r, s) in sinks.items() if r == rate]
        if number == 0:
            streams.append(("audio_decode", level))
        chunks = clock.iterate(iter_audio(path, rate, channels=info.audio_channels),
                               "audio_decode")
        for chunk in chunks:
            for name, stream in streams:
                with clock.stage(name):
                    stream.push(chunk)
    fields["audio_rms_dbfs"] = level.dbfs()
    if "mfcc" in sinks:
        try:
            with clock.stage("mfcc"):
                features = sinks["mfcc"][1].finish()
        except ValueError as exc:  # too short for the MFCC framing
            raise MediaError("audio", str(exc)) from None
        writer.add(sample.member_name(key, sample.MFCC), sample.npy_bytes(features))
        fields["mfcc_frames"] = int(features.shape[1])
    if "vggish" in sinks:
        with clock.stage("vggish"):
            embeddings = sinks["vggish"][1].finish()
        writer.add(sample.member_name(key, sample.VGGISH), sample.npy_bytes(embeddings))
        if models.vggish.pca is not None:
            writer.add(sample.member_name(key, sample.VGGISH_PCA),
                       sample.npy_bytes(postprocess(embeddings, models.vggish.pca)))
        fields["vggish_examples"] = int(embeddings.shape[0])
    fields["audio_sample_rate"] = next(iter(sinks.values()))[0]  # MFCC's when present
    return fields


class _Level:
    """RMS level of audio chunks, in dB relative to full scale (a full-scale sine: -3)."""

    def __init__(self) -> None:
        self.squares, self.count = 0.0, 0

    def push(self, chunk: np.ndarray) -> None:
        self.squares += float(np.square(chunk, dtype=np.float64).sum())
        self.count += len(chunk)

    def dbfs(self) -> float | None:
        if not self.count:
            return None
        return round(10 * np.log10(max(self.squares / self.count, 1e-20)), 3)


def _source_info(info: MediaInfo) -> dict[str, Any]:
    return {"video_codec": info.video_codec, "width": info.width, "height": info.height,
            "fps": info.fps, "duration": info.duration, "audio_codec": info.audio_codec,
            "audio_sample_rate": info.audio_sample_rate, "audio_channels": info.audio_channels}
