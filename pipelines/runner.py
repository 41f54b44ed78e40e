"""``actprep run``: plan, run the Beam job with a progress display, print the summary."""
from __future__ import annotations

import os
import sys
import time

from actprep.extractors.ffmpeg_bin import ffmpeg_source
from actprep.pipelines import layout, storage
from actprep.pipelines.job import run_pipeline
from actprep.pipelines.options import RunOptions
from actprep.pipelines.models import load_models
from actprep.pipelines.planner import PlanMismatch, load_or_create_plan
from actprep.pipelines.progress import ProgressMonitor, summarize
from actprep.schemas.labels import LabelError
from actprep.schemas.manifest import ManifestError


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(opts: RunOptions, beam_args: list[str]) -> int:
    """Returns the process exit code: 0 when every row ended as a sample or a recorded
    failure, 2 for bad input (manifest, class list, options)."""
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
    try:
        plan = load_or_create_plan(opts)
    except (ManifestError, LabelError, PlanMismatch, FileNotFoundError) as exc:
        _say(f"actprep: error: {exc}")
        return 2
    _say(f"actprep: {ffmpeg_source()}")
    skip = layout.committed_shards(opts.output)
    todo = sum(e.shard not in skip for e in plan.entries)
    _say(f"actprep: {len(plan.entries)} videos in {plan.shards} shards, {len(plan.labels)} "
         f"classes ({plan.labels.source}); plan {'reused' if plan.reused else 'written'}; "
         f"{len(skip)} shards already committed, {todo} videos to do")
    start = time.monotonic()
    if todo:
        monitor = None
        if opts.progress and storage.is_local(opts.output):
            monitor = ProgressMonitor(opts.output, len(plan.entries))
            monitor.start()
        try:
            run_pipeline(opts, beam_args, skip)
        finally:
            if monitor:
                monitor.stop()
    else:
        _say("actprep: nothing to do: every shard is committed")
    elapsed = time.monotonic() - start
    _drop_empty_work_dir(opts.output)
    _print_summary(opts.output, summarize(opts.output), elapsed if todo else None,
                   len(plan.entries))
    return 0


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
