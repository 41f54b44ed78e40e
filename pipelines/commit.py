"""Step 3 of a run, for one shard: fragments -> shard tar, index -> Parquet, cleanup.

Order makes it crash-safe: the index is written first, the tar is renamed into place
last (the commit point: a shard tar exists only when complete), fragments go after.
"""
from __future__ import annotations

import io
import os
from typing import Any, Iterable

from actprep.pipelines import layout, storage
from actprep.pipelines.fragment import copy_members, open_shard
from actprep.pipelines.crashpoints import crash_point
from actprep.pipelines.options import RunOptions
from actprep.schemas.index import OK, write_index


def commit_shard(opts: RunOptions, shard: int, results: Iterable[dict[str, Any]]) -> dict:
    """Builds ``shard-NNNNNN.tar`` and its index from the shard's results (one per plan
    entry, ok or failed), in (key, line) order. Returns a small summary."""
    rows = sorted(results, key=lambda r: (r["key"], r["line"]))
    buf = io.BytesIO()
    write_index(rows, buf)
    storage.write_atomic(layout.shard_index(opts.output, shard), buf.getvalue())
    crash_point("commit:index")
    with storage.atomic_writer(layout.shard_tar(opts.output, shard)) as stream:
        tar = open_shard(stream)
        for number, row in enumerate(rows, 1):
            if number == len(rows) // 2 + 1:
                crash_point("commit:tar")
            if row["status"] == OK:
                fragment = layout.fragment_path(opts.output, shard, row["line"])
                with storage.FileSystems.open(fragment, compression_type="uncompressed") as src:
                    copied = copy_members(src, tar)
                if copied != row["members"]:
                    raise RuntimeError(f"{fragment}: {copied} members, its result says "
                                       f"{row['members']}")
        tar.close()
    crash_point("commit:renamed")
    drop_work(opts.output, shard)
    ok = sum(r["status"] == OK for r in rows)
    return {"shard": shard, "ok": ok, "failed": len(rows) - ok}


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
