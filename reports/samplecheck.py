"""The checks of one shard's samples as its tar streams by: each member's name, order and
content against the sample layout (``schemas.sample.MEMBERS``), and each sample against its
index row (members, bytes, sha256, byte range, what its fields account for)."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from actprep.reports.problems import Problem
from actprep.reports.tarstream import Member
from actprep.schemas import sample
from actprep.schemas.index import FAILED, OK
from actprep.schemas.sample import MemberKind


def _check_jpeg(data: bytes, channels_wanted: int, row: dict | None) -> str | None:
    """libjpeg decodes truncated or damaged data with a warning only, so a JPEG must also
    start with SOI and end with EOI, as the writer's encoder leaves it."""
    import cv2  # local: importing the CLI does not need it

    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return "is not a complete JPEG (no start or end marker)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return "does not decode as JPEG"
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != channels_wanted:
        return f"has {channels} channels, expected {channels_wanted}"
    if row and row.get("width") is not None and image.shape[:2] != (row["height"], row["width"]):
        return (f"is {image.shape[1]}x{image.shape[0]}, the index says "
                f"{row['width']}x{row['height']}")
    return None


def _npy_expectation(kind: MemberKind, row: dict | None) -> tuple[np.dtype, tuple]:
    """dtype and shape (None: any length) a ``.npy`` member must have: the layout table's,
    with the index row's fields filled in."""
    row = row or {}
    shape = tuple(row.get(size) if isinstance(size, str) else size for size in kind.shape)
    return np.dtype(kind.dtype), shape


def _check_npy(data: bytes, kind: MemberKind, row: dict | None) -> str | None:
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


def check_content(kind: MemberKind, data: bytes, key: str,
                  row: dict | None) -> tuple[str, str] | None:
    """(problem kind, detail) when a member's data is not what its name says; None if fine."""
    if kind.extension == "jpg":
        found = _check_jpeg(data, kind.channels or 3, row)
    elif kind.extension == "npy":
        found = _check_npy(data, kind, row)
    elif kind.extension == "json":
        return ("content", found) if (found := _check_json(data, key)) else None
    else:
        return ("content", found) if (found := _check_cls(data, row)) else None
    return ("decode", found) if found else None


class SampleTally:
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


def _numbering(tally: SampleTally, kind: str, expected: int | None) -> str | None:
    """Problem with the numbered members of family ``kind`` (must be 1..expected)."""
    numbers = sorted(tally.numbers.get(kind, []))
    if numbers != list(range(1, len(numbers) + 1)):
        return f"{kind} members are not numbered 1..{len(numbers)}"
    if expected is not None and len(numbers) != expected:
        return f"{len(numbers)} {kind} members, the index says {expected}"
    return None


def inventory_problems(tally: SampleTally, row: dict, modalities: frozenset[str]) -> list[str]:
    """Members the row's fields do not account for (the layout table's ``counted_by``):
    frames (with ``rgb`` among the run's modalities), flows, raw flows, audio features,
    label, metadata."""
    found = []
    for kind in sample.MEMBERS:
        if kind.numbered:
            wanted = kind.stage in modalities or not modalities
            present = kind.family in tally.numbers
            expected = (row.get(kind.counted_by) or 0) if wanted and (
                present or not kind.optional) else 0
            if kind.stage == "rgb" and not modalities:
                expected = None  # run.json without modalities: numbering checked, not count
            if problem := _numbering(tally, kind.family, expected):
                found.append(problem)
        elif kind.always or kind.counted_by:
            want = kind.always or row.get(kind.counted_by) is not None
            if want != (kind.family in tally.singles):
                found.append(f"{'no' if want else 'unexpected'} .{kind.family} member")
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
        self.tallies: dict[str, SampleTally] = {}
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
        tally = self.tallies.setdefault(key, SampleTally(key))
        tally.start = member.offset if tally.start is None else tally.start
        tally.end = member.end
        tally.add(member.name, data)
        if member.deviations:
            tally.bad_headers += 1
            tally.first_bad_header = tally.first_bad_header or \
                f"{member.name}: {'; '.join(member.deviations)}"
        parsed = sample.parse_suffix(member.suffix)
        if parsed is None:
            self.problem(key, "content", f"unknown member {member.name} (not in the sample "
                         f"layout)")
            return
        self._order(tally, member.name, *parsed)
        if self.decode and (found := check_content(parsed[0], data, key, row)):
            self.problem(key, found[0], f"{member.name} {found[1]}")

    def _order(self, tally: SampleTally, name: str, kind: MemberKind,
               number: int | None) -> None:
        """Records the member and checks it follows the documented order without repeats."""
        rank = kind.rank(number)
        if number is None:
            tally.singles.add(kind.family)
        else:
            tally.numbers.setdefault(kind.family, []).append(number)
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

    def _compare(self, tally: SampleTally, row: dict) -> None:
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
