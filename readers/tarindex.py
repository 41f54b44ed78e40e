"""Byte ranges of samples in a shard tar, and the members inside one sample's bytes.

A sample's members are consecutive in the tar (docs/FORMAT.md), so one range per sample
suffices: ``[tar_offset, tar_offset + tar_bytes)`` from the Parquet index, written at commit.
For outputs written before those columns existed, ``shard_ranges`` finds them by reading the tar's headers once (local: seeking from header to
header; remote: one streamed read), cached in memory per process and, with a cache folder,
in a small ``.npy`` sidecar there.

The parser reads the tar headers actprep writes (POSIX/pax, ustar headers) with plain byte
slicing, several times faster per member than ``tarfile``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import BinaryIO, Iterator

import numpy as np

from actprep.readers import sources
from actprep.schemas.sample import member_key
from actprep.schemas.tarformat import BLOCK, pax_records

_ZERO = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_PAX, _PAX_GLOBAL, _GNU_NAME = b"x", b"g", b"L"


class TarFormatError(ValueError):
    """Bytes that are not the tar members they should be (a stale index, a damaged tar)."""


def _number(field: bytes) -> int:
    """A numeric header field: octal ASCII, or base-256 when its first byte has the high bit."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header (path and size matter)."""
    try:
        return pax_records(data)
    except ValueError as exc:
        raise TarFormatError(str(exc)) from None


def _header(block: bytes, pos: int) -> tuple[bytes, int, bytes]:
    """(name, size, type) of the ustar header block at byte ``pos``."""
    if block[257:262] != b"ustar":
        raise TarFormatError(f"no tar header at byte {pos}")
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    return name, _number(block[124:136]), block[156:157]


def _member_name(pax: dict[str, str], name: bytes) -> str:
    """A member's name: its pax ``path`` when it has one, else its (long) header name."""
    return pax.get("path") or name.decode("utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


def iter_members(buf: bytes) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, data size) of each regular member in ``buf``, a run of whole
    tar members (a sample's bytes, or a whole tar: a zero block ends it)."""
    buf = buf if isinstance(buf, bytes) else bytes(buf)
    pos, end = 0, len(buf)
    long_name: bytes | None = None
    pax: dict[str, str] = {}
    while pos + BLOCK <= end:
        block = buf[pos:pos + BLOCK]
        if block == _ZERO:
            return
        name, size, kind = _header(block, pos)
        data = pos + BLOCK
        size = int(pax.get("size", size))
        if data + size > end:
            raise TarFormatError(f"member {name!r} at byte {pos} runs past the bytes read")
        if kind == _PAX:
            pax = _pax(buf[data:data + size])
        elif kind == _GNU_NAME:
            long_name = buf[data:data + size].rstrip(b"\0")
        elif kind == _PAX_GLOBAL:
            pass
        else:
            if kind in _REGULAR:
                yield _member_name(pax, long_name or name), data, size
            pax, long_name = {}, None
        pos = data + _padded(size)
    if pos != end:
        raise TarFormatError(f"the bytes end inside a member (at byte {pos} of {end})")


def scan(stream: BinaryIO) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, offsets, byte counts) of the samples of a whole tar, reading only headers
    (data is seeked over). A sample's range runs from its first member's first header
    (a pax header when there is one) to the end of its last member's padding."""
    keys: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    member_start: int | None = None  # first header of the member being read (pax first)
    pax: dict[str, str] = {}
    long_name: bytes | None = None
    while True:
        stream.seek(pos)
        block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise TarFormatError(f"the tar ends at byte {pos + len(block)} without its "
                                 f"end-of-archive blocks")
        if block == _ZERO:
            break
        member_start = pos if member_start is None else member_start
        name, size, kind = _header(block, pos)
        size = int(pax.get("size", size))
        if kind in (_PAX, _GNU_NAME):
            data = stream.read(size)
            if len(data) < size:
                raise TarFormatError(f"the tar ends inside a header at byte {pos}")
            if kind == _PAX:
                pax = _pax(data)
            else:
                long_name = data.rstrip(b"\0")
        elif kind != _PAX_GLOBAL:
            key = member_key(_member_name(pax, long_name or name))
            end = pos + BLOCK + _padded(size)
            if keys and keys[-1] == key:
                ends[-1] = end
            else:
                keys.append(key)
                starts.append(member_start)
                ends.append(end)
            member_start, pax, long_name = None, {}, None
        pos += BLOCK + _padded(size)
    offsets = np.asarray(starts, np.int64)
    return keys, offsets, np.asarray(ends, np.int64) - offsets


_MEMORY: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def _sidecar(cache_dir: str, url: str, tar_size: int) -> str:
    digest = hashlib.sha256(url.encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"{digest}-{tar_size}.npy")


def shard_ranges(url: str, keys: list[str], cache_dir: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, byte counts) of the samples ``keys`` (the shard's ok rows, in index
    order) in the tar at ``url``, for outputs whose index lacks them: from this process's
    memory, from ``cache_dir`` (keyed by URL and tar size), or by scanning the tar's
    headers once. A tar whose samples are not ``keys`` raises a ValueError naming it."""
    tar_size = sources.size(url)
    found = _MEMORY.get((url, tar_size))
    sidecar = _sidecar(cache_dir, url, tar_size) if cache_dir else None
    if found is None and sidecar and os.path.exists(sidecar):
        ranges = np.load(sidecar, allow_pickle=False)
        if ranges.shape == (len(keys), 2):
            found = (ranges[:, 0].copy(), ranges[:, 1].copy())
    if found is None:
        with sources.open_stream(url) as stream:
            found_keys, offsets, nbytes = scan(stream)
        if found_keys != list(keys):
            missing = sorted(set(keys) - set(found_keys))[:3]
            extra = sorted(set(found_keys) - set(keys))[:3]
            raise ValueError(f"{url}: its samples are not the ok rows of its index "
                             f"({len(found_keys)} in the tar, {len(keys)} in the index; "
                             f"missing {missing}, unindexed {extra}): run actprep verify")
        found = (offsets, nbytes)
        if sidecar:
            _save(sidecar, np.stack(found, axis=1))
    _MEMORY[(url, tar_size)] = found
    return found


def _save(path: str, ranges: np.ndarray) -> None:
    """Writes the sidecar atomically (temp name, rename): readers racing on it see a
    whole file or none."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tarindex-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, ranges, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
