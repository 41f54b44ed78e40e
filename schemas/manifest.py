"""Manifest parsing: Kinetics, Moments in Time and generic lists into one row type.

Parsers are pure: they get the manifest's lines (``iter_*``, streamed: a generator of rows)
or its whole text (``read_*``, a list) and a lookup of the files under the video root (listed
by the pipeline through Beam's FileSystems), and give one ``ManifestRow`` per data row.
A malformed file (wrong header, wrong field count) raises ``ManifestError`` naming the
file and line; a row that is well formed but unusable (missing video, unknown label,
duplicate key, path outside the root) carries an ``error`` and becomes a recorded failure.
"""
from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import re
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


def video_stem(rel: str) -> str | None:
    """The file name without extension when ``rel`` has a video extension, else None."""
    stem, ext = posixpath.splitext(posixpath.basename(rel))
    return stem if ext.lower() in VIDEO_EXTENSIONS else None


class VideoIndex:
    """The video files found under the video root, held in memory (small roots, tests; the
    planner uses an SQLite-backed ``VideoLookup`` of bounded memory)."""

    def __init__(self, relpaths: Iterable[str]):
        self.paths = frozenset(p.lstrip("/") for p in relpaths)
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        for rel in sorted(self.paths):
            stem = video_stem(rel)
            if stem is not None:
                self.by_stem[stem].append(rel)

    def find_stem(self, stem: str) -> list[str]:
        return self.by_stem.get(stem, [])

    def __contains__(self, rel: object) -> bool:
        return rel in self.paths


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


def contained_path(path: str, absolute_ok: bool) -> str | None:
    """Normalised path, or None when it escapes the video root."""
    if path.startswith("/") or _URI.match(path):
        return path if absolute_ok else None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


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
        return None, f"video not found: no {stem}.{{{exts}}} under the video root"
    if len(found) > 1:
        return None, f"ambiguous video: {len(found)} files named {stem}.*: {', '.join(found)}"
    return found[0], None


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
        yield _path_row(line, rel, label, split, videos, absolute_ok=False,
                        fallbacks=_mit_fallbacks(rel, split))


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
    keys. Paths are relative to the video root; without a root (videos None) they are used
    as given and existence is checked when the video is opened. ``split`` overrides."""
    if source.endswith((".jsonl", ".json")):
        records = _jsonl_rows(lines, source)
    else:
        records = _csv_rows(lines, source, ["path"])
    for line, rec in records:
        path = str(rec.get("path") or "").strip()
        if not path:
            raise ManifestError(f"{source}:{line}: empty path")
        label = rec.get("label")
        label = None if label in (None, "") else str(label).strip()
        row_split = split or rec.get("split") or None
        yield _path_row(line, path, label, row_split, videos, absolute_ok=videos is None)


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
            yield line, rec


def _path_row(line: int, path: str, label: str | None, split: str | None,
              videos: VideoLookup | None, absolute_ok: bool,
              fallbacks: Iterable[str] = ()) -> ManifestRow:
    rel = contained_path(path, absolute_ok)
    if rel is None:
        return ManifestRow(line, path_key(path.lstrip("/")), None, label, split,
                           f"path {path!r} escapes the video root")
    key = path_key(rel.lstrip("/").split("://", 1)[-1])
    if videos is None:
        return ManifestRow(line, key, rel, label, split)
    for candidate in [rel, *fallbacks]:
        if candidate in videos:
            return ManifestRow(line, key, candidate, label, split)
    return ManifestRow(line, key, None, label, split, f"video not found: {rel} under the video root")


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
