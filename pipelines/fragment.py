"""Tar streams of sample members: per-video fragments and the shards built from them."""
from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from typing import IO, Iterator

from actprep.schemas.sample import TAR_FORMAT, tar_info


class SampleWriter:
    """Streams one sample's members into a tar, counting members and bytes and hashing
    names and data in order (the index's ``sample_sha256``)."""

    def __init__(self, stream: IO[bytes]):
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=TAR_FORMAT)
        self._sha = hashlib.sha256()
        self.members = 0
        self.bytes = 0

    def add(self, name: str, data: bytes) -> None:
        self._tar.addfile(tar_info(name, len(data)), io.BytesIO(data))
        self._sha.update(name.encode() + b"\0")
        self._sha.update(data)
        self.members += 1
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        self._tar.close()

    def abort(self) -> None:
        abort_tar(self._tar)


@contextlib.contextmanager
def sample_writer(stream: IO[bytes]) -> Iterator[SampleWriter]:
    """A SampleWriter that is closed on success and aborted on error."""
    writer = SampleWriter(stream)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.close()


def copy_members(source: IO[bytes], target: tarfile.TarFile) -> int:
    """Appends every member of the tar stream ``source`` to ``target`` with normalised
    headers, streaming (memory does not grow with the sample). Returns the member count."""
    count = 0
    with tarfile.open(fileobj=source, mode="r|") as src:
        for member in src:
            if not member.isfile():
                raise ValueError(f"fragment member {member.name} is not a regular file")
            target.addfile(tar_info(member.name, member.size), src.extractfile(member))
            count += 1
    return count


def open_shard(stream: IO[bytes]) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="w|", format=TAR_FORMAT)


@contextlib.contextmanager
def shard_writer(stream: IO[bytes]) -> Iterator[tarfile.TarFile]:
    """A shard's tar stream on ``stream``: closed (end blocks written) on success, aborted
    on error."""
    tar = open_shard(stream)
    try:
        yield tar
    except BaseException:
        abort_tar(tar)
        raise
    tar.close()


def abort_tar(tar: tarfile.TarFile) -> None:
    """Drops a tar being written without its end blocks (its stream is being discarded);
    otherwise tarfile would try to flush into a closed stream when collected."""
    tar.closed = True
    tar.fileobj.closed = True  # tarfile's internal _Stream
