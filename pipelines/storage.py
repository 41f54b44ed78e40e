"""File access through Beam's FileSystems, so local paths and gs:// URIs work alike."""
from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tempfile
import uuid
from typing import IO, Iterator, NamedTuple

from apache_beam.io.filesystems import FileSystems

from actprep.schemas.manifest import (Refused, escape_reason, is_within, judge,
                                      local_refusal, printable, resolve, type_refusal)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def is_local(path: str) -> bool:
    return "://" not in path


def unopenable(path: str) -> str | None:
    """Why this installation cannot open ``path`` (a scheme no Beam filesystem here serves,
    gs:// without Beam's gcp extras), said for a user; None when it can."""
    if "://" not in path:
        return None
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        scheme = path.split("://", 1)[0]
        extra = (": they need Beam's Google Cloud extras, pip install 'actprep[gcp]'"
                 if scheme == "gs" else "")
        return f"this installation cannot open {scheme}:// paths{extra}"
    return None


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
    """Every file under ``root``, as root-relative POSIX paths; those that must not be read
    (outside the root by their real path, not regular files) as ``Refused`` paths."""
    root = root.rstrip("/")
    if is_local(root):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video root {root} is not a directory")
        return list(walk_files(root))
    found = [object_entry(root, m.path[len(root) + 1:])
             for m in FileSystems.match([root + "/**"])[0].metadata_list]
    if not found:  # an object store has no empty folders: a mistyped root
        raise FileNotFoundError(f"video root {root}: no files under it")
    return found


def object_entry(root: str, rel: str) -> str:
    """An object's name under ``root`` as listed: ``Refused`` when a '..' in it climbs
    out (an object store has no symlinks: the name's text is all there is to check)."""
    if ".." not in rel:
        return rel
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        return Refused(rel, escape_reason(f"{root}/{rel}"))
    return rel


class _Folder(NamedTuple):
    """A folder to walk: its path under the root, its real path, and the real paths of
    the folders it was reached through (a link back to one of them is a loop)."""

    rel: str
    real: str
    above: frozenset[str]


def walk_files(root: str) -> Iterator[str]:
    """Every file under the local folder ``root`` as root-relative POSIX paths, streamed
    (no folder's names are held). Links are followed while they stay inside the root's
    real path: a link to a file outside, or to a folder outside (listed as 'rel/', not
    walked), a non-regular file (FIFO, device, socket) come as ``Refused`` paths; a link
    back to a folder it is in is not followed again. Only links cost system calls
    (``resolve``: 3 on Linux); plain files and folders are judged by their directory entry."""
    real_root = os.path.realpath(root)
    pending = [_Folder("", real_root, frozenset())]
    while pending:
        folder = pending.pop()
        yield from _folder_files(root, folder, real_root, pending)


def _folder_files(root: str, folder: _Folder, real_root: str,
                  pending: list[_Folder]) -> Iterator[str]:
    """The files of one folder; its sub-folders go to ``pending``. An unreadable folder
    or entry is skipped, as os.walk does."""
    try:
        entries = os.scandir(os.path.join(root, folder.rel) if folder.rel else root)
    except OSError:
        return
    above = folder.above | {folder.real}
    with entries:
        while True:
            try:
                entry = next(entries)
            except (StopIteration, OSError):
                break
            rel = f"{folder.rel}/{entry.name}" if folder.rel else entry.name
            try:
                listed = _entry(entry, rel, folder.real, above, real_root, pending)
            except OSError:
                continue
            if listed is not None:
                yield listed


def _entry(entry: os.DirEntry, rel: str, real: str, above: frozenset[str], real_root: str,
           pending: list[_Folder]) -> str | None:
    """What one directory entry lists: a path (maybe ``Refused``), or None for a folder
    (queued in ``pending`` unless it is a loop). OSError: skip the entry."""
    if entry.is_symlink():
        try:
            target, mode = resolve(os.path.join(real, entry.name))
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            return Refused(rel, f"a symbolic link loop: {printable(entry.path)}")
        if mode is None or not stat.S_ISDIR(mode):
            reason = judge(target, mode, real_root)
            return rel if reason is None else Refused(rel, reason)
        if not is_within(target, real_root):
            return Refused(rel + "/", escape_reason(target))
        if target not in above:
            pending.append(_Folder(rel, target, above))
        return None
    if entry.is_dir(follow_symlinks=False):
        pending.append(_Folder(rel, os.path.join(real, entry.name), above))
        return None
    if entry.is_file(follow_symlinks=False):
        return rel
    mode = entry.stat(follow_symlinks=False).st_mode
    return Refused(rel, type_refusal(mode) or "not a regular file")


def files_in(folder: str) -> list[str]:
    """Full paths of every file under ``folder`` (hidden temporaries included); [] when
    there is no such folder."""
    folder = folder.rstrip("/")
    if is_local(folder):
        return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    return [m.path for m in FileSystems.match([folder + "/**"])[0].metadata_list]


class Unreadable(Exception):
    """A video that must not be read; the message says why (a recorded failure)."""


def readable(path: str, root: str | None) -> str:
    """The path to read for the video ``path``, checked at the moment it is opened (a
    symlink may have changed since the root was listed): locally the file's real path,
    which must lie inside ``root``'s real path and be a regular file (it is only stat'ed:
    a FIFO would block an open); on an object store ``path`` itself, which must lie under
    ``root`` in its text and exist. ``root`` None: the root is not checked. Raises
    Unreadable."""
    if not is_local(path):
        if root is not None and _outside(path, root):
            raise Unreadable(escape_reason(path))
        if not exists(path):
            raise Unreadable(f"file not found: {path}")
        return path
    real, reason = local_refusal(path, os.path.realpath(root) if root is not None else "/")
    if reason is not None:
        raise Unreadable(reason)
    if not os.path.isfile(real):
        raise Unreadable(f"file not found: {path}")
    return real


def _outside(path: str, root: str) -> bool:
    """Whether the object-store ``path`` lies outside the folder ``root``, in its text."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix) or len(path) == len(prefix):
        return True
    return isinstance(object_entry(root.rstrip("/"), path[len(prefix):]), Refused)


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
