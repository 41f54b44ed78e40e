"""Where the reader's bytes come from: local paths, or any fsspec URL (``gs://`` with
gcsfs, ``memory://`` in tests). Whole small files (index), ranged reads (one sample),
listings (an output's shards), brace patterns. No Beam, no webdataset.

Remote access needs fsspec (and gcsfs for ``gs://``): ``pip install "actprep[reader-gcs]"``.
"""
from __future__ import annotations

import collections
import os
import posixpath
import threading
from typing import Any, BinaryIO

from braceexpand import braceexpand

OPEN_FILES = 64  # local shard files kept open per process (least recently used closed)


def expand(pattern: str) -> list[str]:
    """A shard pattern as a list: ``::`` joins patterns, each brace-expanded
    (``{000000..000009}``, ``{a,b}``) by ``braceexpand``, as webdataset expands them."""
    return [u for part in pattern.split("::") if part for u in braceexpand(part)]


def is_remote(url: str) -> bool:
    """Whether ``url`` names something read through fsspec (a scheme other than file://)."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a remote URL; a ValueError naming the
    package to install when fsspec or the scheme's implementation is missing."""
    scheme = url.split("://", 1)[0]
    hint = "gcsfs" if scheme in ("gs", "gcs") else f"the fsspec implementation of {scheme}://"
    try:
        import fsspec.core
    except ImportError:
        raise ValueError(f"{url}: reading {scheme}:// URLs needs fsspec and {hint}: "
                         f"pip install \"actprep[reader-gcs]\"") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{url}: cannot open {scheme}:// URLs ({exc}); install {hint} "
                         f"(pip install \"actprep[reader-gcs]\" for gs://)") from None


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(local_path(base), *parts)


def dirname(url: str) -> str:
    return posixpath.dirname(url) if is_remote(url) else os.path.dirname(local_path(url))


def basename(url: str) -> str:
    return posixpath.basename(url) if is_remote(url) else os.path.basename(local_path(url))


def exists(url: str) -> bool:
    if is_remote(url):
        fs, path = filesystem(url)
        return fs.exists(path)
    return os.path.exists(local_path(url))


def is_dir(url: str) -> bool:
    if is_remote(url):
        fs, path = filesystem(url)
        return fs.isdir(path)
    return os.path.isdir(local_path(url))


def size(url: str) -> int:
    if is_remote(url):
        fs, path = filesystem(url)
        return int(fs.size(path))
    return os.path.getsize(local_path(url))


def read_file(url: str) -> bytes:
    """The whole file (an index file: small)."""
    if is_remote(url):
        fs, path = filesystem(url)
        return fs.cat_file(path)
    with open(local_path(url), "rb") as f:
        return f.read()


def glob(folder: str, pattern: str) -> list[str]:
    """Names in ``folder`` matching the shell ``pattern`` (one listing), as full URLs."""
    if is_remote(folder):
        fs, path = filesystem(folder)
        found = fs.glob(posixpath.join(path.rstrip("/"), pattern))
        return sorted(join(folder, posixpath.basename(p)) for p in found)
    import fnmatch

    folder = local_path(folder)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if fnmatch.fnmatchcase(n, pattern))


def open_stream(url: str, block_size: int = 8 << 20) -> BinaryIO:
    """A seekable binary stream; remote ones read ahead in ``block_size`` chunks, so
    a forward scan of headers is a streamed read of the file."""
    if is_remote(url):
        fs, path = filesystem(url)
        return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
    return open(local_path(url), "rb")


class RangeReader:
    """Ranged reads, one call per sample: ``os.pread`` on local files (kept open; beyond
    ``OPEN_FILES`` the least recently used idle one is closed), ``cat_file(start, end)`` on
    fsspec filesystems (one request). Safe to call from read-ahead threads. Not shared
    across processes: each DataLoader worker makes its own."""

    def __init__(self) -> None:
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._busy: collections.Counter[int] = collections.Counter()
        self._fs: dict[str, tuple[Any, str]] = {}
        self._lock = threading.Lock()

    def read(self, url: str, start: int, length: int) -> bytes:
        if is_remote(url):
            with self._lock:
                if url not in self._fs:
                    self._fs[url] = filesystem(url)
                fs, path = self._fs[url]
            data = fs.cat_file(path, start=start, end=start + length)
        else:
            fd = self._acquire(url)
            try:
                data = os.pread(fd, length, start)
            finally:
                self._release(fd)
        if len(data) != length:
            raise ValueError(f"{url}: bytes {start}..{start + length} are past its end "
                             f"({len(data)} read): the index does not match the tar")
        return data

    def _acquire(self, url: str) -> int:
        with self._lock:
            fd = self._fds.pop(url, None)
            if fd is None:
                fd = os.open(local_path(url), os.O_RDONLY)
            self._fds[url] = fd  # most recently used last
            self._busy[fd] += 1
            return fd

    def _release(self, fd: int) -> None:
        with self._lock:
            self._busy[fd] -= 1
            if not self._busy[fd]:
                del self._busy[fd]
            if len(self._fds) > OPEN_FILES:
                idle = [u for u, f in self._fds.items() if f not in self._busy]
                for url in idle[:len(self._fds) - OPEN_FILES]:
                    os.close(self._fds.pop(url))

    def close(self) -> None:
        with self._lock:
            while self._fds:
                os.close(self._fds.popitem()[1])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
