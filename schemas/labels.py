"""Label maps: stable class name <-> index assignments written into every output."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable


class LabelError(ValueError):
    """A class list that cannot give stable indices (duplicates, bad lines)."""


@dataclass(frozen=True)
class LabelMap:
    """Class names in index order, and where that order came from."""

    names: tuple[str, ...]
    source: str  # "class list FILE", "sorted manifest labels", ...

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in self.names:
            if name in seen:
                raise LabelError(f"class {name!r} appears twice in the label map ({self.source})")
            seen.add(name)
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index  # type: ignore[attr-defined]

    def index(self, name: str) -> int:
        return self._index[name]  # type: ignore[attr-defined]

    @classmethod
    def from_labels(cls, labels: Iterable[str | None]) -> "LabelMap":
        """Sorted unique names: the order mmaction2 and most Kinetics loaders use."""
        return cls(tuple(sorted({x for x in labels if x is not None})), "sorted manifest labels")

    def to_json(self) -> str:
        doc = {"source": self.source, "classes": list(self.names)}
        return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LabelMap":
        doc = json.loads(text)
        return cls(tuple(doc["classes"]), doc["source"])


def parse_class_list(text: str, source: str) -> LabelMap:
    """A class list: one name per line in index order, or ``name,index`` lines
    (Moments in Time's ``moments_categories.txt``), whose indices must be 0..n-1."""
    lines = [(n, raw.strip()) for n, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if not lines:
        raise LabelError(f"{source}: the class list is empty")
    if all(_index_suffix(line) is None for _, line in lines):
        return LabelMap(tuple(line for _, line in lines), f"class list {source}")
    by_index: dict[int, str] = {}
    for lineno, line in lines:
        index = _index_suffix(line)
        if index is None:
            raise LabelError(f"{source}:{lineno}: expected 'name,index' like the other lines, "
                             f"got {line!r}")
        name = line.rsplit(",", 1)[0]
        if index in by_index:
            raise LabelError(f"{source}:{lineno}: index {index} already used by {by_index[index]!r}")
        by_index[index] = name.strip()
    if sorted(by_index) != list(range(len(by_index))):
        raise LabelError(f"{source}: indices must be 0..{len(by_index) - 1} without gaps")
    return LabelMap(tuple(by_index[i] for i in range(len(by_index))), f"class list {source}")


def _index_suffix(line: str) -> int | None:
    if "," not in line:
        return None
    tail = line.rsplit(",", 1)[1].strip()
    return int(tail) if tail.isdigit() else None
