"""``--retry-failed``: committed shards that hold media failures go back to the work area, so
the run reprocesses just those videos and commits the shards again.

Reopening turns a committed shard back into the state just before its commit: every ok
sample's members become its fragment again (copied member by member from the shard tar,
checked against the index's sha256), every row its result record; then the tar goes (the
commit point, reversed) and then its index. Killed part-way, the shard is either still
committed (reopened again next time) or fully checkpointed; nothing is lost either way.
Manifest failures (missing video, unknown label, duplicate key) belong to the plan and are
not retried. Internal errors (bugs) are retried by every run, without --retry-failed.
"""
from __future__ import annotations

import contextlib
import json
import tarfile
from typing import Any

import pyarrow as pa

from actprep.pipelines import layout, storage
from actprep.pipelines.bounded import imap
from actprep.pipelines.fragment import SampleWriter, sample_writer
from actprep.schemas import sample
from actprep.schemas.index import FAILED, INTERNAL, OK, read_index


def retryable(result: dict[str, Any], media_too: bool) -> bool:
    """Whether a checkpointed or committed result is processed again: an internal error
    (a bug, not the video's fault) always; with ``media_too`` (--retry-failed) any failure
    of a media stage (fetch, probe, decode, audio...) as well. Manifest failures never."""
    if result["status"] != FAILED:
        return False
    stage = result.get("failure_stage")
    return stage == INTERNAL or (media_too and stage != "manifest")


# what deciding whether a shard has a retryable failure needs of its index
DECIDE_COLUMNS = ["status", "failure_stage"]


def _has_retryable(output: str, shard: int, media_too: bool) -> bool:
    index = storage.read_bytes(layout.shard_index(output, shard))
    return any(retryable(r, media_too) for r in read_index(pa.BufferReader(index),
                                                           DECIDE_COLUMNS).to_pylist())


def reopen_shards_with_failures(output: str, media_too: bool, workers: int = 8) -> list[int]:
    """Reopens the committed shards holding a retryable failure; returns their numbers.
    Candidates: every committed shard with ``media_too``, else those with an internal
    error's traceback (one listing). Deciding reads two columns of each candidate's
    index (a few at a time, in parallel); only the shards reopened are read whole."""
    shards = sorted(layout.committed_shards(output))
    if not media_too:
        shards = sorted(set(shards) & layout.internal_error_shards(output))
    reopened = []
    for shard, found in zip(shards, imap(lambda s: _has_retryable(output, s, media_too),
                                         shards, workers)):
        if found:
            index = storage.read_bytes(layout.shard_index(output, shard))
            reopen_shard(output, shard, read_index(pa.BufferReader(index)).to_pylist())
            reopened.append(shard)
    return reopened


def reopen_shard(output: str, shard: int, rows: list[dict[str, Any]]) -> None:
    ok = {r["key"]: r for r in rows if r["status"] == OK}
    seen: set[str] = set()
    with storage.FileSystems.open(layout.shard_tar(output, shard),
                                  compression_type="uncompressed") as src, \
            tarfile.open(fileobj=src, mode="r|") as tar, contextlib.ExitStack() as stack:
        key, writer = None, None
        for member in tar:
            member_key = sample.member_key(member.name)
            if member_key != key:
                if writer is not None:
                    _finish(stack, writer, ok[key])
                if member_key not in ok or member_key in seen:
                    raise ValueError(f"{layout.shard_tar(output, shard)}: member {member.name} "
                                     f"belongs to no ok row of its index, or is not contiguous")
                key = member_key
                seen.add(key)
                path = layout.fragment_path(output, shard, ok[key]["line"])
                writer = stack.enter_context(sample_writer(stack.enter_context(
                    storage.atomic_writer(path))))
            writer.add(member.name, tar.extractfile(member).read())
        if writer is not None:
            _finish(stack, writer, ok[key])
    if seen != set(ok):
        raise ValueError(f"{layout.shard_tar(output, shard)}: no members for "
                         f"{', '.join(sorted(set(ok) - seen))}")
    for row in rows:
        storage.write_atomic(layout.result_path(output, shard, row["line"]),
                             json.dumps(row, sort_keys=True).encode())
    storage.delete([layout.shard_tar(output, shard)])
    storage.delete([layout.shard_index(output, shard)])


def _finish(stack: contextlib.ExitStack, writer: SampleWriter, row: dict[str, Any]) -> None:
    """Closes the fragment being written (the writer, then its atomic file)."""
    if writer.sha256 != row["sample_sha256"] or writer.members != row["members"]:
        raise ValueError(f"sample {row['key']}: its members in the shard do not match the "
                         f"index (sha256 or member count); the shard is damaged")
    stack.pop_all().close()
