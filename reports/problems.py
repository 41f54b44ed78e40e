"""What ``actprep verify`` reports: problems (each with a ``kind``, docs in verify.py), the
result of one shard and the report of an output."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong; ``shard`` is a shard name (``shard-000003``) or None for the output
    as a whole, ``key`` the sample it concerns, if any."""

    shard: str | None
    key: str | None
    kind: str
    detail: str

    def line(self) -> str:
        where = f"{self.shard}.tar: " if self.shard else ""
        return where + (f"sample {self.key}: " if self.key else "") + self.detail


@dataclasses.dataclass
class ShardResult:
    """What checking one shard found and cost."""

    shard: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    samples: int = 0
    bytes: int = 0
    checked: bool = False  # its tar was read


@dataclasses.dataclass
class Report:
    output: str
    shards: int
    samples: int
    bytes: int
    seconds: float
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "output": self.output, "shards": self.shards,
                "samples": self.samples, "bytes": self.bytes,
                "seconds": round(self.seconds, 3),
                "problems": [dataclasses.asdict(p) for p in self.problems]}

    def render_text(self) -> str:
        rate = max(self.seconds, 1e-9)
        summary = (f"verify {self.output}: {self.shards} shards, {self.samples} samples, "
                   f"{self.bytes / 1e6:.1f} MB read in {self.seconds:.1f} s "
                   f"({self.samples / rate:.0f} samples/s, {self.bytes / 1e6 / rate:.1f} MB/s): "
                   + (f"{len(self.problems)} problems" if self.problems else "no problems"))
        return "\n".join([p.line() for p in self.problems] + [summary])
