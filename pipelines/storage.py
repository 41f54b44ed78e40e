"""File access through Beam's FileSystems, so local paths and gs:// URIs work alike."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import IO, Iterator

from apache_beam.io.filesystems import FileSystems


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def is_local(path: str) -> bool:
    return "://" not in path


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    """The whole file. A missing file raises FileNotFoundError naming it, whichever the
    filesystem (GCS only notices at the first read, with its own exception)."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return f.read()
    except Exception:
        if not exists(path):
            raise FileNotFoundError(f"{path}: file not found") from None
        raise


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8-sig")


def read_text_if_exists(path: str) -> str | None:
    """The file's text, or None when there is no such file: one request when it exists
    (a checkpoint on a resumed run), not an existence check and then a read."""
    try:
        return read_text(path)
    except FileNotFoundError:
        return None


def makedirs(path: str) -> None:
    """Creates a local folder (object stores have none to create)."""
    if path and is_local(path):
        os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO[bytes]]:
    """A writable stream whose content appears at ``path`` only once it is complete
    (written under a unique temporary name, then renamed)."""
    head, sep, name = path.rpartition("/")
    makedirs(head)
    # Hidden temporary name: shard globs and Parquet dataset discovery skip it.
    tmp = f"{head}{sep}.{name}.tmp-{uuid.uuid4().hex[:12]}"
    stream = FileSystems.create(tmp, mime_type="application/octet-stream",
                                compression_type="uncompressed")
    try:
        yield stream
        stream.close()
    except BaseException:
        stream.close()
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        raise
    if exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def drop_temporaries(folder: str) -> list[str]:
    """Deletes the temporaries ``atomic_writer`` left directly in ``folder`` when its
    process was killed; only safe while no writer is running there (the run lock)."""
    found = FileSystems.match([join(folder, ".*.tmp-*")])[0].metadata_list
    paths = [m.path for m in found]
    delete(paths)
    return paths


def write_atomic(path: str, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def delete(paths: list[str]) -> None:
    present = [p for p in paths if exists(p)]
    if present:
        FileSystems.delete(present)


def list_files(root: str) -> list[str]:
    """Every file under ``root``, as root-relative POSIX paths."""
    root = root.rstrip("/")
    if is_local(root):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video root {root} is not a directory")
        out = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in filenames]
        return out
    found = [m.path[len(root) + 1:] for m in FileSystems.match([root + "/**"])[0].metadata_list]
    if not found:  # an object store has no empty folders: a mistyped root
        raise FileNotFoundError(f"video root {root}: no files under it")
    return found


def files_in(folder: str) -> list[str]:
    """Full paths of every file under ``folder`` (hidden temporaries included); [] when
    there is no such folder."""
    folder = folder.rstrip("/")
    if is_local(folder):
        return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    return [m.path for m in FileSystems.match([folder + "/**"])[0].metadata_list]


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file path for ``path``: itself when local, else a temporary download."""
    if is_local(path):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with FileSystems.open(path, compression_type="uncompressed") as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.flush()
        yield tmp.name
