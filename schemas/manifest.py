"""Manifest parsing: Kinetics, Moments in Time and generic lists into one row type.

Parsers are pure: they get the manifest's lines (``iter_*``, streamed: a generator of rows)
or its whole text (``read_*``, a list) and a lookup of the files under the video root (listed
by the pipeline through Beam's FileSystems), and give one ``ManifestRow`` per data row.
A malformed file (wrong header, wrong field count) raises ``ManifestError`` naming the
file and line; a row that is well formed but unusable (missing video, unknown label,
duplicate key, path outside the root) carries an ``error`` and becomes a recorded failure.

The video root is a boundary: a row's video must lie inside it lexically (no '..' out of it,
no absolute path or URI elsewhere) and, locally, by its real path (symlinks resolved) and be
a regular file. The listing marks the files that fail the second test (``Refused``); without
a video root the manifest's folder is the root and its rows are checked here
(``ManifestFolder``), the one place the parsers touch the filesystem.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import posixpath
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Protocol

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
DATASETS = ("kinetics", "mit", "generic")
MAX_KEY_LENGTH = 160
_KEY_OK = re.compile(r"^[A-Za-z0-9_+\-]+$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_+\-]")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")
MIT_SPLIT_FOLDERS = {"train": "training", "val": "validation"}


class ManifestError(ValueError):
    """The manifest file itself is malformed; the message names file and line."""


@dataclass(frozen=True)
class ManifestRow:
    """One data row of a manifest, resolved against the video root."""

    line: int  # 1-based line in the manifest file
    key: str  # sample key: no dots, no slashes
    path: str | None  # video path relative to the root (or absolute), None if not found
    label: str | None  # class name; None for unlabelled (test) rows
    split: str | None
    error: str | None = None  # why this row cannot be processed


class VideoLookup(Protocol):
    """What the parsers ask of the files under the video root (root-relative POSIX paths)."""

    def find_stem(self, stem: str) -> list[str]:
        """The video files (``VIDEO_EXTENSIONS``, any case) named ``stem``, sorted."""

    def __contains__(self, rel: object) -> bool:
        """Whether the file ``rel`` is there."""

    def refusal(self, rel: str) -> str | None:
        """Why the file ``rel`` must not be read (``Refused``: it or a folder on its way), or
        None."""

    def links_out(self) -> str:
        """'' or a note for 'video not found' messages: folders behind links leading out of
        the root were not searched."""


class Refused(str):
    """A listed path that must not be read, with why (``reason``): its real path is outside
    the video root ("escapes the video root: REAL"), or it is not a regular file. A folder
    behind a link leading out of the root is listed, not walked, as 'rel/' (ending in '/').
    A str, so that a listing stays a stream of root-relative paths."""

    reason: str

    def __new__(cls, rel: str, reason: str) -> "Refused":
        listed = super().__new__(cls, rel)
        listed.reason = reason
        return listed


def listed_refusal(listed: str) -> str | None:
    """The reason a listed path carries (``Refused``), else None."""
    return getattr(listed, "reason", None)


def escape_reason(real: str) -> str:
    """The failure of a video whose real path ``real`` lies outside the video root."""
    return f"escapes the video root: {printable(real)}"


def printable(path: str) -> str:
    """``path`` with bytes of a file name that are not UTF-8 (surrogate escapes) shown as
    '\\xNN': a reason is stored and written as UTF-8 text."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_within(path: str, root: str) -> bool:
    """Whether the normalised absolute path (or URI) ``path`` is ``root`` or lies below it."""
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, by its ``st_mode``."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def type_refusal(mode: int) -> str | None:
    """Why a file of ``st_mode`` ``mode`` must not be opened (a FIFO would block), or None."""
    return None if stat.S_ISREG(mode) else f"not a regular file ({_kind(mode)})"


def judge(real: str, mode: int | None, real_root: str) -> str | None:
    """Why the file at real path ``real`` (symlinks resolved), of ``st_mode`` ``mode``
    (None: missing, reported where it is opened), must not be read: it lies outside
    ``real_root`` (resolved too) or is not a regular file. None when it may be read."""
    if not is_within(real, real_root):
        return escape_reason(real)
    return None if mode is None else type_refusal(mode)


_O_PATH = getattr(os, "O_PATH", 0)


def resolve(path: str) -> tuple[str, int | None]:
    """``path``'s real path (symlinks resolved) and its ``st_mode``, None when it is
    missing; OSError for another failure (ELOOP: a link loop). Linux resolves it in the
    kernel: an O_PATH descriptor reads nothing (a FIFO does not block) and /proc names
    what it reached, 3 system calls where os.path.realpath makes one per path component."""
    if _O_PATH:
        try:
            fd = os.open(path, _O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return os.path.realpath(path), None
        try:
            return os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_mode
        except OSError:
            pass  # no /proc: resolved in Python below
        finally:
            os.close(fd)
    real = os.path.realpath(path)
    try:
        return real, os.stat(real).st_mode
    except FileNotFoundError:
        return real, None


def local_refusal(path: str, real_root: str) -> tuple[str, str | None]:
    """The real path of the local file ``path`` and why it must not be read (``judge``;
    or a link loop), or None, also when it cannot be looked at (reported where opened).
    Never opens it for reading."""
    try:
        real, mode = resolve(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return path, f"a symbolic link loop: {printable(path)}"
        real, mode = os.path.realpath(path), None
    return real, judge(real, mode, real_root)


def refusal_below(rel: str, refused: dict[str, str]) -> str | None:
    """Why ``rel`` must not be read, from the refusals ``refused`` found for it and its
    folders (``lookup_names``): its own, or that of a folder behind a link leading out of
    the root, whose reason ends in the folder's real path and so extends to ``rel``'s."""
    if rel in refused:
        return refused[rel]
    for folder in lookup_names(rel)[1:]:
        if folder in refused:
            return f"{refused[folder]}/{printable(rel[len(folder):])}"
    return None


def lookup_names(rel: str) -> list[str]:
    """``rel`` and the folders it is in, as listed folders are ('a/', 'a/b/')."""
    parts = rel.split("/")[:-1]
    return [rel] + ["/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)]


def links_out_note(count: int, first: tuple[str, str] | None) -> str:
    """The ``VideoLookup.links_out`` note for ``count`` folders not walked, ``first``
    (by name) the path and reason of one."""
    if not count or first is None:
        return ""
    return (f"; {count} linked folder(s) under it lead out of it and were not searched, "
            f"e.g. {first[0]} ({first[1]})")


def video_stem(rel: str) -> str | None:
    """The file name without extension when ``rel`` has a video extension, else None."""
    stem, ext = posixpath.splitext(posixpath.basename(rel))
    return stem if ext.lower() in VIDEO_EXTENSIONS else None


class VideoIndex:
    """The video files found under the video root, held in memory (small roots, tests; the
    planner uses an SQLite-backed ``VideoLookup`` of bounded memory)."""

    def __init__(self, relpaths: Iterable[str]):
        listed = [(p.lstrip("/"), listed_refusal(p)) for p in relpaths]
        self.paths = frozenset(rel for rel, _ in listed)
        self.refused = {rel: reason for rel, reason in listed if reason is not None}
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        for rel in sorted(self.paths):
            stem = video_stem(rel)
            if stem is not None:
                self.by_stem[stem].append(rel)

    def find_stem(self, stem: str) -> list[str]:
        return self.by_stem.get(stem, [])

    def __contains__(self, rel: object) -> bool:
        return rel in self.paths

    def refusal(self, rel: str) -> str | None:
        return refusal_below(rel, self.refused) if self.refused else None

    def links_out(self) -> str:
        folders = [rel for rel in self.refused if rel.endswith("/")]
        first = min(folders, default=None)
        return links_out_note(len(folders), first and (first, self.refused[first]))


def check_key(key: str) -> str | None:
    """Why ``key`` cannot name a WebDataset sample, or None if it can."""
    if not key:
        return "empty sample key"
    if len(key) > MAX_KEY_LENGTH:
        return f"sample key longer than {MAX_KEY_LENGTH} characters"
    if not _KEY_OK.match(key):
        return f"sample key {key!r} has characters other than letters, digits, '_', '+', '-'"
    return None


def kinetics_key(youtube_id: str, start: int, end: int) -> str:
    """The standard Kinetics clip name without extension."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def path_key(relpath: str) -> str:
    """A sample key from a root-relative path: extension dropped, '/' -> '__',
    other characters that WebDataset keys cannot hold -> '_'."""
    stem = posixpath.splitext(relpath)[0]
    return _KEY_BAD_CHARS.sub("_", stem.replace("/", "__"))


def contained_path(path: str, absolute_ok: bool, root: str | None = None) -> str | None:
    """Normalised path, or None when it escapes the video root: a relative path may not
    climb out of it; an absolute path or URI is refused unless ``absolute_ok``, and then,
    when ``root`` is given, must lie under it (lexically: symlinks are the listing's)."""
    if path.startswith("/") or _URI.match(path):
        if not absolute_ok:
            return None
        if root is None:
            return path
        norm, base = _absolute(path), _absolute(root)
        return norm if norm is not None and base is not None and is_within(norm, base) else None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def _absolute(path: str) -> str | None:
    """A local path made absolute or a URI, normalised ('..' resolved in the text); None
    for a URI whose '..' climbs above its bucket."""
    if not _URI.match(path):
        return os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    norm = posixpath.normpath(rest) if rest else ""
    if norm == ".." or norm.startswith("../"):
        return None
    return f"{scheme}://{norm.lstrip('/')}"


class ManifestFolder:
    """The video root of a manifest read without --video-root: its folder. Nothing is
    listed (a missing video is found when it is opened), but a row's path must lie inside
    it: for a local folder by its real path, as a listed root's files; on an object store
    (no symlinks) by its text."""

    def __init__(self, source: str):
        self.root = posixpath.dirname(source) or "."
        self.real = None if _URI.match(self.root) else os.path.realpath(self.root)

    def place(self, path: str) -> tuple[str | None, str | None]:
        """(the row's path, None), or (the path or None, why it cannot be read)."""
        if self.real is None:
            rel = contained_path(path, True, self.root)
        else:  # a URI is never in a local folder; an absolute path is judged by its real path
            rel = None if _URI.match(path) else contained_path(path, True)
        if rel is None:
            return None, (f"path {path!r} escapes the video root (without --video-root: "
                          f"the manifest's folder {self.root})")
        if self.real is None:
            return rel, None
        return rel, local_refusal(os.path.join(self.root, rel), self.real)[1]


# --------------------------------------------------------------------------- readers


# columns that name a manifest's kind in its header (Moments in Time's has no header)
HEADER_COLUMNS = {"kinetics": ("youtube_id", "time_start", "time_end"), "generic": ("path",)}


def _header_kind(fields: list[str]) -> str | None:
    """The kind of manifest whose header ``fields`` is, if any."""
    names = {f.strip().lower() for f in fields}
    return next((kind for kind, columns in HEADER_COLUMNS.items() if set(columns) <= names),
                None)


def _kind_hint(fields: list[str]) -> str:
    """'; it ...' for a first row that belongs to another kind of manifest."""
    kind = _header_kind(fields)
    if kind:
        return f"; it is a {kind} manifest's header: use --dataset {kind}"
    if fields and fields[0].strip().lower().endswith(VIDEO_EXTENSIONS):
        return "; it looks like a Moments in Time row (that format has no header): use --dataset mit"
    return ""


def _csv_rows(lines: Iterable[str], source: str,
              required: list[str]) -> Iterator[tuple[int, dict]]:
    """Rows of a CSV with a header; every row must have the header's field count."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise ManifestError(f"{source}: the manifest is empty")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            f"{source}:1: header {','.join(header)!r} lacks column(s) {', '.join(missing)}"
            f"{_kind_hint(header)}")
    for fields in reader:
        line = reader.line_num  # the record's last physical line
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise ManifestError(
                f"{source}:{line}: expected {len(header)} fields ({','.join(header)}), "
                f"got {len(fields)}"
            )
        yield line, {h: f.strip() for h, f in zip(header, fields)}


def _int_field(value: str, name: str, source: str, line: int) -> int:
    try:
        number = float(value)
    except ValueError:
        raise ManifestError(f"{source}:{line}: {name} {value!r} is not a number") from None
    if not math.isfinite(number) or number != int(number) or number < 0:
        raise ManifestError(f"{source}:{line}: {name} {value!r} is not a whole number of seconds")
    return int(number)


def iter_kinetics(lines: Iterable[str], source: str, videos: VideoLookup,
                  split: str | None = None) -> Iterator[ManifestRow]:
    """Kinetics-400/600/700 CSV (``label,youtube_id,time_start,time_end,split``; the
    test-split form has no label). Videos are found by their standard name anywhere
    under the root (flat, per-class or per-split folders). ``split`` overrides the rows'."""
    for line, rec in _csv_rows(lines, source, ["youtube_id", "time_start", "time_end"]):
        start = _int_field(rec["time_start"], "time_start", source, line)
        end = _int_field(rec["time_end"], "time_end", source, line)
        key = kinetics_key(rec["youtube_id"], start, end)
        label = rec.get("label") or None
        path, error = _find_by_stem(videos, key)
        yield ManifestRow(line, key, path, label, split or rec.get("split") or None, error)


def read_kinetics(text: str, source: str, videos: VideoLookup) -> list[ManifestRow]:
    """``iter_kinetics`` over a whole text."""
    return list(iter_kinetics(io.StringIO(text), source, videos))


def _find_by_stem(videos: VideoLookup, stem: str) -> tuple[str | None, str | None]:
    found = videos.find_stem(stem)
    if not found:
        exts = "/".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
        return None, (f"video not found: no {stem}.{{{exts}}} under the video root"
                      f"{videos.links_out()}")
    if len(found) > 1:
        return None, f"ambiguous video: {len(found)} files named {stem}.*: {', '.join(found)}"
    return found[0], videos.refusal(found[0])


def iter_mit(lines: Iterable[str], source: str, videos: VideoLookup,
             split: str | None) -> Iterator[ManifestRow]:
    """Moments in Time ``trainingSet.csv`` / ``validationSet.csv``: header-less rows
    ``category/file.mp4,category,agreement,disagreement``. The video is looked up at the
    row's path under the root, or under the release's ``training/`` / ``validation/``."""
    for line, fields in enumerate(csv.reader(lines), 1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) < 2:
            raise ManifestError(
                f"{source}:{line}: expected 'category/file.mp4,category,agreement,"
                f"disagreement', got {len(fields)} field(s)"
            )
        if _header_kind(fields):  # a header is never a Moments in Time row: wrong --dataset
            raise ManifestError(f"{source}:{line}: {','.join(fields)!r} is not a Moments in "
                                f"Time row (category/file.mp4,category,...){_kind_hint(fields)}")
        rel, label = fields[0].strip(), fields[1].strip()
        yield _path_row(line, rel, label, split, videos, fallbacks=_mit_fallbacks(rel, split))


def read_mit(text: str, source: str, videos: VideoLookup, split: str | None) -> list[ManifestRow]:
    """``iter_mit`` over a whole text."""
    return list(iter_mit(io.StringIO(text), source, videos, split))


def _mit_fallbacks(rel: str, split: str | None) -> list[str]:
    folder = MIT_SPLIT_FOLDERS.get(split or "")
    folders = [folder] if folder else list(MIT_SPLIT_FOLDERS.values())
    return [f"{f}/{rel}" for f in folders]


def iter_generic(lines: Iterable[str], source: str, videos: VideoLookup | None,
                 split: str | None = None) -> Iterator[ManifestRow]:
    """A generic list, CSV with header ``path,label[,split]`` or JSON Lines with the same
    keys. Paths are relative to the video root; without a root (videos None) the
    manifest's folder is the root (``ManifestFolder``) and a video's existence is checked
    when it is opened. ``split`` overrides."""
    if source.endswith((".jsonl", ".json")):
        records = _jsonl_rows(lines, source)
    else:
        records = _csv_rows(lines, source, ["path"])
    folder = ManifestFolder(source) if videos is None else None
    for line, rec in records:
        path = (rec.get("path") or "").strip()
        if not path:
            raise ManifestError(f"{source}:{line}: empty path")
        label = (rec.get("label") or "").strip() or None
        row_split = split or rec.get("split") or None
        if folder is not None:
            yield _folder_row(line, path, label, row_split, folder)
        else:
            yield _path_row(line, path, label, row_split, videos)


def read_generic(text: str, source: str, videos: VideoLookup | None) -> list[ManifestRow]:
    """``iter_generic`` over a whole text."""
    return list(iter_generic(io.StringIO(text), source, videos))


def _jsonl_rows(lines: Iterable[str], source: str) -> Iterator[tuple[int, dict]]:
    """JSON objects, one a line. Lines are numbered as ``str.splitlines`` splits: each
    '\n'-ended chunk is split again, so the numbers match those of the whole text."""
    line = 0
    for chunk in lines:
        for raw in chunk.splitlines():
            line += 1
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{source}:{line}: not valid JSON: {exc.msg}") from None
            if not isinstance(rec, dict) or "path" not in rec:
                raise ManifestError(f"{source}:{line}: expected an object with a 'path' key")
            _check_types(rec, source, line)
            yield line, rec


# the JSON types a JSON Lines record's fields may have: a number or list is no path or label
_JSON_FIELDS = {"path": (str,), "label": (str, type(None)), "split": (str, type(None))}
_JSON_TYPE_NAMES = {str: "a string", type(None): "null", bool: "a boolean", int: "a number",
                    float: "a number", list: "an array", dict: "an object"}


def _check_types(rec: dict, source: str, line: int) -> None:
    """Raises ManifestError when a field of ``_JSON_FIELDS`` has another JSON type (it
    would otherwise be turned into a string: 3 into the class '3')."""
    for name, types in _JSON_FIELDS.items():
        if name in rec and not isinstance(rec[name], types):
            wanted = " or ".join(_JSON_TYPE_NAMES[t] for t in types)
            raise ManifestError(f"{source}:{line}: {name!r} is "
                                f"{_JSON_TYPE_NAMES.get(type(rec[name]), 'not JSON')}, "
                                f"expected {wanted}")


def _path_row(line: int, path: str, label: str | None, split: str | None,
              videos: VideoLookup, fallbacks: Iterable[str] = ()) -> ManifestRow:
    """The row of a path under a listed video root: found (at ``path`` or a fallback), or
    why not (outside the root, refused by the listing, missing)."""
    rel = contained_path(path, absolute_ok=False)
    if rel is None:
        return ManifestRow(line, path_key(path.lstrip("/")), None, label, split,
                           f"path {path!r} escapes the video root")
    key = path_key(rel)
    candidates = [rel, *fallbacks]
    for candidate in candidates:
        if candidate in videos:
            return ManifestRow(line, key, candidate, label, split, videos.refusal(candidate))
    refused = next(filter(None, map(videos.refusal, candidates)), None)  # via a link out
    return ManifestRow(line, key, None, label, split,
                       refused or f"video not found: {rel} under the video root")


def _folder_row(line: int, path: str, label: str | None, split: str | None,
                folder: ManifestFolder) -> ManifestRow:
    """The row of a path without a video root: inside the manifest's folder, or why not."""
    rel, error = folder.place(path)
    key = path_key((rel or path).lstrip("/").split("://", 1)[-1])
    return ManifestRow(line, key, rel, label, split, error)


# --------------------------------------------------------------------------- checks


def check_rows(rows: list[ManifestRow], labels_known: "set[str] | None",
               class_source: str = "") -> list[ManifestRow]:
    """Marks rows with unusable keys, duplicate keys and (against a given class list)
    unknown labels. Earlier errors are kept; the first row of a duplicated key wins."""
    first_line: dict[str, int] = {}
    out = []
    for row in rows:
        error = row.error or check_key(row.key)
        if error is None and row.key in first_line:
            error = f"duplicate key {row.key} (first at line {first_line[row.key]})"
        if error is None and labels_known is not None and row.label is not None \
                and row.label not in labels_known:
            error = f"unknown label {row.label!r} (not in {class_source})"
        first_line.setdefault(row.key, row.line)
        out.append(row if error == row.error else replace(row, error=error))
    return out


def check_sorted(rows: Iterable[ManifestRow], labels_known: "set[str] | None",
                 class_source: str = "") -> Iterator[ManifestRow]:
    """``check_rows`` for rows streamed in (key, line) order, holding one key at a time:
    a key's rows are adjacent, its lowest line first, so that one is the first seen."""
    key: str | None = None
    key_error: str | None = None
    first = 0
    for row in rows:
        if row.key != key:
            key, key_error, first = row.key, check_key(row.key), row.line
            duplicate = None
        else:
            duplicate = f"duplicate key {key} (first at line {first})"
        error = row.error or key_error or duplicate
        if error is None and labels_known is not None and row.label is not None \
                and row.label not in labels_known:
            error = f"unknown label {row.label!r} (not in {class_source})"
        yield row if error == row.error else replace(row, error=error)


def iter_manifest(dataset: str, lines: Iterable[str], source: str,
                  videos: VideoLookup | None, split: str | None = None) -> Iterator[ManifestRow]:
    """Dispatch on the dataset kind (checked at once, before any line is read); ``split``
    overrides or supplies the split."""
    if dataset == "kinetics":
        return iter_kinetics(lines, source, _need(videos, dataset), split)
    if dataset == "mit":
        return iter_mit(lines, source, _need(videos, dataset), split or _mit_split(source))
    if dataset == "generic":
        return iter_generic(lines, source, videos, split)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def read_manifest(dataset: str, text: str, source: str, videos: VideoLookup | None,
                  split: str | None = None) -> list[ManifestRow]:
    """``iter_manifest`` over a whole text."""
    return list(iter_manifest(dataset, io.StringIO(text), source, videos, split))


def _need(videos: VideoLookup | None, dataset: str) -> VideoLookup:
    if videos is None:
        raise ManifestError(f"--video-root is required for {dataset} manifests")
    return videos


def _mit_split(source: str) -> str | None:
    name = posixpath.basename(source).lower()
    return "train" if name.startswith("training") else "val" if name.startswith("validation") else None
