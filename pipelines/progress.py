"""Live progress of a local run (videos done / failed / rate) and the final summary,
both read from the output folder, so they work whatever runner does the work."""
from __future__ import annotations

import collections
import json
import os
import threading
from typing import Any

from tqdm import tqdm

from actprep.pipelines import layout
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
    """Totals over the committed index (``actprep stats``' figures): the ground truth of
    what a run produced."""
    from actprep.pipelines.stats import compute, load_index

    return compute(*load_index(output))
