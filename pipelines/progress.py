"""Live progress of a local run (videos done / failed / rate) and the final summary,
both read from the output folder, so they work whatever runner does the work."""
from __future__ import annotations

import collections
import json
import os
import threading
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from actprep.pipelines import layout, storage
from actprep.schemas.index import FAILED, read_index


class ProgressMonitor(threading.Thread):
    """Polls result records and committed indices of a local output; a tqdm bar."""

    def __init__(self, output: str, total: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.output, self.total, self.interval = output, total, interval
        self._stop_event = threading.Event()
        self._status: dict[str, str] = {}  # result file -> status
        self._shards: dict[str, collections.Counter] = {}  # committed index -> counts

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        with tqdm(total=self.total, unit="video", dynamic_ncols=True, smoothing=0.1) as bar:
            while True:
                done, failed = self._poll()
                bar.n = done
                bar.set_postfix(failed=failed, refresh=False)
                bar.refresh()
                if self._stop_event.wait(self.interval):
                    done, failed = self._poll()
                    bar.n = done
                    bar.set_postfix(failed=failed)
                    return

    def _poll(self) -> tuple[int, int]:
        counts: collections.Counter = collections.Counter()
        index_dir = os.path.join(self.output, layout.INDEX_DIR)
        committed = set()
        for name in _listdir(index_dir):
            shard = name.split(".")[0]
            if name.endswith(".parquet") and os.path.exists(os.path.join(self.output, shard + ".tar")):
                if name not in self._shards:
                    table = read_index(os.path.join(index_dir, name))
                    self._shards[name] = collections.Counter(table.column("status").to_pylist())
                counts.update(self._shards[name])
                committed.add(shard)
        work = os.path.join(self.output, layout.WORK_DIR)
        for shard in _listdir(work):
            if shard in committed:
                continue
            for name in _listdir(os.path.join(work, shard)):
                if name.endswith(".result.json"):
                    counts[self._result_status(os.path.join(work, shard, name))] += 1
        return counts["ok"] + counts[FAILED], counts[FAILED]

    def _result_status(self, path: str) -> str:
        if path not in self._status:
            try:
                with open(path, encoding="utf-8") as f:
                    self._status[path] = json.load(f)["status"]
            except (OSError, ValueError):
                return "unknown"
        return self._status[path]


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def summarize(output: str) -> dict[str, Any]:
    """Totals over the committed index: the ground truth of what a run produced."""
    files = [layout.shard_index(output, s) for s in sorted(layout.committed_shards(output))]
    table = pa.concat_tables([read_index(pa.BufferReader(storage.read_bytes(f))) for f in files]) if files else None
    if table is None or table.num_rows == 0:
        return {"samples_ok": 0, "samples_failed": 0, "frames": 0, "failures": {}}
    ok_mask = pc.equal(table.column("status"), "ok")
    failed = table.filter(pc.invert(ok_mask))
    reasons = collections.Counter(
        f"{s}: {r}" for s, r in zip(failed.column("failure_stage").to_pylist(),
                                    failed.column("failure_reason").to_pylist()))
    return {
        "samples_ok": int(pc.sum(ok_mask.cast("int64")).as_py() or 0),
        "samples_failed": failed.num_rows,
        "frames": int(pc.sum(table.column("frames")).as_py() or 0),
        "hours": float(pc.sum(table.column("duration")).as_py() or 0) / 3600,
        "shards": len(set(table.column("shard").to_pylist())),
        "failures": dict(reasons.most_common()),
    }
