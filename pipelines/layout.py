"""Where things live in an output folder."""
from __future__ import annotations

import os
import posixpath

from actprep.pipelines.storage import FileSystems, join
from actprep.schemas.plan import INDEX_DIR, SHARD_TAR_GLOB, shard_name

PLAN = "plan.jsonl"
PLAN_SHARDS = "plan-shards.json"  # where each shard's lines are in the plan
LABELS = "labels.json"
RUN = "run.json"
WORK_DIR = "_work"


def shard_tar(output: str, shard: int) -> str:
    return join(output, f"{shard_name(shard)}.tar")


def shard_index(output: str, shard: int) -> str:
    return join(output, INDEX_DIR, f"{shard_name(shard)}.parquet")


def work_dir(output: str, shard: int) -> str:
    return join(output, WORK_DIR, shard_name(shard))


def fragment_path(output: str, shard: int, line: int) -> str:
    """Per-video checkpoint: the sample's tar members (named by manifest line: unique)."""
    return join(work_dir(output, shard), f"{line:09d}.tar")


def result_path(output: str, shard: int, line: int) -> str:
    """Per-video result record, written after its fragment: its presence means done."""
    return join(work_dir(output, shard), f"{line:09d}.result.json")


def incomplete_path(output: str, shard: int) -> str:
    """Why the last commit attempt of a shard refused it (missing or extra results)."""
    return join(work_dir(output, shard), "incomplete.json")


def internal_dir(output: str) -> str:
    """Tracebacks of internal errors (bugs) met by videos; kept until they are retried."""
    return join(output, WORK_DIR, "internal")


def internal_error_path(output: str, shard: int, line: int) -> str:
    return join(internal_dir(output), f"{shard_name(shard)}.{line:09d}.txt")


def internal_error_shards(output: str) -> set[int]:
    """Shards with a video whose last attempt met an internal error: one listing."""
    folder = internal_dir(output)
    if "://" in folder:
        names = [posixpath.basename(m.path) for m in
                 FileSystems.match([folder + "/*.txt"])[0].metadata_list]
    else:
        names = os.listdir(folder) if os.path.isdir(folder) else []
    shards = {n.split(".", 1)[0][len("shard-"):] for n in names if n.startswith("shard-")}
    return {int(s) for s in shards if s.isdigit()}


def work_shards(output: str) -> set[int]:
    """Shards with a work folder (checkpoints of an unfinished commit): one listing."""
    work = join(output, WORK_DIR)
    if "://" in work:
        paths = [m.path[len(work):].lstrip("/") for m in
                 FileSystems.match([work + "/**"])[0].metadata_list]
    else:
        paths = os.listdir(work) if os.path.isdir(work) else []
    names = {p.split("/", 1)[0] for p in paths}
    return {int(n[len("shard-"):]) for n in names
            if n.startswith("shard-") and n[len("shard-"):].isdigit()}


def shard_tars(output: str) -> dict[int, int]:
    """Shard number -> size in bytes of every shard tar in ``output`` (committed shards)."""
    found = FileSystems.match([join(output, SHARD_TAR_GLOB)])[0].metadata_list
    sizes = {posixpath.basename(m.path)[len("shard-"):-len(".tar")]: m.size_in_bytes
             for m in found}
    return {int(n): size for n, size in sizes.items() if n.isdigit()}


def committed_shards(output: str) -> frozenset[int]:
    """Shards whose tar exists: complete by construction, skipped by reruns."""
    return frozenset(shard_tars(output))
