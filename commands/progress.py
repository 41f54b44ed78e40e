"""Live progress of a local run and the end-of-run summary.

Progress comes from ``TALLY``, which the job's processing step adds to as each video is
done: on the local runner the job runs in this process, so the display costs nothing per
poll however large the job (no listing of result files). The summary is ``actprep stats``'
over the committed index, read shard by shard, so its memory does not grow with the job.
"""
from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm

from actprep.pipelines.tally import TALLY


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


def summarize(output: str) -> dict[str, Any]:
    """Totals over the committed index (``actprep stats``' figures, read a shard at a time):
    the ground truth of what a run produced, including each shard's row count."""
    from actprep.reports.stats import output_stats

    return output_stats(output)
