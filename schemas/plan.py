"""The plan: every manifest row with its sample key, label index and shard, fixed once.

Shards are cut from rows sorted by (key, line), so membership depends only on the
manifest and the shard size.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "PlanEntry":
        return cls(**json.loads(text))


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def join_root(root: str | None, rel: str) -> str:
    """Full path of a root-relative (or already absolute) video path."""
    if root is None or rel.startswith("/") or "://" in rel:
        return rel
    return root.rstrip("/") + "/" + rel


def make_plan(rows: Iterable[ManifestRow], labels: LabelMap, dataset: str,
              video_root: str | None, shard_size: int) -> list[PlanEntry]:
    """Sorted entries cut into shards of ``shard_size``."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    ordered = sorted(rows, key=lambda r: (r.key, r.line))
    return [
        PlanEntry(
            key=r.key, line=r.line, shard=i // shard_size, dataset=dataset,
            path=join_root(video_root, r.path) if r.path else None,
            label=r.label,
            label_index=labels.index(r.label) if r.label in labels else None,
            split=r.split, error=r.error,
        )
        for i, r in enumerate(ordered)
    ]
