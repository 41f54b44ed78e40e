"""Writing and reading the plan of an output (``plan.jsonl`` and ``plan-shards.json``):
streamed on write, read one shard's slice at a time, so no step holds the whole plan."""
from __future__ import annotations

import contextlib
import json
from typing import IO, Iterator

from actprep.pipelines import layout, storage
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import PlanEntry, ShardSpan, WorkUnit, split_span

SPANS_VERSION = 1


class PlanError(ValueError):
    """The plan files of an output are damaged (the message names the file and what)."""


class PlanWriter:
    """Takes entries in shard order and streams them into ``plan.jsonl``, noting each
    shard's span; ``close`` writes ``plan-shards.json``. Only the spans are held."""

    def __init__(self, output: str, stream: IO[bytes]):
        self.output = output
        self._stream = stream
        self._offset = 0
        self.spans: list[ShardSpan] = []

    def add(self, entry: PlanEntry) -> None:
        line = (entry.to_json() + "\n").encode("utf-8")
        last = self.spans[-1] if self.spans else None
        if last is not None and entry.shard == last.shard:
            self.spans[-1] = ShardSpan(last.shard, last.count + 1, last.offset,
                                       last.length + len(line))
        elif entry.shard == len(self.spans):
            self.spans.append(ShardSpan(entry.shard, 1, self._offset, len(line)))
        else:
            raise ValueError(f"plan entry {entry.key} of {shard_name(entry.shard)} after "
                             f"{len(self.spans)} shards: entries must come in shard order")
        self._stream.write(line)
        self._offset += len(line)

    @property
    def entries(self) -> int:
        return sum(s.count for s in self.spans)


@contextlib.contextmanager
def plan_writer(output: str) -> Iterator[PlanWriter]:
    """A PlanWriter whose files appear (plan, then spans) only once it closes cleanly."""
    with storage.atomic_writer(storage.join(output, layout.PLAN)) as stream:
        writer = PlanWriter(output, stream)
        yield writer
    write_spans(output, writer.spans)


def write_spans(output: str, spans: list[ShardSpan]) -> None:
    doc = {"version": SPANS_VERSION, "entries": sum(s.count for s in spans),
           "shards": [[s.count, s.offset, s.length] for s in spans]}
    storage.write_atomic(storage.join(output, layout.PLAN_SHARDS),
                         (json.dumps(doc, separators=(",", ":")) + "\n").encode())


def read_spans(output: str, remember: bool = True) -> list[ShardSpan]:
    """Every shard's span (one small file); an output planned before spans existed gets
    them from one streaming pass over its plan, written down for next time if
    ``remember`` (a reader that must not write, such as verify, passes False)."""
    path = storage.join(output, layout.PLAN_SHARDS)
    text = storage.read_text_if_exists(path)
    if text is None:
        spans = _scan_spans(output)
        if remember:
            write_spans(output, spans)
        return spans
    try:
        doc = json.loads(text)
        spans = [ShardSpan(n, int(c), int(o), int(size))
                 for n, (c, o, size) in enumerate(doc["shards"])]
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a plan's shard list ({exc})") from None
    if sum(s.count for s in spans) != doc.get("entries"):
        raise PlanError(f"{path}: its shards add up to {sum(s.count for s in spans)} "
                        f"entries, it says {doc.get('entries')}")
    return spans


def _scan_spans(output: str) -> list[ShardSpan]:
    path = storage.join(output, layout.PLAN)
    counter = PlanWriter(output, _NullStream())  # only counts: the lines are there
    with storage.FileSystems.open(path, compression_type="uncompressed") as stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                counter.add(_parse(line, path, number))
    return counter.spans


class _NullStream:
    def write(self, data: bytes) -> int:
        return len(data)


def _parse(line: bytes | str, path: str, number: int | str) -> PlanEntry:
    try:
        return PlanEntry.from_json(line)
    except (ValueError, TypeError) as exc:
        raise PlanError(f"{path}:{number}: not a plan entry ({exc})") from None


def read_lines(output: str, offset: int, length: int) -> list[bytes]:
    """The plan lines at bytes ``offset .. offset+length``: one ranged read."""
    path = storage.join(output, layout.PLAN)
    with storage.FileSystems.open(path, compression_type="uncompressed") as stream:
        stream.seek(offset)
        data = stream.read(length)
    if len(data) != length or (data and not data.endswith(b"\n")):
        raise PlanError(f"{path}: bytes {offset}..{offset + length} are not whole plan "
                        f"lines (the plan is shorter or was rewritten)")
    return data.splitlines(keepends=True)


def read_entries(output: str, unit: WorkUnit) -> list[PlanEntry]:
    """The plan entries of a unit (or a whole shard: ``WorkUnit.of_span``), checked to be
    the shard's, in order."""
    path = storage.join(output, layout.PLAN)
    entries = [_parse(line, path, f"{shard_name(unit.shard)}+{unit.first + i}")
               for i, line in enumerate(read_lines(output, unit.offset, unit.length))]
    if len(entries) != unit.count or any(e.shard != unit.shard for e in entries):
        raise PlanError(f"{path}: the lines of {shard_name(unit.shard)} entries "
                        f"{unit.first}..{unit.first + unit.count - 1} are not that shard's")
    return entries


def shard_entries(output: str, span: ShardSpan) -> list[PlanEntry]:
    return read_entries(output, WorkUnit.of_span(span))


def iter_entries(output: str) -> Iterator[PlanEntry]:
    """Every plan entry, streamed shard by shard."""
    for span in read_spans(output):
        yield from shard_entries(output, span)


def units_of_shard(output: str, span: ShardSpan, size: int | None) -> list[WorkUnit]:
    """The shard as work units of at most ``size`` entries (None: one unit, the shard)."""
    if size is None or size >= span.count:
        return [WorkUnit.of_span(span)]
    lines = read_lines(output, span.offset, span.length)
    return split_span(span, [len(line) for line in lines], size)
