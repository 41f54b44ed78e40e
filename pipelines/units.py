"""Work units run on a bounded pool of threads: the videos of each unit in parallel, and a
unit that is a whole shard committed as soon as its last video is done. Plain Python;
the Beam wrapper (job.py) feeds units in and takes finished units out.

Beam's DirectRunner runs with one worker (its multi-worker modes lose elements), so the
parallelism of a local run is this pool: videos spend their time in ffmpeg processes and
in libraries that release the GIL. All bookkeeping (what is done, counters, progress)
happens on the caller's thread; pool threads only process videos and commit shards.
"""
from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from actprep.pipelines import layout, storage
from actprep.pipelines.commit import ShardIncomplete, commit_shard, record_refusal
from actprep.pipelines.faults import as_fault, with_retries
from actprep.pipelines.models import Models
from actprep.pipelines.options import RunOptions
from actprep.pipelines.planfile import read_entries
from actprep.pipelines.process import load_result, plan_result, process_entry
from actprep.pipelines.retry import retryable
from actprep.pipelines.stageclock import StageClock
from actprep.schemas import naming
from actprep.schemas.index import OK
from actprep.schemas.plan import PlanEntry, WorkUnit


@dataclass
class VideoDone:
    """One video's result and how it was obtained."""

    result: dict[str, Any]
    source: str  # "plan" (a manifest failure), "checkpoint" (an earlier run's) or "new"
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, when processed


def run_video(opts: RunOptions, entry: PlanEntry, models: Callable[[], Models],
              checkpointed: bool | None) -> VideoDone:
    """The result of one plan entry: the plan's (manifest failure), the checkpoint of an
    earlier attempt, or a new processing. ``checkpointed``: whether a result file is
    known to exist (None: unknown, look)."""
    fixed = plan_result(entry)
    if fixed is not None:
        return VideoDone(fixed, "plan")
    result = load_result(opts.output, entry) if checkpointed is not False else None
    attempts = 1
    if result is not None and retryable(result, opts.retry_failed):
        attempts, result = (result.get("attempts") or 1) + 1, None
    if result is not None:
        return VideoDone(result, "checkpoint")
    clock = StageClock()
    result = with_retries(lambda: process_entry(entry, opts, models(), attempts, clock),
                          f"{entry.key} ({entry.path})")
    return VideoDone(result, "new", dict(clock.seconds))


def checkpointed_lines(output: str, shard: int) -> set[int]:
    """Lines of the shard whose result record exists: one listing of its work folder."""
    names = (p.rsplit("/", 1)[-1] for p in storage.files_in(layout.work_dir(output, shard)))
    return {line for n in names if (line := naming.result_line(n)) is not None}


@dataclass
class UnitSummary:
    """What crosses the shuffle per unit: which entries it covered, and whether it
    committed its shard (a whole-shard unit) or was refused."""

    first: int
    count: int
    ok: int
    failed: int
    committed: bool = False
    refused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Unit:
    def __init__(self, unit: WorkUnit, entries: list[PlanEntry]):
        self.unit, self.entries = unit, entries
        self.results: dict[int, dict[str, Any]] = {}
        self.remaining = len(entries)


class UnitRunner:
    """Runs units with ``workers`` threads (1: on the caller's thread), at most
    ``2 * workers`` videos in flight. ``on_video(done)`` is called on the caller's thread
    for every finished video; finished units come out of ``submit`` and ``drain`` as
    ``(shard, UnitSummary)``. Commit refusals are recorded and reported as ``refused``;
    any other error of a video or commit is raised on the caller's thread."""

    def __init__(self, opts: RunOptions, workers: int, models: Callable[[], Models],
                 on_video: Callable[[VideoDone], None]):
        self.opts, self.workers, self.models, self.on_video = opts, workers, models, on_video
        self._pool = cf.ThreadPoolExecutor(workers, "actprep-video") if workers > 1 else None
        self._done: queue.Queue = queue.Queue()
        self._pending = 0
        self._limit = 2 * workers

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, unit: WorkUnit) -> Iterator[tuple[int, UnitSummary]]:
        """Starts the unit's videos; yields the units finished meanwhile."""
        state = _Unit(unit, read_entries(self.opts.output, unit))
        known = checkpointed_lines(self.opts.output, unit.shard) if unit.whole else None
        for entry in state.entries:
            while self._pending >= self._limit:
                yield from self._collect(block=True)
            checkpointed = None if known is None else entry.line in known
            self._start(lambda e=entry, c=checkpointed: run_video(self.opts, e,
                                                                   self.models, c),
                        ("video", state, entry))
            yield from self._collect(block=False)
        if not state.entries:
            yield from self._unit_done(state)

    def drain(self) -> Iterator[tuple[int, UnitSummary]]:
        """Waits for everything started; yields the units it finishes."""
        while self._pending:
            yield from self._collect(block=True)

    def _start(self, work: Callable[[], Any], tag: tuple) -> None:
        self._pending += 1
        if self._pool is None:
            future: cf.Future = cf.Future()
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - re-raised by _collect
                future.set_exception(exc)
            self._done.put((tag, future))
        else:
            self._pool.submit(work).add_done_callback(lambda f: self._done.put((tag, f)))

    def _collect(self, block: bool) -> Iterator[tuple[int, UnitSummary]]:
        while self._pending:
            try:
                tag, future = self._done.get(block=block)
            except queue.Empty:
                return
            self._pending -= 1
            block = False
            try:
                if tag[0] == "video":
                    yield from self._video_done(tag[1], tag[2], future.result())
                else:
                    yield from self._commit_done(tag[1], future)
            except BaseException:
                self.close()  # a fault stops the run: nothing more starts, nothing is left running
                raise

    def _video_done(self, state: _Unit, entry: PlanEntry,
                    done: VideoDone) -> Iterator[tuple[int, UnitSummary]]:
        self.on_video(done)
        state.results[entry.line] = done.result
        state.remaining -= 1
        if state.remaining == 0:
            yield from self._unit_done(state)

    def _unit_done(self, state: _Unit) -> Iterator[tuple[int, UnitSummary]]:
        if state.unit.whole:  # the whole shard is here: commit it now, on the pool
            unit, entries, results = state.unit, state.entries, state.results
            self._start(lambda: commit_shard(self.opts.output, unit.shard, entries, results),
                        ("commit", state))
            return
        yield state.unit.shard, self._summary(state)

    def _commit_done(self, state: _Unit, future: cf.Future) -> Iterator[tuple[int, UnitSummary]]:
        summary = self._summary(state)
        try:
            future.result()
            summary.committed = True
        except ShardIncomplete as refusal:
            record_refusal(self.opts.output, refusal)
            summary.refused = True
        except Exception as exc:
            tar = layout.shard_tar(self.opts.output, state.unit.shard)
            fault = as_fault(exc, f"committing {tar}")
            if fault is None:
                raise
            raise fault from exc
        yield state.unit.shard, summary

    @staticmethod
    def _summary(state: _Unit) -> UnitSummary:
        ok = sum(r.get("status") == OK for r in state.results.values())
        return UnitSummary(state.unit.first, state.unit.count, ok, len(state.results) - ok)


def thread_models(make: Callable[[], Models]) -> Callable[[], Models]:
    """``make()`` once per thread, on first use: a flow engine holds per-call buffers."""
    local = threading.local()

    def get() -> Models:
        if not hasattr(local, "models"):
            local.models = make()
        return local.models
    return get
