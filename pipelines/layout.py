"""Where things live in an output folder: the paths of its files, local or gs://.

The names themselves, and their parsing, are ``schemas/naming.py``'s; the name constants
are re-exported here for the job's code, which joins them onto an output.
"""
from __future__ import annotations

import os
import posixpath

from actprep.pipelines.storage import FileSystems, join
from actprep.schemas import naming
from actprep.schemas.naming import (INDEX_DIR, LABELS, PLAN, PLAN_SHARDS, RUN,  # noqa: F401
                                    SHARD_TAR_GLOB, WORK_DIR, shard_name)


def shard_tar(output: str, shard: int) -> str:
    return join(output, naming.tar_name(shard))


def shard_index(output: str, shard: int) -> str:
    return join(output, INDEX_DIR, naming.index_name(shard))


def work_dir(output: str, shard: int) -> str:
    return join(output, WORK_DIR, shard_name(shard))


def fragment_path(output: str, shard: int, line: int) -> str:
    """Per-video checkpoint: the sample's tar members (named by manifest line: unique)."""
    return join(work_dir(output, shard), naming.fragment_name(line))


def result_path(output: str, shard: int, line: int) -> str:
    """Per-video result record, written after its fragment: its presence means done."""
    return join(work_dir(output, shard), naming.result_name(line))


def incomplete_path(output: str, shard: int) -> str:
    """Why the last commit attempt of a shard refused it (missing or extra results)."""
    return join(work_dir(output, shard), naming.INCOMPLETE)


def internal_dir(output: str) -> str:
    """Tracebacks of internal errors (bugs) met by videos; kept until they are retried."""
    return join(output, WORK_DIR, naming.INTERNAL_DIR)


def internal_error_path(output: str, shard: int, line: int) -> str:
    return join(internal_dir(output), naming.traceback_name(shard, line))


def internal_error_shards(output: str) -> set[int]:
    """Shards with a video whose last attempt met an internal error: one listing."""
    folder = internal_dir(output)
    if "://" in folder:
        names = [posixpath.basename(m.path) for m in
                 FileSystems.match([folder + "/*" + naming.TRACEBACK])[0].metadata_list]
    else:
        names = os.listdir(folder) if os.path.isdir(folder) else []
    return {s for n in names if (s := naming.traceback_shard(n)) is not None}


def work_shards(output: str) -> set[int]:
    """Shards with a work folder (checkpoints of an unfinished commit): one listing."""
    work = join(output, WORK_DIR)
    if "://" in work:
        paths = [m.path[len(work):].lstrip("/") for m in
                 FileSystems.match([work + "/**"])[0].metadata_list]
    else:
        paths = os.listdir(work) if os.path.isdir(work) else []
    return {s for p in paths if (s := naming.work_shard(p)) is not None}


def shard_tars(output: str) -> dict[int, int]:
    """Shard number -> size in bytes of every shard tar in ``output`` (committed shards)."""
    found = FileSystems.match([join(output, SHARD_TAR_GLOB)])[0].metadata_list
    shards = ((naming.tar_shard(posixpath.basename(m.path)), m.size_in_bytes) for m in found)
    return {shard: size for shard, size in shards if shard is not None}


def committed_shards(output: str) -> frozenset[int]:
    """Shards whose tar exists: complete by construction, skipped by reruns."""
    return frozenset(shard_tars(output))
