"""The plan: every manifest row with its sample key, label index and shard, fixed once.

Shard order (``SHARD_ORDER``, recorded in ``run.json``): rows are grouped by label (rows
without one are a group), each group ranked by a fixed seeded hash of the key
(``order_hash``; ties by key, line), the j-th of a group's n rows (from 0) given the
position (j + 0.5) / n, and all rows ordered by (position, hash, key, line). Shard s takes
the rows ranked s * shard_size .. (s + 1) * shard_size - 1, so every shard holds each class
in about its share of the split (round-robin by class, not by chance), whatever order the
manifest lists its rows in: membership depends only on the rows' keys, lines and labels and
the shard size. Within a shard, entries (and samples) are in (key, line) order. Outputs planned
before (no ``shard_order`` in ``run.json``) cut rows sorted by (key, line) into shards;
their stored plan still holds, since a rerun reads the plan instead of re-deriving it.

``plan.jsonl`` holds one entry per line in shard order; ``plan-shards.json`` says where
each shard's lines are (``ShardSpan``), so a worker reads one shard's slice, never the
whole plan. A ``WorkUnit`` is the slice that one element of the job covers: a whole shard
on a local runner, single videos on Dataflow.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from actprep.schemas.labels import LabelMap
from actprep.schemas.manifest import ManifestRow
from actprep.schemas.naming import shard_name

# the shard order of new plans, recorded in run.json; its absence there: the older order,
# rows sorted by (key, line)
SHARD_ORDER = "stratified-1"
ORDER_SETTING = "shard_order"  # its name in run.json
OLD_ORDER = "key-sorted"  # what reports call the order of outputs whose run.json names none
# the hash's key (salt): fixed, so that equal manifests give equal plans everywhere
ORDER_SALT = b"actprep shard order 1"


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


def order_hash(key: str) -> int:
    """What ranks a key within its label group: an 8-byte blake2b of it keyed with
    ``ORDER_SALT``, as a signed big-endian 64-bit integer (what SQLite's INTEGER holds)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=ORDER_SALT).digest()
    return int.from_bytes(digest, "big", signed=True)


def shard_order(rows: Iterable[ManifestRow]) -> list[ManifestRow]:
    """The rows in the order shards are cut from (``SHARD_ORDER``, in the module's
    docstring): class-stratified, within a class by seeded hash. Holds every row: the
    reference the streaming planner (``plansort.placed_rows``) must equal."""
    groups: dict[str | None, list[tuple[int, str, int, ManifestRow]]] = defaultdict(list)
    for row in rows:
        groups[row.label].append((order_hash(row.key), row.key, row.line, row))
    ranked = []
    for members in groups.values():
        members.sort(key=lambda m: m[:3])
        n = len(members)
        ranked += [((j + 0.5) / n, *m) for j, m in enumerate(members)]
    ranked.sort(key=lambda m: m[:4])
    return [m[4] for m in ranked]


def make_plan(rows: Iterable[ManifestRow], labels: LabelMap, dataset: str,
              video_root: str | None, shard_size: int) -> list[PlanEntry]:
    """Rows in ``shard_order`` cut into shards of ``shard_size``, each shard's entries in
    (key, line) order (the planner does the same, streaming, through a scratch database)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    placed = sorted(((i // shard_size, r) for i, r in enumerate(shard_order(rows))),
                    key=lambda p: (p[0], p[1].key, p[1].line))
    return [plan_entry(r, shard, labels, dataset, video_root) for shard, r in placed]
