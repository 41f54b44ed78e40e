"""The Beam job: plan entries -> per-video processing -> per-shard commit."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from actprep.pipelines import layout, storage
from actprep.pipelines.commit import commit_shard
from actprep.pipelines.options import RunOptions
from actprep.pipelines.models import Models, make_flow_engine, make_vggish
from actprep.pipelines.process import load_result, process_entry
from actprep.pipelines.retry import retryable
from actprep.pipelines.runlock import worker_heartbeat
from actprep.pipelines.stageclock import STAGES, StageClock
from actprep.schemas.index import OK
from actprep.schemas.plan import PlanEntry

NAMESPACE = "actprep"
log = logging.getLogger(__name__)


class ProcessVideos(beam.DoFn):
    """One plan entry in, ``(shard, result row)`` out. A video checkpointed by an earlier
    attempt is not processed again."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.ok = Metrics.counter(NAMESPACE, "videos_ok")
        self.failed = Metrics.counter(NAMESPACE, "videos_failed")
        self.reused = Metrics.counter(NAMESPACE, "videos_reused")
        self.processed = Metrics.counter(NAMESPACE, "videos_processed")
        self.frames = Metrics.counter(NAMESPACE, "frames")
        self.flows = Metrics.counter(NAMESPACE, "flow_pairs")
        self.vggish_examples = Metrics.counter(NAMESPACE, "vggish_examples")
        # milliseconds spent in each stage, summed over videos and workers
        self.stage_ms = {name: Metrics.counter(NAMESPACE, f"{name}_ms") for name in STAGES}
        self.video_ms = Metrics.distribution(NAMESPACE, "video_ms")
        self.shared = Shared()
        self.models = None

    def setup(self) -> None:
        """Heavy per-worker state. The flow engine holds per-call buffers (OpenCV), so each
        DoFn instance has its own; VGGish is read-only at inference, so the worker process
        loads it once and its threads share it."""
        vggish = None
        if "vggish" in self.opts.modalities:
            vggish = self.shared.acquire(lambda: make_vggish(self.opts), tag="vggish")
        self.models = Models(flow=make_flow_engine(self.opts), vggish=vggish)
        log.info("actprep worker ready: %s", self.models.ran() or "no models")

    def process(self, entry: PlanEntry) -> Iterator[tuple[int, dict]]:
        worker_heartbeat(self.opts.output, self.opts.lock_token)
        result = load_result(self.opts, entry)
        attempts = 1
        if result is not None and self.opts.retry_failed and retryable(result):
            attempts, result = (result.get("attempts") or 1) + 1, None
        if result is not None:
            self.reused.inc()
        else:
            self.processed.inc()
            clock = StageClock()
            result = process_entry(entry, self.opts, self.models, attempts, clock)
            for name, seconds in clock.seconds.items():
                self.stage_ms[name].inc(int(seconds * 1000))
            self.video_ms.update(int(sum(clock.seconds.values()) * 1000))
            self.frames.inc(result.get("frames") or 0)
            self.flows.inc(result.get("flow_pairs") or 0)
            self.vggish_examples.inc(result.get("vggish_examples") or 0)
        (self.ok if result["status"] == OK else self.failed).inc()
        yield entry.shard, result


class CommitShards(beam.DoFn):
    """All results of one shard in, the committed shard's summary out."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.shards = Metrics.counter(NAMESPACE, "shards_committed")

    def process(self, element: tuple[int, Iterable[dict]]) -> Iterator[dict]:
        shard, results = element
        worker_heartbeat(self.opts.output, self.opts.lock_token)
        summary = commit_shard(self.opts, shard, results)
        self.shards.inc()
        yield summary


def build(pipeline: beam.Pipeline, opts: RunOptions, skip: frozenset[int]) -> None:
    plan_path = storage.join(opts.output, layout.PLAN)
    (pipeline
     | "ReadPlan" >> beam.io.ReadFromText(plan_path)
     | "Parse" >> beam.Map(PlanEntry.from_json)
     | "SkipCommitted" >> beam.Filter(lambda e, done: e.shard not in done, skip)
     | "Spread" >> beam.Reshuffle()
     | "Process" >> beam.ParDo(ProcessVideos(opts))
     | "ByShard" >> beam.GroupByKey()
     | "Commit" >> beam.ParDo(CommitShards(opts)))


LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner",
                 "SwitchingDirectRunner", "PrismRunner", "prism")


def runner_name(beam_args: list[str]) -> str | None:
    """The ``--runner`` these Beam options ask for (None: Beam's default, the DirectRunner)."""
    return PipelineOptions(beam_args).get_all_options().get("runner")


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
    return None


def run_pipeline(opts: RunOptions, beam_args: list[str], skip: frozenset[int],
                 wait: bool = True, submitted: Callable[[Any], None] = lambda result: None):
    """Runs the job; returns Beam's PipelineResult. ``submitted(result)`` is called as soon
    as the runner has the job (for a service, once it accepted it); then, with ``wait``,
    the job is waited for."""
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build(pipeline, opts, skip)
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
