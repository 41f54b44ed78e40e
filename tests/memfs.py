"""An in-memory object store for Beam's FileSystems, scheme ``mem://``.

It behaves like gs:// where that matters to actprep: no directories (a "folder" is a name
prefix), whole-object writes that appear when the stream closes, rename as copy plus delete,
``match`` by prefix listing. Importing this module registers it with Beam (FileSystems finds
every FileSystem subclass). Objects live in one process: use it with the in-memory or
multi-threading DirectRunner, never with worker processes.
"""
from __future__ import annotations

import io
import threading
import time

from apache_beam.io.filesystem import (BeamIOError, CompressedFile, CompressionTypes,
                                       FileMetadata, FileSystem)

_OBJECTS: dict[str, tuple[bytes, float]] = {}
_LOCK = threading.Lock()


def clear() -> None:
    with _LOCK:
        _OBJECTS.clear()


def paths(prefix: str = "mem://") -> list[str]:
    with _LOCK:
        return sorted(p for p in _OBJECTS if p.startswith(prefix))


def put(path: str, data: bytes) -> None:
    with _LOCK:
        _OBJECTS[path] = (bytes(data), time.time())


def get(path: str) -> bytes:
    with _LOCK:
        return _OBJECTS[path][0]


class _Upload(io.BytesIO):
    """A write stream whose object appears, whole, when it is closed (as a GCS upload)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self) -> None:
        if not self.closed:
            put(self._path, self.getvalue())
        super().close()


class MemoryFileSystem(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return "mem"

    def join(self, basepath: str, *paths: str) -> str:
        out = basepath.rstrip("/")
        for part in paths:
            out += "/" + part.strip("/")
        return out

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def has_dirs(self) -> bool:
        return False

    def mkdirs(self, path: str) -> None:
        pass  # an object store has no folders to create

    def _list(self, dir_or_prefix: str):
        with _LOCK:
            items = [(p, len(d), t) for p, (d, t) in _OBJECTS.items()
                     if p.startswith(dir_or_prefix)]
        for path, size, mtime in sorted(items):
            yield FileMetadata(path, size, mtime)

    def _wrap(self, stream, path, compression_type):
        if compression_type == CompressionTypes.AUTO:
            compression_type = CompressionTypes.detect_compression_type(path)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return stream
        return CompressedFile(stream, compression_type)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        return self._wrap(_Upload(path), path, compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        try:
            data = get(path)
        except KeyError:
            raise BeamIOError(f"no such object: {path}", {path: FileNotFoundError(path)})
        return self._wrap(io.BytesIO(data), path, compression_type)

    def copy(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names):
            try:
                put(dst, get(src))
            except KeyError as exc:
                errors[(src, dst)] = exc
        if errors:
            raise BeamIOError("copy failed", errors)

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path: str) -> bool:
        with _LOCK:
            return path in _OBJECTS

    def size(self, path: str) -> int:
        return len(get(path))

    def last_updated(self, path: str) -> float:
        with _LOCK:
            return _OBJECTS[path][1]

    def checksum(self, path: str) -> str:
        return str(len(get(path)))

    def metadata(self, path: str) -> FileMetadata:
        with _LOCK:
            if path not in _OBJECTS:
                raise BeamIOError(f"no such object: {path}", {path: FileNotFoundError(path)})
            data, mtime = _OBJECTS[path]
        return FileMetadata(path, len(data), mtime)

    def delete(self, paths) -> None:
        errors = {}
        with _LOCK:
            for path in paths:
                if _OBJECTS.pop(path, None) is None:
                    # a "folder": every object under it, as GCS's recursive delete
                    under = [p for p in _OBJECTS if p.startswith(path.rstrip("/") + "/")]
                    if not under:
                        errors[path] = FileNotFoundError(path)
                    for p in under:
                        del _OBJECTS[p]
        if errors:
            raise BeamIOError("delete failed", errors)
