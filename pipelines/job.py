"""The Beam job: shards to do -> work units -> processing (and, for a whole-shard unit,
its commit) -> per-shard commit of what is left.

Only small records cross Beam's shuffles: shard numbers, units (a few ints each: a slice
of the plan file) and unit summaries, never plan entries, results or frames; so the
DirectRunner, which holds every shuffled element in memory, stays flat however many rows
the manifest has, and Dataflow spreads units (single videos there) over its workers.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, TestOptions
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from actprep.extractors import ffmpeg_bin
from actprep.pipelines import layout, storage
from actprep.pipelines.commit import ShardIncomplete, commit_shard, record_refusal
from actprep.pipelines.faults import as_fault
from actprep.pipelines.models import Models, make_flow_engine, make_vggish
from actprep.pipelines.options import RunOptions
from actprep.pipelines.planfile import read_spans, shard_entries, units_of_shard
from actprep.pipelines.tally import TALLY
from actprep.pipelines.runlock import worker_heartbeat
from actprep.pipelines.stageclock import STAGES
from actprep.pipelines.units import UnitRunner, UnitSummary, VideoDone, thread_models
from actprep.schemas.index import OK
from actprep.schemas.plan import WorkUnit

NAMESPACE = "actprep"
log = logging.getLogger(__name__)


class ExpandShards(beam.DoFn):
    """A shard number in, its work units out (``opts.unit_size`` videos each; None: the
    whole shard as one unit)."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.spans: list = []

    def setup(self) -> None:
        self.spans = read_spans(self.opts.output)

    def process(self, shard: int) -> Iterator[WorkUnit]:
        yield from units_of_shard(self.opts.output, self.spans[shard], self.opts.unit_size)


class ProcessUnits(beam.DoFn):
    """A work unit in, ``(shard, unit summary)`` out once its videos are done (and, for a
    whole shard, committed). Videos run on ``opts.workers`` threads; a video checkpointed
    by an earlier attempt is not processed again."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.ok = Metrics.counter(NAMESPACE, "videos_ok")
        self.failed = Metrics.counter(NAMESPACE, "videos_failed")
        self.reused = Metrics.counter(NAMESPACE, "videos_reused")
        self.processed = Metrics.counter(NAMESPACE, "videos_processed")
        self.unprocessable = Metrics.counter(NAMESPACE, "videos_unprocessable")  # manifest
        self.frames = Metrics.counter(NAMESPACE, "frames")
        self.flows = Metrics.counter(NAMESPACE, "flow_pairs")
        self.vggish_examples = Metrics.counter(NAMESPACE, "vggish_examples")
        # milliseconds spent in each stage, summed over videos and workers
        self.stage_ms = {name: Metrics.counter(NAMESPACE, f"{name}_ms") for name in STAGES}
        self.video_ms = Metrics.distribution(NAMESPACE, "video_ms")
        self.shared = Shared()
        self.runner: UnitRunner | None = None

    def setup(self) -> None:
        """Heavy per-worker state. Each video thread builds its own flow engine (OpenCV
        holds per-call buffers) on first use; VGGish is read-only at inference, so the
        worker process loads it once and its threads share it."""
        ffmpeg_bin.use(self.opts.ffmpeg, expect_version=self.opts.ffmpeg_version)
        vggish = None
        if "vggish" in self.opts.modalities:
            vggish = self.shared.acquire(lambda: make_vggish(self.opts), tag="vggish")

        def make() -> Models:
            models = Models(flow=make_flow_engine(self.opts), vggish=vggish)
            log.info("actprep video thread ready: %s", models.ran() or "no models")
            return models
        self.runner = UnitRunner(self.opts, self.opts.workers or 1, thread_models(make),
                                 self._video_done)

    def process(self, unit: WorkUnit) -> Iterator[tuple[int, dict]]:
        worker_heartbeat(self.opts.output, self.opts.lock_token)
        for shard, summary in self.runner.submit(unit):
            yield shard, summary.to_dict()

    def finish_bundle(self) -> Iterator[Any]:
        for shard, summary in self.runner.drain():
            yield GlobalWindows.windowed_value((shard, summary.to_dict()))

    def teardown(self) -> None:
        if self.runner is not None:
            self.runner.close()

    def _video_done(self, done: VideoDone) -> None:
        """Counters and progress of one finished video (on the bundle's thread)."""
        worker_heartbeat(self.opts.output, self.opts.lock_token)
        result = done.result
        if done.source == "plan":
            self.unprocessable.inc()
        elif done.source == "checkpoint":
            self.reused.inc()
        else:
            self.processed.inc()
            for name, seconds in done.seconds.items():
                self.stage_ms[name].inc(int(seconds * 1000))
            self.video_ms.update(int(sum(done.seconds.values()) * 1000))
            self.frames.inc(result.get("frames") or 0)
            self.flows.inc(result.get("flow_pairs") or 0)
            self.vggish_examples.inc(result.get("vggish_examples") or 0)
        (self.ok if result["status"] == OK else self.failed).inc()
        TALLY.add(result["status"] == OK)


class CommitShards(beam.DoFn):
    """A shard's unit summaries in; the shard committed unless a whole-shard unit did it
    already. The units must cover the shard's plan exactly, and its results must be its
    planned entries (``commit.gather_results``); otherwise the shard is refused: not
    committed, the reason left in its work folder, redone by a rerun."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.committed = Metrics.counter(NAMESPACE, "shards_committed")
        self.refused = Metrics.counter(NAMESPACE, "shards_refused")
        self.spans: list = []

    def setup(self) -> None:
        self.spans = read_spans(self.opts.output)

    def process(self, element: tuple[int, Iterable[dict]]) -> Iterator[dict]:
        shard, summaries = element
        summaries = [UnitSummary(**s) for s in summaries]
        worker_heartbeat(self.opts.output, self.opts.lock_token)
        if any(s.refused for s in summaries):
            self.refused.inc()  # recorded by the unit that tried
            return
        if any(s.committed for s in summaries) or \
                storage.exists(layout.shard_tar(self.opts.output, shard)):
            self.committed.inc()  # by its whole-shard unit, or by an earlier attempt
            yield {"shard": shard, "ok": sum(s.ok for s in summaries),
                   "failed": sum(s.failed for s in summaries)}
            return
        entries = shard_entries(self.opts.output, self.spans[shard])
        covered = set()
        for s in summaries:
            covered.update(range(s.first, s.first + s.count))
        try:
            uncovered = [e.key for i, e in enumerate(entries) if i not in covered]
            if uncovered:
                raise ShardIncomplete(shard, uncovered, [])
            summary = commit_shard(self.opts.output, shard, entries)
        except ShardIncomplete as refusal:
            log.error("%s", refusal)
            record_refusal(self.opts.output, refusal)
            self.refused.inc()
            return
        except Exception as exc:
            fault = as_fault(exc, f"committing {layout.shard_tar(self.opts.output, shard)}")
            if fault is None:
                raise
            raise fault from exc
        self.committed.inc()
        yield summary


def build(pipeline: beam.Pipeline, opts: RunOptions, shards: list[int]) -> None:
    """The job over the planned shards ``shards`` (those not committed yet)."""
    (pipeline
     | "Shards" >> beam.Create(sorted(shards))  # Create spreads them (its own reshuffle)
     | "Units" >> beam.ParDo(ExpandShards(opts))
     | "Spread" >> beam.Reshuffle()
     | "Process" >> beam.ParDo(ProcessUnits(opts))
     | "ByShard" >> beam.GroupByKey()
     | "Commit" >> beam.ParDo(CommitShards(opts)))


LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner",
                 "SwitchingDirectRunner", "PrismRunner", "prism")


def runner_name(beam_args: list[str]) -> str | None:
    """The ``--runner`` these Beam options ask for (None: Beam's default, the DirectRunner)."""
    return PipelineOptions(beam_args).get_all_options().get("runner")


def dry_run(beam_args: list[str]) -> bool:
    """Whether Beam is asked to build and check the job without running it."""
    return bool(PipelineOptions(beam_args).view_as(TestOptions).dry_run)


def runs_locally(beam_args: list[str]) -> bool:
    """Whether these Beam options run the job inside this process (and its children), as
    opposed to a service (Dataflow) where the job outlives the launcher."""
    return runner_name(beam_args) in LOCAL_RUNNERS


DATAFLOW_RUNNERS = ("DataflowRunner", "dataflow", "TestDataflowRunner")


def runner_problem(beam_args: list[str]) -> str | None:
    """Why the chosen runner cannot run from this installation, or None: checked before
    any planning, so a missing extra is one clear line rather than a traceback later."""
    runner = runner_name(beam_args)
    if runner in DATAFLOW_RUNNERS:
        try:
            import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
        except ImportError as exc:
            return (f"--runner {runner} needs Beam's Google Cloud extras: pip install "
                    f"'actprep[gcp]' ({exc})")
    if runner in LOCAL_RUNNERS:
        return direct_mode_problem(beam_args)
    return None


def direct_mode_problem(beam_args: list[str]) -> str | None:
    """Refuses the DirectRunner's multi-worker modes. Their workers talk to the runner
    over Beam's gRPC data channel, whose buffers a timer thread flushes every second
    without holding off the thread writing elements into them (Beam 2.77
    ``TimeBasedBufferingClosableOutputStream``): elements written meanwhile are dropped,
    and a flush in mid-element corrupts the next ones (None elements, runaway memory).
    ``multi_threading`` shows it (benchmarks/beam_modes.py); ``multi_processing`` flushes
    the same way on the runner's side only. actprep runs videos in parallel itself
    (``--workers``) on one in-memory worker."""
    direct = PipelineOptions(beam_args).view_as(DirectOptions)
    workers = direct.direct_num_workers
    mode = direct.direct_running_mode
    if mode in ("multi_threading", "multi_processing") and workers != 1:
        return (f"--direct_running_mode={mode} with {workers or 'all cores as'} workers can "
                f"lose or corrupt elements (Beam's data channel flushes from a timer thread "
                f"while workers write); actprep runs videos in parallel itself: drop the "
                f"option and use --workers N (default: every core)")
    return None


def run_pipeline(opts: RunOptions, beam_args: list[str], shards: list[int],
                 wait: bool = True, submitted: Callable[[Any], None] = lambda result: None):
    """Runs the job; returns Beam's PipelineResult. ``submitted(result)`` is called as soon
    as the runner has the job (for a service, once it accepted it); then, with ``wait``,
    the job is waited for."""
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build(pipeline, opts, shards)
    result = pipeline.run()
    submitted(result)
    if wait:
        result.wait_until_finish()
    return result


def job_counters(result) -> dict[str, int]:
    """actprep's Beam counters of a finished job, summed over steps (committed values where
    the runner reports them)."""
    totals: dict[str, int] = {}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001 - a runner without metrics: the summary says less
        return totals
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals
