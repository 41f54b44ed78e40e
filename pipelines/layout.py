"""Where things live in an output folder."""
from __future__ import annotations

import posixpath

from actprep.pipelines.storage import FileSystems, join
from actprep.schemas.plan import shard_name

PLAN = "plan.jsonl"
LABELS = "labels.json"
RUN = "run.json"
INDEX_DIR = "index"
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


def starts_path(output: str, shard: int, line: int) -> str:
    """How many times processing of this video has started (``process.MAX_STARTS``)."""
    return join(work_dir(output, shard), f"{line:09d}.starts")


def shard_tars(output: str) -> dict[int, int]:
    """Shard number -> size in bytes of every shard tar in ``output`` (committed shards)."""
    found = FileSystems.match([join(output, "shard-*.tar")])[0].metadata_list
    sizes = {posixpath.basename(m.path)[len("shard-"):-len(".tar")]: m.size_in_bytes
             for m in found}
    return {int(n): size for n, size in sizes.items() if n.isdigit()}


def committed_shards(output: str) -> frozenset[int]:
    """Shards whose tar exists: complete by construction, skipped by reruns."""
    return frozenset(shard_tars(output))
