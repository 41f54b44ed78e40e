"""Step 2 of a run, for one video: decode, extract, write the sample as a checkpointed
fragment, and return its index row. Plain Python: the Beam wrapper lives in job.py."""
from __future__ import annotations

import json
import os
from typing import Any

from actprep.extractors.audio.mfcc import mfcc_chunks
from actprep.extractors.decode import iter_audio, iter_frames, output_size
from actprep.extractors.errors import MediaError
from actprep.extractors.probe import MediaInfo, probe
from actprep.extractors.rgb import encode_jpeg
from actprep.pipelines import layout, storage
from actprep.pipelines.fragment import SampleWriter, sample_writer
from actprep.pipelines.options import RunOptions
from actprep.schemas import sample
from actprep.schemas.index import FAILED, OK
from actprep.schemas.plan import PlanEntry, shard_name


def base_row(entry: PlanEntry) -> dict[str, Any]:
    return {"key": entry.key, "line": entry.line, "shard": shard_name(entry.shard),
            "dataset": entry.dataset, "split": entry.split, "label": entry.label,
            "label_index": entry.label_index, "source_path": entry.path}


def failed(entry: PlanEntry, stage: str, reason: str) -> dict[str, Any]:
    return {**base_row(entry), "status": FAILED, "failure_stage": stage, "failure_reason": reason}


def load_result(opts: RunOptions, entry: PlanEntry) -> dict[str, Any] | None:
    """The checkpointed result of an earlier attempt at this video, if any."""
    path = layout.result_path(opts.output, entry.shard, entry.line)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def process_entry(entry: PlanEntry, opts: RunOptions) -> dict[str, Any]:
    """Processes one video and checkpoints it (fragment, then result record). Any
    failure becomes a recorded result with its stage and reason."""
    if entry.error:
        result = failed(entry, "manifest", entry.error)
    else:
        try:
            result = {**base_row(entry), "status": OK, **_extract(entry, opts)}
        except MediaError as exc:
            result = failed(entry, exc.stage, exc.reason)
        except Exception as exc:  # a bug or an environment problem: still recorded
            result = failed(entry, "internal", f"{type(exc).__name__}: {exc}")
    storage.write_atomic(layout.result_path(opts.output, entry.shard, entry.line),
                         json.dumps(result, sort_keys=True).encode())
    return result


def _fetch(path: str | None):
    if path is None:
        raise MediaError("fetch", "no video path")
    if not storage.is_local(path) and not storage.exists(path):
        raise MediaError("fetch", f"file not found: {path}")
    return storage.local_copy(path)


def _extract(entry: PlanEntry, opts: RunOptions) -> dict[str, Any]:
    with _fetch(entry.path) as local:
        info = probe(local)
        width, height = output_size(info.width, info.height, opts.short_side, opts.size)
        fps = opts.fps or info.fps
        if fps is None:
            raise MediaError("probe", "the video's frame rate is unknown; pass --fps")
        frag = layout.fragment_path(opts.output, entry.shard, entry.line)
        with storage.atomic_writer(frag) as stream, sample_writer(stream) as writer:
            if entry.label_index is not None:
                writer.add(sample.member_name(entry.key, sample.CLS),
                           sample.cls_bytes(entry.label_index))
            frames = _write_rgb(writer, entry.key, local, info, (width, height), fps, opts)
            mfcc_frames = _write_mfcc(writer, entry.key, local, info, opts)
            audio_rate = opts.mfcc.sample_rate if mfcc_frames is not None else None
            duration = frames / fps if frames is not None else info.duration
            meta = sample.sample_metadata(
                key=entry.key, dataset=entry.dataset, split=entry.split, label=entry.label,
                label_index=entry.label_index, source_path=entry.path,
                source_bytes=os.path.getsize(local), duration=duration, fps=fps, frames=frames,
                width=width, height=height, audio_sample_rate=audio_rate,
                source=_source_info(info), params=opts.extractor_params())
            writer.add(sample.member_name(entry.key, sample.JSON), sample.json_bytes(meta))
    return {"source_bytes": meta["source_bytes"], "duration": duration, "fps": fps,
            "frames": frames, "width": width, "height": height,
            "has_audio": info.has_audio,
            "audio_sample_rate": audio_rate, "mfcc_frames": mfcc_frames,
            "members": writer.members, "sample_bytes": writer.bytes,
            "sample_sha256": writer.sha256}


def _write_rgb(writer: SampleWriter, key: str, path: str, info: MediaInfo,
               size: tuple[int, int], fps: float, opts: RunOptions) -> int | None:
    """JPEG members, one per frame, streamed; checks the video was not cut short."""
    if "rgb" not in opts.modalities:
        return None
    count = 0
    for count, frame in enumerate(iter_frames(path, size, opts.fps, opts.decode_threads), 1):
        writer.add(sample.member_name(key, sample.rgb_suffix(count)),
                   encode_jpeg(frame, opts.jpeg_quality))
    if info.duration and opts.min_decoded_fraction > 0:
        declared = info.duration * fps
        if count < opts.min_decoded_fraction * declared - 1:
            raise MediaError("decode", f"truncated: decoded {count} frames ({count / fps:.2f} s) "
                             f"of the {info.duration:.2f} s its header declares")
    return count


def _write_mfcc(writer: SampleWriter, key: str, path: str, info: MediaInfo,
                opts: RunOptions) -> int | None:
    if "mfcc" not in opts.modalities or not info.has_audio:
        return None
    try:
        features = mfcc_chunks(iter_audio(path, opts.mfcc.sample_rate), opts.mfcc)
    except ValueError as exc:  # too short for the MFCC framing
        raise MediaError("audio", str(exc)) from None
    writer.add(sample.member_name(key, sample.MFCC), sample.npy_bytes(features))
    return int(features.shape[1])


def _source_info(info: MediaInfo) -> dict[str, Any]:
    return {"video_codec": info.video_codec, "width": info.width, "height": info.height,
            "fps": info.fps, "duration": info.duration, "audio_codec": info.audio_codec,
            "audio_sample_rate": info.audio_sample_rate, "audio_channels": info.audio_channels}
