"""Step 1 of a run: manifest -> label map -> plan, written into the output once.

Planning streams: the manifest is read line by line, the video root listed once into a
temporary SQLite database (``plansort``), the rows stored there, checked in key order and
read back in plan order (class-stratified: ``schemas.plan.SHARD_ORDER``), each entry handed
to the plan writer. Memory does not grow with the manifest or the root.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Iterable, Iterator

from actprep.pipelines import layout, storage
from actprep.pipelines.options import TRANSIENT, RunOptions
from actprep.pipelines.planfile import PlanWriter, plan_writer, read_spans
from actprep.pipelines.plansort import (SqliteVideos, check_stored, iter_files,
                                        manifest_lines, placed_rows, scratch_db, store_rows,
                                        text_sha256)
from actprep.schemas.labels import LabelMap, parse_class_list
from actprep.schemas.manifest import ManifestError, ManifestRow, check_sorted, iter_manifest
from actprep.schemas.plan import ORDER_SETTING, SHARD_ORDER, ShardSpan, plan_entry
from actprep.schemas.version import LAYOUT_VERSION

MIT_CATEGORIES = "moments_categories.txt"
FFMPEG = "ffmpeg_version"  # the setting a rerun may change with --allow-ffmpeg-change


class PlanMismatch(RuntimeError):
    """The output already holds a plan made from other inputs or options."""


@dataclass(frozen=True)
class Plan:
    """What a run knows of its plan without holding it: where each shard's entries are."""

    spans: list[ShardSpan]
    labels: LabelMap
    reused: bool

    @property
    def shards(self) -> int:
        return len(self.spans)

    @property
    def entries(self) -> int:
        return sum(s.count for s in self.spans)


def _class_list_path(opts: RunOptions) -> str | None:
    if opts.classes:
        return opts.classes
    if opts.dataset == "mit":
        candidate = posixpath.join(posixpath.dirname(opts.manifest), MIT_CATEGORIES)
        return candidate if storage.exists(candidate) else None
    return None


def derive_plan(opts: RunOptions, writer: PlanWriter) -> LabelMap:
    """Lists the video root once, streams the manifest's rows into a scratch database,
    checks them there in (key, line) order and hands each plan entry to ``writer`` in
    shard order (``SHARD_ORDER``), as ``make_plan(check_rows(rows))`` would give them;
    returns the label map."""
    if opts.shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {opts.shard_size}")
    with scratch_db() as db:
        videos = SqliteVideos(db, iter_files(opts.video_root)) if opts.video_root else None
        seen: set[str] = set()
        with manifest_lines(opts.manifest) as lines:
            rows = iter_manifest(opts.dataset, lines, opts.manifest, videos, opts.split)
            store_rows(db, _noting_labels(rows, seen))
        class_path = _class_list_path(opts)
        if class_path:
            labels = parse_class_list(_class_text(class_path), class_path)
            check_stored(db, lambda rows: check_sorted(rows, set(labels.names), class_path))
        else:
            labels = LabelMap.from_labels(seen)
            check_stored(db, lambda rows: check_sorted(rows, None))
        root = opts.videos_within()
        for shard, row in placed_rows(db, opts.shard_size):
            writer.add(plan_entry(row, shard, labels, opts.dataset, root))
    return labels


def _class_text(path: str) -> str:
    try:
        return storage.read_text(path)
    except UnicodeDecodeError as exc:
        line = storage.read_bytes(path)[:exc.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: not UTF-8 ({exc.reason}); save the class list "
                            f"as UTF-8") from None


def _noting_labels(rows: Iterable[ManifestRow], seen: set[str]) -> Iterator[ManifestRow]:
    """The rows, unchanged, with each label added to ``seen`` (the label map's source)."""
    for row in rows:
        if row.label is not None:
            seen.add(row.label)
        yield row


def shaping(opts: RunOptions, manifest_sha256: str | None = None) -> dict:
    """What fixes the output's content: a rerun must match it exactly. The manifest's hash
    is of its text (BOM dropped), streamed from the file unless given."""
    doc = opts.as_dict()
    for transient in TRANSIENT:  # speed, not meaning; the flow backend/device used is in each sample's metadata
        doc.pop(transient)
    if "flow" not in opts.modalities:  # as before flow existed: older outputs still resume
        for name in ("flow_preset", "flow_bound", "flow_raw"):
            doc.pop(name)
    doc[FFMPEG] = opts.decoder()
    doc["manifest_sha256"] = manifest_sha256 or text_sha256(opts.manifest)
    class_path = _class_list_path(opts)
    doc["classes_sha256"] = (hashlib.sha256(storage.read_bytes(class_path)).hexdigest()
                             if class_path else None)
    doc["layout_version"] = LAYOUT_VERSION
    doc[ORDER_SETTING] = SHARD_ORDER
    return resolved(json.loads(json.dumps(doc)))  # tuples -> lists, as read back from JSON


# settings that are paths: compared resolved, so that the same file named another way (a
# relative path, a symlink) is the same setting; what they hold is compared by hash
PATH_SETTINGS = ("manifest", "video_root", "classes", "vggish_weights", "vggish_pca",
                 "vggish_hub")


def resolved(doc: dict) -> dict:
    """``doc`` with its local path settings made absolute, symlinks resolved."""
    return {k: os.path.realpath(v) if k in PATH_SETTINGS and isinstance(v, str)
            and storage.is_local(v) else v for k, v in doc.items()}


def load_or_create_plan(opts: RunOptions) -> Plan:
    """The plan in the output if there is one (checked against these options), else a
    new plan written there. Shard membership never changes under a resumed job: an output
    planned by an older actprep, in (key, line) order (no ``shard_order`` in its run.json),
    resumes with its stored plan."""
    wanted = shaping(opts)
    run_path = storage.join(opts.output, layout.RUN)
    if storage.exists(run_path):
        found = resolved(json.loads(storage.read_text(run_path)))  # older ones: as typed
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        if ORDER_SETTING not in found:  # planned in (key, line) order: its plan still holds
            diff.remove(ORDER_SETTING)
        if opts.allow_ffmpeg_change and FFMPEG in diff:
            diff.remove(FFMPEG)
        if FFMPEG in diff:
            started = found.get(FFMPEG) or "(not recorded: an older actprep)"
            raise PlanMismatch(
                f"{opts.output} was started with ffmpeg {started}, this run decodes with "
                f"ffmpeg {wanted[FFMPEG]}: other decoders give other bytes. Rerun with "
                f"--ffmpeg naming the first one, or --allow-ffmpeg-change to go on with this "
                f"one (each sample records its ffmpeg), or choose a new --output")
        if diff:
            raise PlanMismatch(
                f"{opts.output} holds a run with other settings ({', '.join(diff)} differ); "
                f"rerun with the same command to resume, or choose a new --output")
        labels = LabelMap.from_json(storage.read_text(storage.join(opts.output, layout.LABELS)))
        return Plan(read_spans(opts.output), labels, reused=True)
    storage.makedirs(opts.output)
    with plan_writer(opts.output) as writer:
        labels = derive_plan(opts, writer)
    storage.write_atomic(storage.join(opts.output, layout.LABELS), labels.to_json().encode())
    # run.json last: its presence means the plan is complete.
    storage.write_atomic(run_path, (json.dumps(wanted, indent=1, sort_keys=True) + "\n").encode())
    return Plan(writer.spans, labels, reused=False)
