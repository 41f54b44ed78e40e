"""Live progress of a local run and the end-of-run summary.

Progress comes from ``TALLY``, which the job's processing step adds to as each video is
done: on the local runner the job runs in this process, so the display costs nothing per
poll however large the job (no listing of result files). The summary reads the committed
index shard by shard, a few columns at a time, so its memory does not grow with the job.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from actprep.pipelines import layout, storage
from actprep.pipelines.bounded import imap
from actprep.schemas.index import OK, read_index


class Tally:
    """Videos done and failed in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.failed = 0

    def add(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += not ok

    def reset(self) -> None:
        with self._lock:
            self.done = self.failed = 0


TALLY = Tally()


class ProgressMonitor(threading.Thread):
    """A tqdm bar over ``total`` videos, ``already`` of them done before this run (in
    committed shards), fed by ``TALLY``."""

    def __init__(self, total: int, already: int = 0, interval: float = 0.5):
        super().__init__(daemon=True)
        self.total, self.already, self.interval = total, already, interval
        self._stop_event = threading.Event()
        TALLY.reset()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        with tqdm(total=self.total, initial=self.already, unit="video", dynamic_ncols=True,
                  smoothing=0.1) as bar:
            while True:
                stopping = self._stop_event.wait(self.interval)
                bar.n = self.already + TALLY.done
                bar.set_postfix(failed=TALLY.failed, refresh=False)
                bar.refresh()
                if stopping:
                    return


SUMMARY_COLUMNS = ["key", "status", "failure_stage", "failure_reason", "source_path",
                   "frames", "duration"]


def shard_rows(output: str) -> dict[int, int]:
    """Index rows of every committed shard, from the Parquet footers (no rows read)."""
    shards = sorted(layout.committed_shards(output))

    def rows(shard: int) -> int:
        data = storage.read_bytes(layout.shard_index(output, shard))
        return pq.read_metadata(pa.BufferReader(data)).num_rows
    return dict(zip(shards, imap(rows, shards)))


def summarize(output: str) -> dict[str, Any]:
    """Totals over the committed index: samples ok and failed, shards, frames, hours of
    video and failures grouped by cause; read a shard at a time."""
    from actprep.pipelines.stats import failure_reason

    totals: dict[str, Any] = {"samples_ok": 0, "samples_failed": 0, "shards": 0,
                              "frames": 0, "hours": 0.0}
    failures: collections.Counter = collections.Counter()
    shards = sorted(layout.committed_shards(output))

    def read(shard: int) -> pa.Table:
        data = storage.read_bytes(layout.shard_index(output, shard))
        return read_index(pa.BufferReader(data), SUMMARY_COLUMNS)
    for table in imap(read, shards):
        totals["shards"] += 1
        for row in table.to_pylist():
            if row["status"] == OK:
                totals["samples_ok"] += 1
                totals["frames"] += row["frames"] or 0
                totals["hours"] += (row["duration"] or 0.0) / 3600
            else:
                totals["samples_failed"] += 1
                failures[failure_reason(row["failure_stage"], row["failure_reason"],
                                        row["source_path"], row["key"])] += 1
    totals["failures"] = dict(failures.most_common())
    return totals
