"""``actprep run``: plan, run the Beam job with a progress display, print the summary."""
from __future__ import annotations

import os
import sys
import time

from actprep.extractors.ffmpeg_bin import ffmpeg_source
from actprep.pipelines import layout, storage
from actprep.pipelines.commit import drop_work
from actprep.pipelines.job import job_counters, run_pipeline
from actprep.pipelines.options import RunOptions
from actprep.pipelines.models import load_models
from actprep.pipelines.planner import PlanMismatch, load_or_create_plan
from actprep.pipelines.progress import ProgressMonitor, summarize
from actprep.pipelines.retry import reopen_shards_with_failures
from actprep.pipelines.runlock import RunLock, RunLocked
from actprep.schemas.labels import LabelError
from actprep.schemas.manifest import ManifestError


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(opts: RunOptions, beam_args: list[str]) -> int:
    """Returns the process exit code: 0 when every row ended as a sample or a recorded
    failure, 2 for bad input (manifest, class list, options), 3 when another run is
    writing the same output."""
    try:
        models = load_models(opts)  # bad settings or weight files fail here, before any work
    except (ValueError, ImportError, FileNotFoundError) as exc:
        _say(f"actprep: error: {exc}")
        return 2
    if models.flow is not None:
        _say(f"actprep: flow: TV-L1 {opts.flow_preset} on {models.flow.backend} "
             f"({models.flow.device})")
    if models.vggish is not None:
        _say(f"actprep: vggish: {models.vggish.backend} ({models.vggish.device}), hop "
             f"{models.vggish.hop_seconds:g} s{', with PCA' if models.vggish.pca else ''}")
    del models
    storage.makedirs(opts.output)
    try:
        lock = RunLock(opts.output).acquire()
    except RunLocked as exc:
        _say(f"actprep: error: {exc}")
        return 3
    try:
        return _run_locked(opts, beam_args)
    finally:
        lock.release()


def _run_locked(opts: RunOptions, beam_args: list[str]) -> int:
    try:
        plan = load_or_create_plan(opts)
    except (ManifestError, LabelError, PlanMismatch, FileNotFoundError) as exc:
        _say(f"actprep: error: {exc}")
        return 2
    _say(f"actprep: {ffmpeg_source()}")
    for folder in (opts.output, storage.join(opts.output, layout.INDEX_DIR)):
        storage.drop_temporaries(folder)  # of killed writers: we hold the lock
    finished = _finish_interrupted_commits(opts.output)
    if finished:
        _say(f"actprep: finished the interrupted commit of {len(finished)} shards")
    if opts.retry_failed:
        reopened = reopen_shards_with_failures(opts.output)
        _say(f"actprep: --retry-failed: reopened {len(reopened)} committed shards holding "
             f"failed videos")
    skip = layout.committed_shards(opts.output)
    todo = sum(e.shard not in skip for e in plan.entries)
    _say(f"actprep: {len(plan.entries)} videos in {plan.shards} shards, {len(plan.labels)} "
         f"classes ({plan.labels.source}); plan {'reused' if plan.reused else 'written'}; "
         f"{len(skip)} shards already committed, {todo} videos to do")
    start = time.monotonic()
    counters: dict[str, int] = {}
    if todo:
        monitor = None
        if opts.progress and storage.is_local(opts.output):
            monitor = ProgressMonitor(opts.output, len(plan.entries))
            monitor.start()
        try:
            counters = job_counters(run_pipeline(opts, beam_args, skip))
        finally:
            if monitor:
                monitor.stop()
        _say(f"actprep: this run processed {counters.get('videos_processed', 0)} videos and "
             f"reused {counters.get('videos_reused', 0)} checkpointed by an earlier run; "
             f"{counters.get('shards_committed', 0)} shards committed")
    else:
        _say("actprep: nothing to do: every shard is committed")
    elapsed = time.monotonic() - start
    _drop_empty_work_dir(opts.output)
    _print_summary(opts.output, summarize(opts.output), elapsed if todo else None,
                   len(plan.entries))
    return 0


def _finish_interrupted_commits(output: str) -> list[int]:
    """Committed shards whose work files are still there (a commit killed after its tar
    was in place): their work is dropped now."""
    work = storage.join(output, layout.WORK_DIR)
    committed = layout.committed_shards(output)
    names = {p[len(work):].lstrip("/").split("/", 1)[0] for p in storage.files_in(work)}
    shards = sorted(int(n[len("shard-"):]) for n in names
                    if n.startswith("shard-") and n[len("shard-"):].isdigit())
    done = [s for s in shards if s in committed]
    for shard in done:
        drop_work(output, shard)
    return done


def _print_summary(output: str, totals: dict, elapsed: float | None, planned: int) -> None:
    """``elapsed`` is None when this run had nothing to do."""
    done = totals["samples_ok"] + totals["samples_failed"]
    timing = ""
    if elapsed:
        timing = f"; this run {elapsed:.1f} s"
    _say(f"actprep: {totals['samples_ok']} samples ok, {totals['samples_failed']} failed "
         f"(of {planned} manifest rows) in {totals.get('shards', 0)} shards; "
         f"{totals['frames']} frames, {totals.get('hours', 0) * 3600:.0f} s of video{timing}")
    for reason, count in list(totals["failures"].items())[:10]:
        _say(f"  failed x{count}: {reason}")
    if done != planned:
        _say(f"actprep: warning: the index holds {done} rows, the plan {planned}")
    _say(f"actprep: output in {output} (shards shard-*.tar, index/*.parquet, labels.json)")


def _drop_empty_work_dir(output: str) -> None:
    """The work area holds checkpoints of unfinished shards only; gone when all commit."""
    if storage.is_local(output):
        try:
            os.rmdir(os.path.join(output, layout.WORK_DIR))
        except OSError:
            pass
