"""The plan: every manifest row with its sample key, label index and shard, fixed once.

Shards are cut from rows sorted by (key, line), so membership depends only on the
manifest and the shard size. ``plan.jsonl`` holds one entry per line in shard order;
``plan-shards.json`` says where each shard's lines are (``ShardSpan``), so a worker reads
one shard's slice, never the whole plan. A ``WorkUnit`` is the slice that one element of
the job covers: a whole shard on a local runner, single videos on Dataflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from actprep.schemas.labels import LabelMap
from actprep.schemas.manifest import ManifestRow


@dataclass(frozen=True)
class PlanEntry:
    """One video to process (or a manifest failure to record): small, shuffle-friendly."""

    key: str
    line: int
    shard: int
    dataset: str
    path: str | None  # full path (local or URI) of the video
    label: str | None
    label_index: int | None
    split: str | None
    error: str | None  # manifest-stage failure, recorded without processing

    def to_json(self) -> str:
        # vars, not asdict: the fields are plain values, and asdict deep-copies (4x slower)
        return json.dumps(vars(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "PlanEntry":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class ShardSpan:
    """Where one shard's entries are in ``plan.jsonl``: ``count`` lines from byte
    ``offset``, ``length`` bytes in all."""

    shard: int
    count: int
    offset: int
    length: int


@dataclass(frozen=True)
class WorkUnit:
    """Entries ``first .. first+count-1`` of shard ``shard`` (of ``shard_count``), at bytes
    ``offset .. offset+length`` of the plan: a few ints, whatever the unit's size."""

    shard: int
    first: int
    count: int
    shard_count: int
    offset: int
    length: int

    @property
    def whole(self) -> bool:
        """Whether the unit is its whole shard (so it can commit the shard itself)."""
        return self.first == 0 and self.count == self.shard_count

    @classmethod
    def of_span(cls, span: ShardSpan) -> "WorkUnit":
        return cls(span.shard, 0, span.count, span.count, span.offset, span.length)


def split_span(span: ShardSpan, line_lengths: list[int], size: int) -> list[WorkUnit]:
    """The shard cut into units of at most ``size`` entries; ``line_lengths``: the byte
    length of each of its plan lines, in order."""
    if len(line_lengths) != span.count:
        raise ValueError(f"{shard_name(span.shard)}: {len(line_lengths)} plan lines, its "
                         f"span says {span.count}")
    units, offset = [], span.offset
    for first in range(0, span.count, size):
        length = sum(line_lengths[first:first + size])
        units.append(WorkUnit(span.shard, first, min(size, span.count - first), span.count,
                              offset, length))
        offset += length
    return units


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def join_root(root: str | None, rel: str) -> str:
    """Full path of a root-relative (or already absolute) video path."""
    if root is None or rel.startswith("/") or "://" in rel:
        return rel
    return root.rstrip("/") + "/" + rel


def plan_entry(row: ManifestRow, shard: int, labels: LabelMap, dataset: str,
               video_root: str | None) -> PlanEntry:
    """The plan entry of a checked manifest row placed in ``shard``."""
    return PlanEntry(
        key=row.key, line=row.line, shard=shard, dataset=dataset,
        path=join_root(video_root, row.path) if row.path else None,
        label=row.label,
        label_index=labels.index(row.label) if row.label in labels else None,
        split=row.split, error=row.error,
    )


def make_plan(rows: Iterable[ManifestRow], labels: LabelMap, dataset: str,
              video_root: str | None, shard_size: int) -> list[PlanEntry]:
    """Sorted entries cut into shards of ``shard_size`` (the planner does the same,
    streaming, through a scratch database)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    ordered = sorted(rows, key=lambda r: (r.key, r.line))
    return [plan_entry(r, i // shard_size, labels, dataset, video_root)
            for i, r in enumerate(ordered)]
