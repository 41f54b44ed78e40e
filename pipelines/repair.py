"""Committed shards checked against their index, cheaply, before a rerun trusts them.

A committed shard is its tar (the commit point) plus its index file. Someone or something
may have deleted or damaged either since: the index missing or not Parquet, holding other
than the planned number of rows, or the tar not of the size its index recorded at commit.
Such a shard is undone (tar, then index) so that the run redoes it from its videos, and the
output ends as a clean run's. Each check costs the index file (a few KB per 100 rows) and
the tar's size from the listing; tar contents are ``actprep verify``'s to read.
"""
from __future__ import annotations

from pyarrow import ArrowInvalid

from actprep.pipelines import layout, storage
from actprep.pipelines.bounded import imap
from actprep.schemas.index import index_footer
from actprep.schemas.plan import ShardSpan


def index_problem(output: str, shard: int) -> tuple[str | None, int | None, int | None]:
    """(what is wrong with the shard's index file or None, its rows, the tar size it
    recorded). Storage errors are raised: they are faults of the environment, not damage."""
    path = layout.shard_index(output, shard)
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        return "its index is missing", None, None
    try:
        rows, tar_bytes = index_footer(data)
    except (ArrowInvalid, OSError) as exc:  # pyarrow parses from memory here: no I/O
        return f"its index is not a readable Parquet file ({exc})", None, None
    return None, rows, tar_bytes


def shard_problem(output: str, span: ShardSpan, tar_bytes: int) -> str | None:
    """Why a committed shard cannot be trusted, or None."""
    problem, rows, recorded = index_problem(output, span.shard)
    if problem:
        return problem
    if rows != span.count:
        return f"its index holds {rows} rows, the plan {span.count}"
    if recorded is not None and recorded != tar_bytes:
        return f"its tar is {tar_bytes} bytes, {recorded} when it was committed"
    return None


def damaged_shards(output: str, spans: list[ShardSpan], workers: int = 16) -> dict[int, str]:
    """Committed shards of the plan that fail their check -> why. (A shard outside the
    plan is not touched: the run's end reports it.)"""
    tars = layout.shard_tars(output)
    planned = [s for s in spans if s.shard in tars]
    found: dict[int, str] = {}
    for span, problem in zip(planned, imap(lambda s: shard_problem(output, s, tars[s.shard]),
                                           planned, workers)):
        if problem:
            found[span.shard] = problem
    return found


def undo_commit(output: str, shard: int) -> None:
    """Deletes a committed shard: the tar first (the commit point, reversed), then its
    index, so a kill in between leaves an uncommitted shard, never a tar without index."""
    storage.delete([layout.shard_tar(output, shard)])
    storage.delete([layout.shard_index(output, shard)])
