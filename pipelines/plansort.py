"""Planning's scratch space: the manifest streamed, the video root's listing and the rows in
a temporary SQLite database, so planning holds neither the listing nor the rows in memory.

Held at any time: one read chunk of the manifest, SQLite's page cache (``CACHE_KIB``) and
its sorters (about the same each), one row. A root of 650k files and a manifest of 800k rows
cost disk in a temporary folder, not RAM; each step is one pass, a few sorts or an indexed
lookup. The rows are checked in (key, line) order (``check_stored``) and read back in plan
order (``placed_rows``: SQL window functions over the stored rows).
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import sqlite3
import tempfile
from typing import IO, Callable, Iterable, Iterator

from actprep.pipelines import storage
from actprep.schemas.manifest import (ManifestError, ManifestRow, links_out_note,
                                      listed_refusal, lookup_names, refusal_below,
                                      video_stem)
from actprep.schemas.plan import order_hash

CHUNK = 1 << 20  # bytes read from the manifest at a time
CACHE_KIB = 16000  # SQLite page cache; the sorter's in-memory runs are bounded by it too


# --------------------------------------------------------------------------- the manifest


def decoded_chunks(stream: IO[bytes], source: str = "the manifest") -> Iterator[str]:
    """The stream's text, chunk by chunk: UTF-8 with a leading BOM dropped, exactly as
    ``storage.read_text`` decodes the whole file. A byte that is not UTF-8 raises
    ManifestError ``SOURCE:LINE: not UTF-8 (...)``, the line counted in the bytes read."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines = 0  # '\n' bytes in the chunks decoded so far (a byte never inside a UTF-8 sequence)
    while data := stream.read(CHUNK):
        text = _decode(decoder, data, False, source, lines)
        lines += data.count(b"\n")
        if text:
            yield text
    if text := _decode(decoder, b"", True, source, lines):
        yield text


def _decode(decoder: codecs.IncrementalDecoder, data: bytes, final: bool, source: str,
            lines: int) -> str:
    """``decoder.decode``, its error a ManifestError naming the line: ``lines`` newlines
    came before ``data``, and the error's text (the undecoded bytes held from the chunk
    before, which hold no newline, then ``data``) has more before the bad byte."""
    try:
        return decoder.decode(data, final)
    except UnicodeDecodeError as exc:
        line = lines + exc.object[:exc.start].count(b"\n") + 1
        bad = " ".join(f"0x{byte:02x}" for byte in exc.object[exc.start:exc.end])
        raise ManifestError(f"{source}:{line}: not UTF-8 ({bad}: {exc.reason}); save the "
                            f"manifest as UTF-8") from None


def text_lines(chunks: Iterable[str]) -> Iterator[str]:
    """'\\n'-ended lines (the last may lack it), as iterating ``io.StringIO(text)`` gives:
    CR and CRLF stay inside the line for the csv module to judge."""
    tail = ""
    for chunk in chunks:
        *whole, last = (tail + chunk).split("\n")
        for line in whole:
            yield line + "\n"
        tail = last
    if tail:
        yield tail


@contextlib.contextmanager
def manifest_lines(path: str) -> Iterator[Iterator[str]]:
    """The manifest's lines, streamed from any filesystem."""
    with storage.FileSystems.open(path, compression_type="uncompressed") as stream:
        yield text_lines(decoded_chunks(stream, path))


def text_sha256(path: str) -> str:
    """sha256 of the file's text encoded as UTF-8 (``storage.read_text(path).encode()``)
    in one streaming pass; a missing file raises FileNotFoundError as ``read_bytes`` does."""
    digest = hashlib.sha256()
    try:
        with storage.FileSystems.open(path, compression_type="uncompressed") as stream:
            for text in decoded_chunks(stream, path):
                digest.update(text.encode())
    except Exception:
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: file not found") from None
        raise
    return digest.hexdigest()


# --------------------------------------------------------------------------- the video root


def iter_files(root: str) -> Iterator[str]:
    """Every file under ``root`` as root-relative POSIX paths, like ``storage.list_files``
    but streamed: one walk of a local folder, one prefix listing of an object store. Files
    that must not be read come as ``Refused`` paths (``storage.walk_files``)."""
    root = root.rstrip("/")
    if storage.is_local(root):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video root {root} is not a directory")
        return storage.walk_files(root)
    return _object_names(root)


def _object_names(root: str) -> Iterator[str]:
    prefix = root + "/"
    count = 0
    for path in _object_paths(prefix):
        if path.startswith(prefix) and len(path) > len(prefix):
            count += 1
            yield storage.object_entry(root, path[len(prefix):])
    if not count:  # an object store has no empty folders: a mistyped root
        raise FileNotFoundError(f"video root {root}: no files under it")


def _object_paths(prefix: str) -> Iterable[str]:
    """Full paths under ``prefix``, page by page. On GCS straight from the storage client:
    Beam's listing keeps a set of every name it has yielded."""
    fs = storage.FileSystems.get_filesystem(prefix)
    client = None
    if prefix.startswith("gs://"):
        try:  # a private Beam attribute: another Beam may lack it, then the slow path
            client = fs._gcsIO().client
        except AttributeError:
            client = None
    if client is None:
        return (meta.path for meta in fs._list(prefix))  # FileSystem's listing primitive
    bucket, _, name_prefix = prefix[len("gs://"):].partition("/")
    blobs = client.list_blobs(bucket, prefix=name_prefix, fields="items(name),nextPageToken")
    return (f"gs://{bucket}/{blob.name}" for blob in blobs)


# --------------------------------------------------------------------------- SQLite


@contextlib.contextmanager
def scratch_db() -> Iterator[sqlite3.Connection]:
    """A new SQLite database in a temporary folder, deleted on exit; tuned for one bulk
    load and a sort (no journal, no syncs, a small cache) and for many small lookups (an
    exclusive lock, so a statement costs no file-locking system calls)."""
    with tempfile.TemporaryDirectory(prefix="actprep-plan-") as folder:
        db = sqlite3.connect(os.path.join(folder, "plan.sqlite"), isolation_level=None)
        try:
            for pragma in (f"cache_size=-{CACHE_KIB}", "journal_mode=OFF", "synchronous=OFF",
                           "temp_store=FILE", "locking_mode=EXCLUSIVE"):
                db.execute(f"PRAGMA {pragma}")
            yield db
        finally:
            db.close()


def _bulk_insert(db: sqlite3.Connection, sql: str, records: Iterable[tuple]) -> None:
    """All ``records`` in one transaction; executemany pulls them from the iterator one by
    one, so none are held."""
    db.execute("BEGIN")
    try:
        db.executemany(sql, records)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _blob(text: str) -> bytes:
    """A path as bytes (file names undecodable as UTF-8 come as surrogate escapes, which
    SQLite's text cannot hold); memcmp order on these is code point order."""
    return text.encode("utf-8", "surrogateescape")


class SqliteVideos:
    """The ``VideoLookup`` of a video root's files, kept in ``db``: an indexed table of
    paths, video stems and the listing's refusals, queried once per manifest row (twice
    for a found video when the listing refused anything)."""

    def __init__(self, db: sqlite3.Connection, relpaths: Iterable[str]):
        self._refused = 0  # paths the listing refused
        self._folders_out = 0  # of them, folders behind links leading out (not walked)
        self._folder_out: tuple[str, str] | None = None  # the first of those by name
        db.execute("CREATE TABLE videos (rel BLOB NOT NULL, stem BLOB, refusal TEXT)")
        _bulk_insert(db, "INSERT INTO videos VALUES (?, ?, ?)", self._records(relpaths))
        db.execute("CREATE INDEX videos_rel ON videos (rel, refusal)")
        db.execute("CREATE INDEX videos_stem ON videos (stem, rel) WHERE stem IS NOT NULL")
        self._cursor = db.cursor()  # reused: a new cursor per lookup costs as much as the query

    def _records(self, relpaths: Iterable[str]) -> Iterator[tuple]:
        """The table rows of the listed paths, streamed; the refused ones are counted."""
        for listed in relpaths:
            rel = listed.lstrip("/")
            reason = None if type(listed) is str else listed_refusal(listed)
            if reason is not None:
                self._note_refused(rel, reason)
            stem = video_stem(rel)
            yield _blob(rel), _blob(stem) if stem is not None else None, reason

    def _note_refused(self, rel: str, reason: str) -> None:
        self._refused += 1
        if rel.endswith("/"):
            self._folders_out += 1
            self._folder_out = min(self._folder_out or (rel, reason), (rel, reason))

    def find_stem(self, stem: str) -> list[str]:
        found = self._cursor.execute(
            "SELECT DISTINCT rel FROM videos WHERE stem = ? ORDER BY rel", (_blob(stem),))
        return [rel.decode("utf-8", "surrogateescape") for rel, in found.fetchall()]

    def __contains__(self, rel: object) -> bool:
        return isinstance(rel, str) and self._cursor.execute(
            "SELECT 1 FROM videos WHERE rel = ? LIMIT 1", (_blob(rel),)).fetchone() is not None

    def refusal(self, rel: str) -> str | None:
        if not self._refused:
            return None
        names = lookup_names(rel)
        found = self._cursor.execute(
            f"SELECT rel, refusal FROM videos WHERE rel IN ({','.join('?' * len(names))}) "
            f"AND refusal IS NOT NULL", [_blob(n) for n in names]).fetchall()
        return refusal_below(rel, {r.decode("utf-8", "surrogateescape"): reason
                                   for r, reason in found})

    def links_out(self) -> str:
        return links_out_note(self._folders_out, self._folder_out)


def store_rows(db: sqlite3.Connection, rows: Iterable[ManifestRow]) -> None:
    """Every row into table ``rows`` of ``db``, streamed, with its ``order_hash`` (computed
    once here, so that ordering compares integers, not calls into Python)."""
    db.execute("CREATE TABLE rows (line INTEGER, key TEXT, path TEXT, label TEXT, "
               "split TEXT, error TEXT, hash INTEGER)")
    _bulk_insert(db, "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)",
                 ((r.line, r.key, r.path, r.label, r.split, r.error, order_hash(r.key))
                  for r in rows))


_COLUMNS = "line, key, path, label, split, error"


def _keyed_rows(db: sqlite3.Connection) -> Iterator[tuple[int, ManifestRow]]:
    """(rowid, row) of the stored rows in (key, line) order (UTF-8 byte order is code
    point order, as Python compares strings), one at a time."""
    for rowid, *record in db.execute(f"SELECT rowid, {_COLUMNS} FROM rows "
                                     f"ORDER BY key, line, rowid"):
        yield rowid, ManifestRow(*record)


Check = Callable[[Iterable[ManifestRow]], Iterator[ManifestRow]]


def check_stored(db: sqlite3.Connection, check: Check) -> None:
    """Runs ``check`` (``check_sorted``: one row out per row in, in order) over the stored
    rows in (key, line) order, the order it needs to find duplicate keys holding one key
    at a time, and stores the errors it sets. Changed rows go to a side table first (a
    table is not updated while it is being read), then into ``rows`` by rowid."""
    db.execute("CREATE TABLE fixes (id INTEGER PRIMARY KEY, error TEXT)")
    _bulk_insert(db, "INSERT INTO fixes VALUES (?, ?)", _changed_errors(db, check))
    db.execute("BEGIN")
    db.execute("UPDATE rows SET error = (SELECT error FROM fixes WHERE fixes.id = rows.rowid) "
               "WHERE rowid IN (SELECT id FROM fixes)")
    db.execute("COMMIT")
    db.execute("DROP TABLE fixes")


def _changed_errors(db: sqlite3.Connection, check: Check) -> Iterator[tuple[int, str]]:
    """(rowid, error) of each row whose error ``check`` changed, streamed."""
    current: list[tuple[int, ManifestRow]] = []

    def feed() -> Iterator[ManifestRow]:
        for rowid, row in _keyed_rows(db):
            current[:] = [(rowid, row)]
            yield row
    for checked in check(feed()):
        rowid, row = current[0]
        if (checked.key, checked.line) != (row.key, row.line):
            raise RuntimeError(f"row check out of step at line {row.line}: it must give "
                               f"one row per row, in order")
        if checked.error != row.error:
            yield rowid, checked.error


# The plan's order (``schemas.plan.shard_order``) in SQL: rank within the label group by
# hash, position (rank - 0.5) / group size, global rank by (position, hash, key, line), shard
# = (global rank - 1) // shard size; read back by (shard, key, line). Three sorts that spill
# to disk, never rows held in Python. (Sorting only the ordering columns and looking the
# rows up by rowid afterwards was no faster: SQLite materialises the subquery for the join.)
_PLACED = f"""
SELECT shard, {_COLUMNS} FROM (
    SELECT *, (ROW_NUMBER() OVER (ORDER BY pos, hash, key, line, id) - 1) / :size AS shard
    FROM (
        SELECT rowid AS id, {_COLUMNS}, hash,
               (ROW_NUMBER() OVER grouped - 0.5)
               / COUNT(*) OVER (grouped ROWS BETWEEN UNBOUNDED PRECEDING
                                        AND UNBOUNDED FOLLOWING) AS pos
        FROM rows
        WINDOW grouped AS (PARTITION BY label ORDER BY hash, key, line, rowid)))
ORDER BY shard, key, line, id
"""


def placed_rows(db: sqlite3.Connection, shard_size: int) -> Iterator[tuple[int, ManifestRow]]:
    """(shard, row) of every stored row in shard order, each shard's rows in (key, line)
    order: ``make_plan``'s placement, streamed one row at a time. A sorter keeps up to the
    page cache's size in memory and the query runs three at once, so the cache is cut to a
    third meanwhile: planning's peak stays that of one sort."""
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB // 3}")
    try:
        for shard, *record in db.execute(_PLACED, {"size": shard_size}):
            yield shard, ManifestRow(*record)
    finally:
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
