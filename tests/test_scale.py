"""The job's memory does not grow with the manifest, and no row is lost: ``actprep run``
with its defaults on 20k and 100k generated Kinetics rows whose videos are absent (every
row is bookkeeping: plan, failure, index, commit), each in its own process, peak RSS from
``os.wait4``. benchmarks/scale.py measures the same up to 650k rows."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SMALL, LARGE = 20_000, 100_000


def _manifest(path: str, rows: int) -> None:
    rng = random.Random(rows)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    with open(path, "w", encoding="utf-8") as f:
        f.write("label,youtube_id,time_start,time_end,split\n")
        for i in range(rows):
            yid = "".join(rng.choice(alphabet) for _ in range(11))
            f.write(f"class {i % 400},{yid},{i % 300},{i % 300 + 10},train\n")


def _run(tmp_path, rows: int) -> tuple[float, str]:
    """Peak RSS in MB of a default ``actprep run`` over ``rows`` rows, and its output."""
    manifest, out = tmp_path / f"k{rows}.csv", tmp_path / f"out{rows}"
    _manifest(str(manifest), rows)
    (tmp_path / "videos").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "actprep.commands.cli", "run", "--dataset", "kinetics",
           "--manifest", str(manifest), "--video-root", str(tmp_path / "videos"),
           "--output", str(out), "--no-progress", "--max-failed-fraction", "1"]  # no videos
    with open(tmp_path / f"log{rows}", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / f"log{rows}").read_text()
    return usage.ru_maxrss / 1024, str(out)


def _index_rows(out: str) -> int:
    folder = os.path.join(out, "index")
    return sum(pq.read_metadata(os.path.join(folder, n)).num_rows for n in os.listdir(folder))


def test_memory_does_not_grow_with_the_manifest(tmp_path):
    small, small_out = _run(tmp_path, SMALL)
    large, large_out = _run(tmp_path, LARGE)
    assert _index_rows(small_out) == SMALL and _index_rows(large_out) == LARGE
    # 5x the rows: the old job grew by about 0.5 KB a row (+40 MB here) before its
    # shuffles ran away; now the difference is noise
    assert large < small * 1.1 + 10, (small, large)
