"""Every file and folder name in an actprep output, made and parsed here, both ways.

An output folder holds (docs/FORMAT.md):

- ``shard-NNNNNN.tar``                 committed shards (6 digits, more past 999,999)
- ``index/shard-NNNNNN.parquet``       each committed shard's index
- ``run.json``, ``plan.jsonl``, ``plan-shards.json``, ``labels.json``, ``run.lock``
- ``_work/shard-NNNNNN/LLLLLLLLL.tar``          a video's checkpointed fragment (manifest line L)
- ``_work/shard-NNNNNN/LLLLLLLLL.result.json``  its result record: present means done
- ``_work/shard-NNNNNN/incomplete.json``        why the last commit of the shard was refused
- ``_work/internal/shard-NNNNNN.LLLLLLLLL.txt``  the traceback of an internal error

Parsing accepts only the names this module makes (``shard-3.tar`` is not a shard), so a
listing never mistakes a stray file for part of the output. Names only: joining them onto an
output path (local or gs://) is ``pipelines/layout.py``'s.
"""
from __future__ import annotations

SHARD_PREFIX = "shard-"
SHARD_DIGITS = 6
LINE_DIGITS = 9

RUN = "run.json"
PLAN = "plan.jsonl"
PLAN_SHARDS = "plan-shards.json"  # where each shard's lines are in the plan
LABELS = "labels.json"
LOCK = "run.lock"
INDEX_DIR = "index"
WORK_DIR = "_work"
INTERNAL_DIR = "internal"  # under WORK_DIR
INCOMPLETE = "incomplete.json"  # in a shard's work folder

TAR = ".tar"
INDEX = ".parquet"
RESULT = ".result.json"
TRACEBACK = ".txt"
SHARD_TAR_GLOB = f"{SHARD_PREFIX}*{TAR}"  # an output's shard tars, as a shell pattern


def shard_name(shard: int) -> str:
    """``shard-000003``: a shard's name, the stem of its tar, index and work folder."""
    return f"{SHARD_PREFIX}{shard:0{SHARD_DIGITS}d}"


def shard_number(name: str) -> int | None:
    """The number of a shard name as ``shard_name`` writes it; None for anything else."""
    digits = name[len(SHARD_PREFIX):]
    if not name.startswith(SHARD_PREFIX) or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if shard_name(number) == name else None


def _stem_number(filename: str, suffix: str) -> int | None:
    return shard_number(filename[:-len(suffix)]) if filename.endswith(suffix) else None


def tar_name(shard: int) -> str:
    return shard_name(shard) + TAR


def tar_shard(filename: str) -> int | None:
    """The shard of a shard tar's file name (``shard-000003.tar`` -> 3), else None."""
    return _stem_number(filename, TAR)


def index_name(shard: int) -> str:
    return shard_name(shard) + INDEX


def index_shard(filename: str) -> int | None:
    """The shard of an index file name (``shard-000003.parquet`` -> 3), else None."""
    return _stem_number(filename, INDEX)


def index_stem(tar_filename: str) -> str:
    """The index file name beside a shard tar name (any tar URL's base name, as readers
    take tars from elsewhere): its stem, with ``.parquet``."""
    stem = tar_filename[:-len(TAR)] if tar_filename.endswith(TAR) else tar_filename
    return stem + INDEX


def _line_text(line: int) -> str:
    return f"{line:0{LINE_DIGITS}d}"


def _line(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or _line_text(int(text)) != text:
        return None
    return int(text)


def fragment_name(line: int) -> str:
    """A video's checkpointed fragment, named by its manifest line (unique in the job)."""
    return _line_text(line) + TAR


def result_name(line: int) -> str:
    return _line_text(line) + RESULT


def result_line(filename: str) -> int | None:
    """The manifest line of a result record's file name, else None."""
    return _line(filename[:-len(RESULT)]) if filename.endswith(RESULT) else None


def traceback_name(shard: int, line: int) -> str:
    return f"{shard_name(shard)}.{_line_text(line)}{TRACEBACK}"


def traceback_shard(filename: str) -> int | None:
    """The shard of an internal error's traceback file name, else None."""
    if not filename.endswith(TRACEBACK):
        return None
    shard, _, line = filename[:-len(TRACEBACK)].partition(".")
    return shard_number(shard) if _line(line) is not None else None


def work_shard(relative: str) -> int | None:
    """The shard whose work folder holds ``relative`` (a path under ``_work/``: the
    shard's folder or a file in it), else None (``internal/``, stray names)."""
    return shard_number(relative.split("/", 1)[0])
