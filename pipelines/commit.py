"""Step 3 of a run, for one shard: fragments -> shard tar, index -> Parquet, cleanup.

A shard is committed only when its results are exactly its planned entries: one result
per entry, same key and line, nothing else; otherwise ``ShardIncomplete`` names what is
missing or extra, the shard stays uncommitted and a rerun redoes it.

Order makes it crash-safe: the tar is written under a temporary name, then the index
(which records the tar's size), then the tar is renamed into place (the commit point: a
shard tar exists only when complete), and fragments go after.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any

from actprep.pipelines import layout, storage
from actprep.pipelines.fragment import copy_members, shard_writer
from actprep.pipelines.crashpoints import crash_point
from actprep.pipelines.process import load_result, plan_result
from actprep.schemas.index import OK, write_index
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import PlanEntry

NAMED = 10  # keys named in a refusal; the rest are counted


class ShardIncomplete(Exception):
    """A shard's results are not exactly its planned entries: it is not committed."""

    def __init__(self, shard: int, missing: list[str], extra: list[str]):
        self.shard, self.missing, self.extra = shard, missing, extra
        parts = []
        for what, keys in (("no result for", missing), ("results outside its plan for", extra)):
            if keys:
                more = f" and {len(keys) - NAMED} more" if len(keys) > NAMED else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:NAMED])}{more}")
        super().__init__(f"{shard_name(shard)} not committed: {'; '.join(parts)}")

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "missing": self.missing, "extra": self.extra,
                "message": str(self)}


def gather_results(output: str, shard: int, entries: list[PlanEntry],
                   known: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One result per planned entry, in plan order: from ``known`` (line -> result, what a
    worker holds in memory), from the plan (manifest failures) or from the checkpoint.
    Raises ShardIncomplete naming every missing, mismatched or unplanned result."""
    known = dict(known or {})
    rows, missing, extra = [], [], []
    for entry in entries:
        row = known.pop(entry.line, None) or plan_result(entry) or load_result(output, entry)
        if row is None:
            missing.append(entry.key)
        elif row.get("key") != entry.key or row.get("line") != entry.line:
            extra.append(str(row.get("key")))
            missing.append(entry.key)
        else:
            rows.append(row)
    extra += [str(row.get("key")) for row in known.values()]
    if missing or extra:
        raise ShardIncomplete(shard, missing, extra)
    return rows


def commit_shard(output: str, shard: int, entries: list[PlanEntry],
                 known: dict[int, dict[str, Any]] | None = None) -> dict:
    """Builds ``shard-NNNNNN.tar`` and its index from the shard's results (one per plan
    entry, ok or failed), in (key, line) order; ok rows get their sample's byte range in
    the tar (``tar_offset``, ``tar_bytes``: readers seek to a sample without a scan).
    Returns a small summary; raises ShardIncomplete (and commits nothing) unless the
    results are exactly the plan's."""
    rows = sorted((dict(r) for r in gather_results(output, shard, entries, known)),
                  key=lambda r: (r["key"], r["line"]))
    with storage.atomic_writer(layout.shard_tar(output, shard)) as stream:
        counted = _Counted(stream)
        with shard_writer(counted) as tar:
            _copy_samples(output, shard, rows, tar)
        buf = io.BytesIO()
        write_index(rows, buf, tar_bytes=counted.bytes)
        storage.write_atomic(layout.shard_index(output, shard), buf.getvalue())
        crash_point("commit:index")
    crash_point("commit:renamed")
    drop_work(output, shard)
    ok = sum(r["status"] == OK for r in rows)
    return {"shard": shard, "ok": ok, "failed": len(rows) - ok}


def _copy_samples(output: str, shard: int, rows: list[dict[str, Any]],
                  tar: tarfile.TarFile) -> None:
    """Appends each ok row's fragment to the shard's ``tar`` in the rows' order and sets
    every row's ``tar_offset`` and ``tar_bytes`` (None for a failed row)."""
    for number, row in enumerate(rows, 1):
        if number == len(rows) // 2 + 1:
            crash_point("commit:tar")
        row["tar_offset"] = row["tar_bytes"] = None
        if row["status"] != OK:
            continue
        fragment = layout.fragment_path(output, shard, row["line"])
        start = tar.offset  # the sample's byte range: its members are consecutive
        with storage.FileSystems.open(fragment, compression_type="uncompressed") as src:
            copied = copy_members(src, tar)
        if copied != row["members"]:
            raise RuntimeError(f"{fragment}: {copied} members, its result says "
                               f"{row['members']}")
        row["tar_offset"], row["tar_bytes"] = start, tar.offset - start


class _Counted:
    """A write-only stream that counts what passes through it to ``stream``."""

    def __init__(self, stream: Any):
        self.stream, self.bytes = stream, 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        self.stream.write(data)
        return len(data)


def record_refusal(output: str, refusal: ShardIncomplete) -> None:
    """Leaves why a shard was not committed where the launcher and a rerun find it."""
    storage.write_atomic(layout.incomplete_path(output, refusal.shard),
                         json.dumps(refusal.to_json(), sort_keys=True).encode())


def drop_work(output: str, shard: int) -> None:
    """Deletes a committed shard's work folder: fragments, results and the temporaries of
    killed attempts. Also run for committed shards at the start of a run, which finishes a
    commit killed after its tar was in place."""
    work = layout.work_dir(output, shard)
    storage.delete(storage.files_in(work))
    if storage.is_local(work):
        try:
            os.rmdir(work)
        except OSError:
            pass
