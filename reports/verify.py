"""``actprep verify OUTPUT``: reads every shard of an output and checks it against its index
and plan, so a damaged copy, an unfinished run or a writer bug is found before training.

Checks, each reported as a problem with a ``kind``:

- the output as a whole: ``missing`` (a planned shard without its tar; says whether its work
  is pending under ``_work/``, i.e. the run is unfinished), ``unindexed`` (a tar without its
  index), ``orphan-index`` (an index without its tar), ``extra`` (files that are not part of
  an output, tars of shards outside the plan), ``plan`` (a damaged ``plan-shards.json``;
  per shard: unparseable plan lines, lines that are not the shard's);
- each index against the plan: ``index`` (one row per plan entry of the shard, same key,
  shard and label index; ok rows carry their member count, bytes and sha256, and their
  byte range ``tar_offset``/``tar_bytes`` on all ok rows or on none: older outputs lack it);
- each tar, streamed member by member (never a whole shard in memory): ``corrupt`` (not a
  valid tar to its end: truncation, bad header checksum, data after the end), ``header``
  (headers other than ``schemas.sample.tar_info``'s: mode 0444, mtime 0, uid/gid 0, no
  names, regular files, POSIX format), ``members`` / ``bytes`` / ``sha256`` (a sample
  against its index row), ``range`` (a sample of the right size whose members are not
  at the byte range its row records: a reader would seek to the wrong bytes), ``sample-missing`` (an ok row without members),
  ``sample-unindexed`` (members without an ok row, e.g. of a failed row), ``order``
  (members not contiguous or not in the documented order, samples not in key order),
  ``decode`` (a JPEG that does not decode, with the wrong channels or size; an ``.npy``
  that does not load, of the wrong dtype or shape), ``content`` (``.json`` whose ``key``
  differs, ``.cls`` other than the row's label index, unknown or misnumbered members,
  frame / flow / audio members the row does not account for); ``unreadable`` (I/O errors).

Shards are checked in parallel threads (JPEG decoding and hashing release the GIL), each
reading its own slice of the plan, through a bounded pool: memory holds the shards in flight,
never the whole plan or index, whatever the size of the output.
Exit status: 0 no problem, 1 problems, 2 bad usage or not an actprep output.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from typing import IO, Any, Iterator

import numpy as np
import pyarrow as pa

from actprep.pipelines import layout, planfile, storage
from actprep.pipelines.bounded import imap
from actprep.pipelines.runlock import LOCK
from actprep.schemas import sample
from actprep.schemas.index import FAILED, OK, read_index
from actprep.schemas.plan import PlanEntry, ShardSpan, shard_name
from actprep.schemas.tarformat import BLOCK, pax_records

_ZERO_BLOCK = bytes(BLOCK)
_HEADER_FIELDS = ("mode", "mtime", "uid", "gid", "uname", "gname", "type")
_TOP_FILES = frozenset({layout.RUN, layout.PLAN, layout.PLAN_SHARDS, layout.LABELS, LOCK})
_TOP_DIRS = frozenset({layout.INDEX_DIR, layout.WORK_DIR})
_SHARD_FILE = re.compile(r"^(shard-\d+)\.tar$")
_INDEX_FILE = re.compile(r"^(shard-\d+)\.parquet$")


class NotAnOutput(Exception):
    """The folder is not an actprep output (no run.json or plan.jsonl)."""


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


# ---------------------------------------------------------------------------- tar reading

class TarCorrupt(Exception):
    """The tar is not valid from here on; ``key``: the sample where it broke, if known."""

    def __init__(self, detail: str, key: str | None = None):
        super().__init__(detail)
        self.key = key


@dataclasses.dataclass(frozen=True)
class Member:
    """A tar member as its headers state it; ``deviations``: how its headers differ from
    what ``schemas.sample.tar_info`` writes."""

    name: str
    size: int
    deviations: tuple[str, ...]
    offset: int = 0  # its first header (a pax header when it has one)
    end: int = 0  # the end of its data's padding

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def suffix(self) -> str:
        return self.name.partition(".")[2]


def _deviations(block: bytes, info: tarfile.TarInfo, pax: dict[str, str],
                name: str, size: int) -> tuple[str, ...]:
    """Header fields that differ from ``tar_info(name, size)`` (the writer's headers)."""
    expected = sample.tar_info(name, size)
    found = [f"{field} {getattr(info, field)!r} (expected {getattr(expected, field)!r})"
             for field in _HEADER_FIELDS if getattr(info, field) != getattr(expected, field)]
    if block[257:265] != tarfile.POSIX_MAGIC:
        found.append(f"magic {block[257:265]!r} (expected POSIX {tarfile.POSIX_MAGIC!r})")
    found += [f"pax field {k}={v!r}" for k, v in sorted(pax.items()) if k != "path"]
    return tuple(found)


class TarReader:
    """Streams a tar member by member, strictly: any truncation, bad checksum, missing
    end-of-archive blocks or data after them raises ``TarCorrupt``. Counts bytes read."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self.offset = 0
        self._last: str | None = None  # name of the last complete member

    def _read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream (which may return short reads)."""
        parts, left = [], n
        while left and (part := self._stream.read(left)):
            parts.append(part)
            left -= len(part)
        self.offset += n - left
        return b"".join(parts)

    def _where(self) -> str:
        return f"after member {self._last}" if self._last else "in the first header"

    def _last_key(self) -> str | None:
        return self._last.split(".", 1)[0] if self._last else None

    def _header(self) -> tuple[bytes, tarfile.TarInfo] | None:
        """The next header block, parsed; None at the end-of-archive marker."""
        start = self.offset
        block = self._read(BLOCK)
        if not block:
            raise TarCorrupt(f"corrupt: the tar ends at byte {start} ({self._where()}) "
                             f"without its end-of-archive blocks", self._last_key())
        if len(block) < BLOCK:
            raise TarCorrupt(f"corrupt: truncated in a header at byte {start} ({self._where()})")
        if block == _ZERO_BLOCK:
            return None
        try:
            return block, tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarCorrupt(f"corrupt: invalid header at byte {start} ({self._where()}): "
                             f"{exc}") from None

    def _data(self, size: int, what: str, key: str | None) -> bytes:
        """``size`` bytes of member data, then its padding to a whole block."""
        start = self.offset
        data = self._read(size)
        if len(data) < size:
            raise TarCorrupt(f"corrupt: truncated in the data of {what}: the tar ends at byte "
                             f"{self.offset}, its data runs to byte {start + size}", key)
        pad = -size % BLOCK
        if len(self._read(pad)) < pad:
            raise TarCorrupt(f"corrupt: truncated in the padding after {what}", key)
        return data

    def _end(self) -> None:
        """After the first zero block: a second one, then only zeros (record padding)."""
        start = self.offset - BLOCK
        if self._read(BLOCK) != _ZERO_BLOCK:
            raise TarCorrupt(f"corrupt: incomplete or damaged end-of-archive marker at byte "
                             f"{start} ({self._where()})")
        while chunk := self._read(1 << 16):
            if chunk.count(0) != len(chunk):
                at = self.offset - len(chunk.lstrip(b"\0"))
                raise TarCorrupt(f"corrupt: data after the end-of-archive marker (at byte {at})",
                                 self._last_key())

    def __iter__(self) -> Iterator[tuple[Member, bytes]]:
        """Each member with its data (one member in memory at a time)."""
        while (header := self._header()) is not None:
            offset = self.offset - BLOCK
            block, info = header
            pax: dict[str, str] = {}
            if info.type == tarfile.XHDTYPE:
                try:
                    pax = pax_records(self._data(info.size, "a pax header", None))
                    int(pax.get("size", 0))
                except ValueError as exc:
                    raise TarCorrupt(f"corrupt: bad pax header at byte {offset} "
                                     f"({self._where()}): {exc}") from None
                if (header := self._header()) is None:
                    raise TarCorrupt(f"corrupt: pax header at byte {offset} without a member")
                block, info = header
            name = pax.get("path", info.name)
            size = int(pax.get("size", info.size))
            data = self._data(size, f"member {name}", name.split(".", 1)[0])
            self._last = name
            yield Member(name, size, _deviations(block, info, pax, name, size), offset,
                         self.offset), data
        self._end()


# -------------------------------------------------------------------------- member checks

_NUMBERED = (("rgb", sample._RGB, sample.rgb_suffix), ("flow_x", sample._FLOW_X,
             sample.flow_x_suffix), ("flow_y", sample._FLOW_Y, sample.flow_y_suffix),
             ("flow", sample._FLOW_RAW, sample.flow_raw_suffix))
_SINGLE = {sample.CLS: "cls", sample.MFCC: "mfcc", sample.VGGISH: "vggish",
           sample.VGGISH_PCA: "vggish_pca", sample.JSON: "json"}
# documented member order: .cls; per frame N rgb, flow_x, flow_y, flow; mfcc, vggish, pca, json
_MAJOR = {"cls": 0, "rgb": 1, "flow_x": 1, "flow_y": 1, "flow": 1, "mfcc": 2, "vggish": 3,
          "vggish_pca": 4, "json": 5}
_MINOR = {"rgb": 0, "flow_x": 1, "flow_y": 2, "flow": 3}


def classify(suffix: str) -> tuple[str, int | None] | None:
    """(kind, frame number) of a member suffix of the sample layout; None if unknown or not
    canonically numbered (6 digits)."""
    if suffix in _SINGLE:
        return _SINGLE[suffix], None
    for kind, pattern, make in _NUMBERED:
        if (m := pattern.match(suffix)) and make(int(m.group(1))) == suffix:
            return kind, int(m.group(1))
    return None


def _rank(kind: str, number: int | None) -> tuple[int, int, int]:
    return _MAJOR[kind], number or 0, _MINOR.get(kind, 0)


def _check_jpeg(data: bytes, gray: bool, row: dict | None) -> str | None:
    """libjpeg decodes truncated or damaged data with a warning only, so a JPEG must also
    start with SOI and end with EOI, as the writer's encoder leaves it."""
    import cv2  # local: importing the CLI does not need it

    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return "is not a complete JPEG (no start or end marker)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return "does not decode as JPEG"
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != (1 if gray else 3):
        return f"has {channels} channels, expected {1 if gray else 3}"
    if row and row.get("width") is not None and image.shape[:2] != (row["height"], row["width"]):
        return (f"is {image.shape[1]}x{image.shape[0]}, the index says "
                f"{row['width']}x{row['height']}")
    return None


def _npy_expectation(kind: str, row: dict | None) -> tuple[np.dtype, tuple]:
    """dtype and shape (None: any length) a ``.npy`` member must have (docs/FORMAT.md)."""
    row = row or {}
    if kind == "mfcc":
        return np.dtype(np.float32), (None, row.get("mfcc_frames"))
    if kind == "vggish":
        return np.dtype(np.float32), (row.get("vggish_examples"), 128)
    if kind == "vggish_pca":
        return np.dtype(np.uint8), (row.get("vggish_examples"), 128)
    return np.dtype(np.float16), (2, row.get("height"), row.get("width"))


def _check_npy(data: bytes, kind: str, row: dict | None) -> str | None:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # ValueError, EOFError, OSError...: any is a broken member
        return f"does not load as .npy ({type(exc).__name__}: {exc})"
    dtype, shape = _npy_expectation(kind, row)
    if array.dtype != dtype or array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape)):
        want = "x".join("N" if s is None else str(s) for s in shape)
        return f"is {array.dtype} {list(array.shape)}, expected {dtype} [{want}]"
    return None


def _check_json(data: bytes, key: str) -> str | None:
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        return f"does not parse as JSON ({exc})"
    if not isinstance(doc, dict) or doc.get("key") != key:
        found = doc.get("key") if isinstance(doc, dict) else type(doc).__name__
        return f"has key {found!r}, expected {key!r}"
    return None


def _check_cls(data: bytes, row: dict | None) -> str | None:
    if not data.isdigit():
        return f"is {data[:20]!r}, not ASCII digits"
    if row is not None and int(data) != row.get("label_index"):
        return f"is {int(data)}, the index's label_index is {row.get('label_index')}"
    return None


def check_content(kind: str, data: bytes, key: str, row: dict | None) -> tuple[str, str] | None:
    """(problem kind, detail) when a member's data is not what its name says; None if fine."""
    if kind in ("rgb", "flow_x", "flow_y"):
        return ("decode", found) if (found := _check_jpeg(data, kind != "rgb", row)) else None
    if kind in ("mfcc", "vggish", "vggish_pca", "flow"):
        return ("decode", found) if (found := _check_npy(data, kind, row)) else None
    if kind == "json":
        return ("content", found) if (found := _check_json(data, key)) else None
    return ("content", found) if (found := _check_cls(data, row)) else None


# -------------------------------------------------------------------------- sample checks

class _Tally:
    """One sample's members as read from the tar, counted and hashed in tar order (as
    ``fragment.SampleWriter`` hashed them)."""

    def __init__(self, key: str):
        self.key = key
        self.members = 0
        self.bytes = 0
        self.sha = hashlib.sha256()
        self.numbers: dict[str, list[int]] = {}
        self.singles: set[str] = set()
        self.last_rank: tuple[int, int, int] | None = None
        self.misordered = False
        self.bad_headers = 0
        self.first_bad_header = ""
        self.start: int | None = None  # byte range of its members in the tar
        self.end = 0

    def add(self, name: str, data: bytes) -> None:
        self.sha.update(name.encode("utf-8", "surrogateescape") + b"\0")
        self.sha.update(data)
        self.members += 1
        self.bytes += len(data)


def _numbering(tally: _Tally, kind: str, expected: int | None) -> str | None:
    """Problem with the numbered members of ``kind`` (must be 1..expected)."""
    numbers = sorted(tally.numbers.get(kind, []))
    if numbers != list(range(1, len(numbers) + 1)):
        return f"{kind} members are not numbered 1..{len(numbers)}"
    if expected is not None and len(numbers) != expected:
        return f"{len(numbers)} {kind} members, the index says {expected}"
    return None


def inventory_problems(tally: _Tally, row: dict, modalities: frozenset[str]) -> list[str]:
    """Members the row's fields do not account for: frames (with ``rgb`` among the run's
    modalities), flows, raw flows, audio features, label, metadata."""
    found = []
    wants = {"json": True, "cls": row.get("label_index") is not None,
             "mfcc": row.get("mfcc_frames") is not None,
             "vggish": row.get("vggish_examples") is not None}
    for kind, want in wants.items():
        if want != (kind in tally.singles):
            found.append(f"{'no' if want else 'unexpected'} .{kind} member")
    pairs = row.get("flow_pairs") or 0
    counts = {"rgb": row.get("frames") if "rgb" in modalities else (0 if modalities else None),
              "flow_x": pairs, "flow_y": pairs, "flow": pairs if "flow" in tally.numbers else 0}
    found += [p for kind, count in counts.items() if (p := _numbering(tally, kind, count))]
    return found


class ShardScan:
    """Checks one shard tar's members against the ok rows of its index (``rows`` None: no
    usable index; structure, headers and content are still checked)."""

    def __init__(self, shard: str, rows: list[dict] | None, modalities: frozenset[str],
                 decode: bool):
        self.shard = shard
        self.rows = rows
        self.ok = {r["key"]: r for r in rows or [] if r["status"] == OK}
        self.failed = {r["key"] for r in rows or [] if r["status"] == FAILED}
        self.modalities = modalities
        self.decode = decode
        self.tallies: dict[str, _Tally] = {}
        self.current: str | None = None
        self.problems: list[Problem] = []

    def problem(self, key: str | None, kind: str, detail: str) -> None:
        self.problems.append(Problem(self.shard, key, kind, detail))

    def add(self, member: Member, data: bytes) -> None:
        key, row = member.key, self.ok.get(member.key)
        if key != self.current:
            if key in self.tallies:
                self.problem(key, "order", f"members not contiguous: {member.name} comes after "
                             f"members of {self.current}")
            self.current = key
        tally = self.tallies.setdefault(key, _Tally(key))
        tally.start = member.offset if tally.start is None else tally.start
        tally.end = member.end
        tally.add(member.name, data)
        if member.deviations:
            tally.bad_headers += 1
            tally.first_bad_header = tally.first_bad_header or \
                f"{member.name}: {'; '.join(member.deviations)}"
        kind = classify(member.suffix)
        if kind is None:
            self.problem(key, "content", f"unknown member {member.name} (not in the sample "
                         f"layout)")
            return
        self._order(tally, member.name, *kind)
        if self.decode and (found := check_content(kind[0], data, key, row)):
            self.problem(key, found[0], f"{member.name} {found[1]}")

    def _order(self, tally: _Tally, name: str, kind: str, number: int | None) -> None:
        """Records the member and checks it follows the documented order without repeats."""
        rank = _rank(kind, number)
        if number is None:
            tally.singles.add(kind)
        else:
            tally.numbers.setdefault(kind, []).append(number)
        if tally.last_rank is not None and rank <= tally.last_rank and not tally.misordered:
            tally.misordered = True
            what = "repeated" if rank == tally.last_rank else "out of the documented order"
            self.problem(tally.key, "order", f"member {name} is {what}")
        tally.last_rank = rank

    def finish(self, complete: bool) -> None:
        """Compares what was read with the index; ``complete``: the tar was read to its end
        (after a break, samples not reached are not reported missing). Header deviations
        are reported once per sample: a re-packed tar has them on every member."""
        for key, tally in self.tallies.items():
            if tally.bad_headers:
                more = f" (and {tally.bad_headers - 1} more members)" if tally.bad_headers > 1 else ""
                self.problem(key, "header", f"header of {tally.first_bad_header}{more}")
        if self.rows is None:
            return
        for key, tally in self.tallies.items():
            if key in self.ok:
                if complete or key != self.current:
                    self._compare(tally, self.ok[key])
            elif key in self.failed:
                self.problem(key, "sample-unindexed", f"{tally.members} members in the tar, "
                             f"but its index row is failed")
            else:
                self.problem(key, "sample-unindexed", f"{tally.members} members in the tar, "
                             f"no index row")
        if complete:
            for key in self.ok.keys() - self.tallies.keys():
                self.problem(key, "sample-missing", "ok in the index, no members in the tar")
            order = [k for k in self.tallies if k in self.ok]
            if order != [k for k in self.ok if k in self.tallies]:
                self.problem(None, "order", "samples are not in the index's (key) order")

    def _compare(self, tally: _Tally, row: dict) -> None:
        key = tally.key
        if tally.members != row["members"]:
            self.problem(key, "members", f"member count mismatch: index {row['members']}, "
                         f"tar {tally.members}")
        if tally.bytes != row["sample_bytes"]:
            self.problem(key, "bytes", f"data bytes mismatch: index {row['sample_bytes']}, "
                         f"tar {tally.bytes}")
        if tally.sha.hexdigest() != row["sample_sha256"]:
            self.problem(key, "sha256", f"sha256 mismatch: index {str(row['sample_sha256'])[:16]}"
                         f"..., tar {tally.sha.hexdigest()[:16]}...")
        offset, length = row.get("tar_offset"), row.get("tar_bytes")
        sized = tally.members == row["members"] and tally.bytes == row["sample_bytes"]
        if offset is not None and sized and (tally.start, tally.end - tally.start) != \
                (offset, length):  # (a sample of another size is reported above)
            self.problem(key, "range", f"byte range mismatch: index {offset}+{length}, tar "
                         f"{tally.start}+{tally.end - tally.start}")
        for detail in inventory_problems(tally, row, self.modalities):
            self.problem(key, "content", detail)


# --------------------------------------------------------------------------- index checks

def index_problems(shard: str, rows: list[dict], entries: list[PlanEntry]) -> list[Problem]:
    """The index against the plan: one row per plan entry (by line) agreeing on key, shard
    and label index; ok rows with their member count, bytes and sha256; (key, line) order."""
    found: list[Problem] = []

    def add(key: str | None, detail: str) -> None:
        found.append(Problem(shard, key, "index", detail))
    planned = {e.line: e for e in entries}
    seen: dict[int, int] = {}
    for row in rows:
        line, key = row["line"], row["key"]
        seen[line] = seen.get(line, 0) + 1
        entry = planned.get(line)
        if entry is None:
            add(key, f"index row for manifest line {line} is not in this shard's plan")
            continue
        for field, want in (("key", entry.key), ("shard", shard),
                            ("label_index", entry.label_index)):
            if row[field] != want:
                add(key, f"line {line}: index {field} {row[field]!r}, plan {want!r}")
        if row["status"] not in (OK, FAILED):
            add(key, f"line {line}: status {row['status']!r}")
        elif row["status"] == OK and None in (row["members"], row["sample_bytes"],
                                              row["sample_sha256"]):
            add(key, f"line {line}: ok row without members, sample_bytes or sample_sha256")
    for line, count in sorted(seen.items()):
        if count > 1 and line in planned:
            add(planned[line].key, f"manifest line {line} has {count} index rows")
    for line in sorted(planned.keys() - seen.keys()):
        add(planned[line].key, f"manifest line {line} has no index row")
    ranged = [r.get("tar_offset") is not None and r.get("tar_bytes") is not None
              for r in rows if r["status"] == OK]
    if any(ranged) and not all(ranged):  # a commit records every ok row's range, or none
        add(None, f"{ranged.count(False)} of {len(ranged)} ok rows without tar_offset/"
                  f"tar_bytes")
    ok_keys = collections.Counter(r["key"] for r in rows if r["status"] == OK)
    for key in sorted(k for k, n in ok_keys.items() if n > 1):
        add(key, f"{ok_keys[key]} ok rows")
    if [(r["key"], r["line"]) for r in rows] != sorted((r["key"], r["line"]) for r in rows):
        add(None, "index rows are not in (key, line) order")
    return found


# ---------------------------------------------------------------------------- one shard

@dataclasses.dataclass(frozen=True)
class ShardJob:
    """What checking one planned shard needs: where its plan lines are (read by the job,
    so only the shards in flight hold theirs) and what the listing found for it."""

    output: str
    span: ShardSpan
    first_line: int  # line number in plan.jsonl of the shard's first entry
    has_tar: bool
    has_index: bool
    work: tuple[int, int]  # files, and result records among them, under _work/<shard>/
    modalities: frozenset[str]
    decode: bool

    @property
    def shard(self) -> int:
        return self.span.shard


def _plan_entries(job: ShardJob, name: str, result: ShardResult) -> list[PlanEntry] | None:
    """The shard's plan entries from its slice of the plan; lines that do not parse or are
    not the shard's become ``plan`` problems; None (a problem) if the slice is unreadable."""
    def problem(detail: str) -> None:
        result.problems.append(Problem(name, None, "plan", detail))
    span = job.span
    try:
        lines = planfile.read_lines(job.output, span.offset, span.length)
    except (planfile.PlanError, OSError) as exc:
        problem(f"plan lines unreadable: {exc}")
        return None
    entries = []
    for number, line in enumerate(lines, job.first_line):
        if not line.strip():
            continue
        try:
            entry = PlanEntry.from_json(line)
        except (ValueError, TypeError) as exc:
            problem(f"{layout.PLAN}:{number}: {exc}")
            continue
        if entry.shard != span.shard:
            problem(f"{layout.PLAN}:{number}: entry {entry.key} of {shard_name(entry.shard)} "
                    f"among the lines of {name}")
            continue
        entries.append(entry)
    if len(lines) != span.count:
        problem(f"{layout.PLAN_SHARDS} says {span.count} entries, {layout.PLAN} has "
                f"{len(lines)} lines there")
    return entries


def _load_rows(job: ShardJob, name: str, result: ShardResult) -> list[dict] | None:
    """The shard's index rows, or None (with a problem) when it cannot be read."""
    path = layout.shard_index(job.output, job.shard)
    try:
        data = storage.read_bytes(path)
        result.bytes += len(data)
        return read_index(pa.BufferReader(data)).to_pylist()
    except Exception as exc:  # ArrowInvalid, schema mismatch, OSError: all unreadable
        result.problems.append(Problem(name, None, "index", f"index {layout.INDEX_DIR}/{name}"
                                       f".parquet unreadable: {type(exc).__name__}: {exc}"))
        return None


def _pending_work(shard: int, planned: int, work: tuple[int, int]) -> str:
    """What ``_work/`` holds for an uncommitted shard, in words."""
    files, done = work
    if not files:
        return "no work under _work/ either"
    return (f"its work is pending under {layout.WORK_DIR}/{shard_name(shard)}/ ({done} of "
            f"{planned} videos done): the run is unfinished")


def check_shard(job: ShardJob) -> ShardResult:
    """Every check of one planned shard (tar, index, plan); never raises for bad data."""
    name = shard_name(job.shard)
    result = ShardResult(name)
    if not job.has_tar:
        result.problems.append(Problem(name, None, "missing", f"missing: planned, no tar; "
                                       f"{_pending_work(job.shard, job.span.count, job.work)}"))
        if job.has_index:
            result.problems.append(Problem(name, None, "orphan-index",
                                           f"orphan index: {layout.INDEX_DIR}/{name}.parquet "
                                           f"has no tar"))
        return result
    entries = _plan_entries(job, name, result)
    rows = None
    if job.has_index:
        rows = _load_rows(job, name, result)
        if rows is not None and entries is not None:
            result.problems += index_problems(name, rows, entries)
    else:
        result.problems.append(Problem(name, None, "unindexed", f"unindexed: no "
                                       f"{layout.INDEX_DIR}/{name}.parquet"))
    _scan_tar(job, name, rows, result)
    return result


def _scan_tar(job: ShardJob, name: str, rows: list[dict] | None, result: ShardResult) -> None:
    scan = ShardScan(name, rows, job.modalities, job.decode)
    reader = None
    try:
        with storage.FileSystems.open(layout.shard_tar(job.output, job.shard),
                                      compression_type="uncompressed") as stream:
            reader = TarReader(stream)
            for member, data in reader:
                scan.add(member, data)
        scan.finish(complete=True)
    except TarCorrupt as exc:
        scan.finish(complete=False)
        unread = len(scan.ok.keys() - scan.tallies.keys())
        tail = f"; ok samples not reached: {unread}" if rows else ""
        scan.problem(exc.key, "corrupt", f"{exc}{tail}")
    except OSError as exc:
        scan.problem(None, "unreadable", f"unreadable: {exc}")
    result.problems += scan.problems
    result.samples = len(scan.tallies)
    result.bytes += reader.offset if reader else 0
    result.checked = True


# ------------------------------------------------------------------------- the output

def _relative(output: str, path: str) -> str:
    return path[len(output):].lstrip("/\\").replace(os.sep, "/")


def _files(output: str) -> Iterator[str]:
    """Every file under ``output`` (hidden temporaries included), relative: one listing,
    streamed where local, so a large ``_work/`` is never held as a list of paths."""
    if storage.is_local(output):
        for folder, _, files in os.walk(output):
            for name in files:
                yield _relative(output, os.path.join(folder, name))
    else:
        yield from (_relative(output, p) for p in storage.files_in(output))


@dataclasses.dataclass
class Listing:
    """What one listing of the output found: shards with a tar and with an index, per
    shard its files and result records under ``_work/``, and ``extra`` problems."""

    tars: set[int]
    indexes: set[int]
    work: dict[int, tuple[int, int]]
    extra: list[Problem]


def list_output(output: str) -> Listing:
    """Lists the output once; files that are not part of an output are ``extra`` (folders
    other than index/ and _work/ count once)."""
    tars, indexes, extra, folders = set(), set(), [], set()
    work: dict[int, tuple[int, int]] = {}
    for rel in _files(output):
        head, _, rest = rel.partition("/")
        if not rest and (m := _SHARD_FILE.match(rel)) and _number(m.group(1)) is not None:
            tars.add(_number(m.group(1)))
        elif head == layout.WORK_DIR:
            shard = rest.partition("/")[0]
            if "/" in rest and shard.startswith("shard-") and \
                    (number := _number(shard)) is not None:
                files, done = work.get(number, (0, 0))
                work[number] = (files + 1, done + rel.endswith(".result.json"))
        elif not rest and rel in _TOP_FILES:
            continue
        elif head == layout.INDEX_DIR and (m := _INDEX_FILE.match(rest)) and \
                _number(m.group(1)) is not None:
            indexes.add(_number(m.group(1)))
        elif rest and head not in _TOP_DIRS:
            folders.add(head)
        else:
            extra.append(rel)
    problems = [Problem(None, None, "extra", f"extra file: {rel}") for rel in sorted(extra)]
    problems += [Problem(None, None, "extra", f"extra folder: {f}/") for f in sorted(folders)]
    return Listing(tars, indexes, work, problems)


def _number(name: str) -> int | None:
    """The shard number of a canonical shard name (``shard-000003``), else None."""
    digits = name[len("shard-"):]
    if not digits.isdigit():
        return None
    number = int(digits)
    return number if shard_name(number) == name else None


def load_run(output: str) -> dict[str, Any]:
    """run.json; NotAnOutput without it or without plan.jsonl."""
    run_path, plan_path = storage.join(output, layout.RUN), storage.join(output, layout.PLAN)
    for path in (run_path, plan_path):
        if not storage.exists(path):
            raise not_an_output(output, path.rsplit("/", 1)[-1])
    try:
        return json.loads(storage.read_text(run_path))
    except ValueError as exc:
        raise NotAnOutput(f"{run_path} is not JSON: {exc}") from None


def not_an_output(output: str, missing: str) -> NotAnOutput:
    """The error for a folder without ``missing`` (run.json, plan.jsonl), naming the
    outputs directly inside it when there are any."""
    inside = _outputs_inside(output)
    hint = f"; the output{'s' if len(inside) > 1 else ''} inside it: " if inside else ""
    return NotAnOutput(f"{output} is not an actprep output (no {missing}){hint}"
                       f"{', '.join(inside)}")


def _outputs_inside(folder: str) -> list[str]:
    """The actprep outputs directly inside a local ``folder`` (run.json in a subfolder), for
    a user who named the folder above one (as ``actprep demo --output DIR`` writes DIR/shards)."""
    if not storage.is_local(folder) or not os.path.isdir(folder):
        return []
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries
                      if e.is_dir() and os.path.exists(os.path.join(e.path, layout.RUN)))


def load_spans(output: str) -> tuple[list[ShardSpan] | None, list[Problem]]:
    """Each planned shard's span of the plan (rebuilt from plan.jsonl when plan-shards.json
    is missing), or None and a ``plan`` problem when they cannot be had."""
    has_spans = storage.exists(storage.join(output, layout.PLAN_SHARDS))
    try:
        return planfile.read_spans(output, remember=False), []
    except planfile.PlanError as exc:
        hint = (f"; delete {layout.PLAN_SHARDS} to have it rebuilt from {layout.PLAN}"
                if has_spans else "")
        return None, [Problem(None, None, "plan", f"{exc}; shards not checked{hint}")]


def _jobs(output: str, spans: list[ShardSpan], listing: Listing, modalities: frozenset[str],
          decode: bool) -> Iterator[ShardJob]:
    first = 1
    for span in spans:
        yield ShardJob(output, span, first, span.shard in listing.tars,
                       span.shard in listing.indexes, listing.work.get(span.shard, (0, 0)),
                       modalities, decode)
        first += span.count


def verify(output: str, workers: int = 8, decode: bool = True) -> Report:
    """Checks the output at ``output`` (local or gs://); raises NotAnOutput."""
    start = time.monotonic()
    output = output.rstrip("/") or "/"
    run = load_run(output)
    spans, problems = load_spans(output)
    listing = list_output(output)
    problems += listing.extra
    if spans is None:
        return Report(output, 0, 0, 0, time.monotonic() - start, problems)
    planned = {s.shard for s in spans}
    for shard in sorted(listing.tars - planned):
        problems.append(Problem(None, None, "extra", f"extra file: {shard_name(shard)}.tar "
                                f"(shard not in the plan)"))
    for shard in sorted(listing.indexes - planned - listing.tars):
        problems.append(Problem(shard_name(shard), None, "orphan-index", f"orphan index: "
                                f"{layout.INDEX_DIR}/{shard_name(shard)}.parquet has no tar "
                                f"(and is not in the plan)"))
    modalities = frozenset(run.get("modalities") or ())
    checked = samples = read = 0
    for result in imap(check_shard, _jobs(output, spans, listing, modalities, decode), workers):
        problems += result.problems
        checked, samples, read = (checked + result.checked, samples + result.samples,
                                  read + result.bytes)
    return Report(output, checked, samples, read, time.monotonic() - start, problems)


# ------------------------------------------------------------------------------ the CLI

def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="an actprep output folder (local or gs://)")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help="shards checked at once (default min(8, cores))")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-decode", action="store_true",
                        help="skip decoding members (JPEG, .npy, .json, .cls): structure, "
                        "headers, counts and sha256 only")


def add_verify_parser(sub) -> None:
    """Registers ``actprep verify`` on the CLI's subparsers."""
    parser = sub.add_parser("verify", help="read every shard of an output and check it "
                            "against its index and plan; exit 1 on any problem")
    add_arguments(parser)
    parser.set_defaults(func=cmd_verify)


def cmd_verify(parser: argparse.ArgumentParser, args: argparse.Namespace,
               beam_args: list[str]) -> int:
    if beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        report = verify(args.output, args.workers, decode=not args.no_decode)
    except NotAnOutput as exc:
        print(f"actprep verify: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), sort_keys=True) if args.json else report.render_text())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``actprep verify`` on its own (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="actprep verify")
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    return cmd_verify(parser, args, rest)


if __name__ == "__main__":
    sys.exit(main())
