"""A strict streaming tar reader: every member with its data, one at a time, and how its
headers differ from the writer's (``schemas.sample.tar_info``). Any truncation, bad checksum,
missing end-of-archive blocks or data after them is ``TarCorrupt``: a shard that Python's
``tarfile`` would read leniently is still reported damaged."""
from __future__ import annotations

import dataclasses
import tarfile
from typing import IO, Iterator

from actprep.schemas import sample
from actprep.schemas.tarformat import BLOCK, pax_records

_ZERO_BLOCK = bytes(BLOCK)
_HEADER_FIELDS = ("mode", "mtime", "uid", "gid", "uname", "gname", "type")


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
        return sample.member_key(self.name)

    @property
    def suffix(self) -> str:
        return sample.split_member(self.name)[1]


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
        return sample.member_key(self._last) if self._last else None

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
            data = self._data(size, f"member {name}", sample.member_key(name))
            self._last = name
            yield Member(name, size, _deviations(block, info, pax, name, size), offset,
                         self.offset), data
        self._end()
