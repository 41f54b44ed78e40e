"""Step 1 of a run: manifest -> label map -> plan, written into the output once."""
from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass

from actprep.pipelines import layout, storage
from actprep.pipelines.options import TRANSIENT, RunOptions
from actprep.schemas.labels import LabelMap, parse_class_list
from actprep.schemas.manifest import VideoIndex, check_rows, read_manifest
from actprep.schemas.plan import PlanEntry, make_plan
from actprep.schemas.version import LAYOUT_VERSION

MIT_CATEGORIES = "moments_categories.txt"


class PlanMismatch(RuntimeError):
    """The output already holds a plan made from other inputs or options."""


@dataclass(frozen=True)
class Plan:
    entries: list[PlanEntry]
    labels: LabelMap
    reused: bool

    @property
    def shards(self) -> int:
        return max((e.shard for e in self.entries), default=-1) + 1


def _class_list_path(opts: RunOptions) -> str | None:
    if opts.classes:
        return opts.classes
    if opts.dataset == "mit":
        candidate = posixpath.join(posixpath.dirname(opts.manifest), MIT_CATEGORIES)
        return candidate if storage.exists(candidate) else None
    return None


def derive_plan(opts: RunOptions, manifest_text: str) -> tuple[list[PlanEntry], LabelMap]:
    """Reads the video root and the class list and resolves every manifest row."""
    videos = VideoIndex(storage.list_files(opts.video_root)) if opts.video_root else None
    rows = read_manifest(opts.dataset, manifest_text, opts.manifest, videos, opts.split)
    class_path = _class_list_path(opts)
    if class_path:
        labels = parse_class_list(storage.read_text(class_path), class_path)
        rows = check_rows(rows, set(labels.names), class_path)
    else:
        labels = LabelMap.from_labels(r.label for r in rows)
        rows = check_rows(rows, None)
    root = opts.video_root or posixpath.dirname(opts.manifest) or "."
    return make_plan(rows, labels, opts.dataset, root, opts.shard_size), labels


def shaping(opts: RunOptions, manifest_text: str) -> dict:
    """What fixes the output's content: a rerun must match it exactly."""
    doc = opts.as_dict()
    for transient in TRANSIENT:  # speed, not meaning; the flow backend/device used is in each sample's metadata
        doc.pop(transient)
    if "flow" not in opts.modalities:  # as before flow existed: older outputs still resume
        for name in ("flow_preset", "flow_bound", "flow_raw"):
            doc.pop(name)
    doc["manifest_sha256"] = hashlib.sha256(manifest_text.encode()).hexdigest()
    class_path = _class_list_path(opts)
    doc["classes_sha256"] = (hashlib.sha256(storage.read_bytes(class_path)).hexdigest()
                             if class_path else None)
    doc["layout_version"] = LAYOUT_VERSION
    return json.loads(json.dumps(doc))  # tuples -> lists, as read back from JSON


def load_or_create_plan(opts: RunOptions) -> Plan:
    """The plan in the output if there is one (checked against these options), else a
    new plan written there. Shard membership never changes under a resumed job."""
    manifest_text = storage.read_text(opts.manifest)
    wanted = shaping(opts, manifest_text)
    run_path = storage.join(opts.output, layout.RUN)
    if storage.exists(run_path):
        found = json.loads(storage.read_text(run_path))
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise PlanMismatch(
                f"{opts.output} holds a run with other settings ({', '.join(diff)} differ); "
                f"rerun with the same command to resume, or choose a new --output")
        text = storage.read_text(storage.join(opts.output, layout.PLAN))
        entries = [PlanEntry.from_json(line) for line in text.splitlines() if line]
        labels = LabelMap.from_json(storage.read_text(storage.join(opts.output, layout.LABELS)))
        return Plan(entries, labels, reused=True)
    entries, labels = derive_plan(opts, manifest_text)
    storage.makedirs(opts.output)
    plan_text = "".join(e.to_json() + "\n" for e in entries)
    storage.write_atomic(storage.join(opts.output, layout.PLAN), plan_text.encode())
    storage.write_atomic(storage.join(opts.output, layout.LABELS), labels.to_json().encode())
    # run.json last: its presence means the plan is complete.
    storage.write_atomic(run_path, (json.dumps(wanted, indent=1, sort_keys=True) + "\n").encode())
    return Plan(entries, labels, reused=False)
