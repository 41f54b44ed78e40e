"""``actprep run``: plan, run the Beam job with a progress display, print the summary."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Any

from apache_beam.runners.runner import PipelineState

from actprep.extractors import ffmpeg_bin
from actprep.extractors.ffmpeg_bin import FfmpegError
from actprep.commands import exitcodes
from actprep.pipelines import layout, storage
from actprep.pipelines.commit import drop_work
from actprep.pipelines.faults import EnvironmentFault, fault_in_text, find_fault
from actprep.pipelines.job import (dry_run, job_counters, run_pipeline, runner_problem,
                                   runs_locally)
from actprep.pipelines.options import RunOptions
from actprep.pipelines.models import check_models_here, check_models_remote
from actprep.pipelines.planfile import PlanError
from actprep.pipelines.planner import PlanMismatch, load_or_create_plan
from actprep.commands.progress import ProgressMonitor, summarize
from actprep.pipelines.repair import damaged_shards, undo_commit
from actprep.pipelines.retry import reopen_shards_with_failures
from actprep.pipelines.runlock import LockLost, RunLock, RunLocked
from actprep.pipelines.stageclock import STAGES
from actprep.schemas.labels import LabelError
from actprep.schemas.manifest import ManifestError
from actprep.schemas.index import INTERNAL
from actprep.schemas import naming
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import ShardSpan


SUMMARY_GROUPS = 10  # failure reasons the end summary lists; it says how many more there are


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(opts: RunOptions, beam_args: list[str]) -> int:
    """Returns the process exit status (``exitcodes``). An environment fault met anywhere
    (disk full, read-only output, storage errors...) ends the run with one line naming it;
    nothing of it is recorded as a video's failure, and a rerun resumes."""
    remote = not runs_locally(beam_args)
    problem = runner_problem(beam_args) or (remote and local_paths_problem(opts))
    if problem:
        _say(f"actprep: error: {problem}")
        return exitcodes.USAGE
    try:
        ffmpeg = ffmpeg_bin.use(opts.ffmpeg)
        # bad settings or weight files fail here, before any work
        lines = check_models_remote(opts) if remote else check_models_here(opts)
    except (FfmpegError, ValueError, ImportError, FileNotFoundError) as exc:
        _say(f"actprep: error: {exc}")
        return exitcodes.USAGE
    opts = dataclasses.replace(opts, ffmpeg_version=ffmpeg.version)
    for line in [ffmpeg.describe(), *lines]:
        _say(f"actprep: {line}")
    try:
        return _run(opts, beam_args, remote)
    except LockLost as exc:  # another run has the output now: stop, as if it had been first
        _say(f"actprep: error: {exc.message}")
        return exitcodes.LOCKED
    except Exception as exc:
        # the runner may wrap a worker's fault, or only copy its text (Dataflow)
        fault = find_fault(exc) or fault_in_text(str(exc))
        if fault is None:
            raise
        raise EnvironmentFault(fault, resume=True) from exc


def local_paths_problem(opts: RunOptions) -> str | None:
    """Local paths given to a remote runner, whose workers cannot see this machine's disk."""
    paths = {"--manifest": opts.manifest, "--video-root": opts.video_root,
             "--output": opts.output, "--classes": opts.classes,
             "--vggish-weights": opts.vggish_weights, "--vggish-pca": opts.vggish_pca}
    if opts.vggish_hub and not opts.vggish_hub.startswith(("http://", "https://")):
        paths["--vggish-hub"] = opts.vggish_hub
    local = [f"{name} {path}" for name, path in paths.items() if path and storage.is_local(path)]
    if not local:
        return None
    return (f"a remote runner's workers cannot read this machine's disk: {', '.join(local)}; "
            f"give gs:// paths")


def _run(opts: RunOptions, beam_args: list[str], remote: bool) -> int:
    fresh = storage.is_local(opts.output) and not os.path.exists(opts.output)
    storage.makedirs(opts.output)
    try:
        lock = RunLock(opts.output, remote_job=remote).acquire()
    except RunLocked as exc:
        _say(f"actprep: error: {exc}")
        return exitcodes.LOCKED
    job = _Job(remote, wait=opts.wait or not remote)
    try:
        code = _run_locked(dataclasses.replace(opts, lock_token=lock.token), beam_args, job)
    except BaseException:
        if job.may_still_run():
            lock.hand_over()
            _say("actprep: the job may go on without this launcher; its workers keep the "
                 "lock. Rerun this command once it has ended (or after cancelling it)")
        else:
            lock.release()
        raise
    if not job.wait:
        lock.hand_over()
    else:
        lock.release()
    if code == exitcodes.USAGE and fresh:  # bad input: leave no empty output folder behind
        with contextlib.suppress(OSError):
            os.rmdir(opts.output)
    return code


class _Job:
    """What the launcher knows of the job it started: whether a service took it, hence
    whether it may run on after this process stops (the lock is then left to it)."""

    def __init__(self, remote: bool, wait: bool):
        self.remote = remote
        self.wait = wait  # for the job's end (a local job always: it dies with us)
        self.result: Any = None

    def submitted(self, result: Any) -> None:
        self.result = result

    def may_still_run(self) -> bool:
        if not self.remote or self.result is None:
            return False
        try:
            return not PipelineState.is_terminal(self.result.state)
        except Exception:  # noqa: BLE001 - the service cannot be asked: assume it runs
            return True


def _job_id(result: Any) -> str:
    try:
        return f"job {result.job_id()}"
    except Exception:  # noqa: BLE001 - a dry run or another runner
        return "no job id reported"


def _run_locked(opts: RunOptions, beam_args: list[str], job: "_Job") -> int:
    try:
        plan = load_or_create_plan(opts)
    except (ManifestError, LabelError, PlanMismatch, PlanError, FileNotFoundError) as exc:
        _say(f"actprep: error: {exc}")
        return exitcodes.USAGE
    for folder in (opts.output, storage.join(opts.output, layout.INDEX_DIR)):
        storage.drop_temporaries(folder)  # of killed writers: we hold the lock
    _undo_damaged(opts.output, plan.spans)
    finished = _finish_interrupted_commits(opts.output)
    if finished:
        _say(f"actprep: finished the interrupted commit of {len(finished)} shards")
    reopened = reopen_shards_with_failures(opts.output, media_too=opts.retry_failed)
    if opts.retry_failed:
        _say(f"actprep: --retry-failed: reopened {len(reopened)} committed shards holding "
             f"failed videos")
    elif reopened:
        _say(f"actprep: reopened {len(reopened)} committed shards to retry the videos that "
             f"met an internal error")
    skip = layout.committed_shards(opts.output)
    todo = [s for s in plan.spans if s.shard not in skip]
    videos = sum(s.count for s in todo)
    _say(f"actprep: {plan.entries} videos in {plan.shards} shards, {len(plan.labels)} "
         f"classes ({plan.labels.source}); plan {'reused' if plan.reused else 'written'}; "
         f"{plan.shards - len(todo)} shards already committed, {videos} videos to do")
    start = time.monotonic()
    if todo:
        opts = job_options(opts, job.remote)
        monitor = None
        if opts.progress and not job.remote:
            monitor = ProgressMonitor(plan.entries, already=plan.entries - videos)
            monitor.start()
        try:
            result = run_pipeline(opts, beam_args, [s.shard for s in todo], job.wait,
                                  job.submitted)
        finally:
            if monitor:
                monitor.stop()
        if not job.wait:
            _say(f"actprep: job submitted ({_job_id(result)}); it commits its shards and "
                 f"keeps {storage.join(opts.output, 'run.lock')} fresh itself. Follow it in "
                 f"the Dataflow console; 'actprep stats {opts.output}' reads what is "
                 f"committed; rerun this command to resume it if it fails")
            return exitcodes.OK
        if dry_run(beam_args):
            _say("actprep: dry run: the job was built and checked, not run")
            return exitcodes.OK
        counters = job_counters(result)
        _say(f"actprep: this run processed {counters.get('videos_processed', 0)} videos, "
             f"reused {counters.get('videos_reused', 0)} checkpointed by an earlier run and "
             f"recorded {counters.get('videos_unprocessable', 0)} manifest failures; "
             f"{counters.get('shards_committed', 0)} shards committed")
        stages = stage_line(counters)
        if stages:
            _say(f"actprep: time per stage, summed over workers: {stages}")
    else:
        _say("actprep: nothing to do: every shard is committed")
    elapsed = time.monotonic() - start
    _drop_empty_work_dir(opts.output)
    totals = summarize(opts.output)
    _print_summary(opts.output, totals, elapsed if todo else None, plan.entries)
    problems = plan_problems(opts.output, plan.spans, totals["shard_table"])
    for line in problems[:20]:
        _say(f"actprep: error: {line}")
    if problems:
        more = f" ({len(problems) - 20} more not shown)" if len(problems) > 20 else ""
        _say(f"actprep: error: {len(problems)} planned shards are not committed as planned"
             f"{more}; rerun the same command to redo them")
        return exitcodes.ERROR
    return _verdict(opts, totals, plan.entries)


def _verdict(opts: RunOptions, totals: dict, planned: int) -> int:
    """OK, or FAILURES (with the reason said) when a bug hit videos or more rows failed
    than ``--max-failed-fraction`` allows."""
    code = exitcodes.OK
    bugs = totals["failures_by_stage"].get(INTERNAL, 0)
    if bugs:
        _say(f"actprep: error: {bugs} videos met an internal error: a bug in actprep, not "
             f"their fault. Their tracebacks are in {layout.internal_dir(opts.output)}; "
             f"please report it. A rerun retries them")
        code = exitcodes.FAILURES
    failed = totals["samples_failed"]
    if planned and failed / planned > opts.max_failed_fraction:
        _say(f"actprep: error: {failed} of {planned} rows failed ({failed / planned:.0%}), "
             f"more than --max-failed-fraction {opts.max_failed_fraction:g} allows; the "
             f"shards are committed. Check the failures above (and the --dataset)")
        code = exitcodes.FAILURES
    return code


def job_options(opts: RunOptions, remote: bool) -> RunOptions:
    """The runner's choices left open by the options: a local job runs a whole shard per
    element on every core; a remote one single videos, one at a time per harness thread."""
    workers = opts.workers or (1 if remote else os.cpu_count() or 1)
    unit_size = opts.unit_size or (1 if remote else None)
    return dataclasses.replace(opts, workers=workers, unit_size=unit_size)


def plan_problems(output: str, spans: list[ShardSpan], shard_table: list[dict]) -> list[str]:
    """The index against the plan, shard by shard (``shard_table``: the summary's rows per
    committed shard): every planned shard committed with exactly its planned rows, and
    nothing else committed."""
    rows = {naming.shard_number(s["shard"]): s["ok"] + s["failed"] for s in shard_table}
    problems = []
    for span in spans:
        name = shard_name(span.shard)
        if span.shard not in rows:
            problems.append(f"{name} is not committed: {_refusal(output, span.shard)}")
        elif rows[span.shard] != span.count:
            problems.append(f"{name}: its index holds {rows[span.shard]} rows, the plan "
                            f"{span.count}")
    problems += [f"{shard_name(n)} is committed but not in the plan"
                 for n in sorted(set(rows) - {s.shard for s in spans})]
    return problems


def _refusal(output: str, shard: int) -> str:
    text = storage.read_text_if_exists(layout.incomplete_path(output, shard))
    if text is None:
        return "no result of it reached its commit"
    try:
        return json.loads(text)["message"]
    except (ValueError, KeyError, TypeError):
        return f"its commit was refused ({layout.incomplete_path(output, shard)})"


def stage_line(counters: dict[str, int]) -> str:
    """The stage times of a run's counters, largest first with their share, e.g.
    "flow 81.0 s (62%), decode 20.1 s (15%), ..."; "" when the runner reported none."""
    ms = {name: counters.get(f"{name}_ms", 0) for name in STAGES}
    total = sum(ms.values())
    if not total:
        return ""
    ranked = sorted((v, n) for n, v in ms.items() if v)[::-1]
    return ", ".join(f"{n} {v / 1000:.1f} s ({v / total:.0%})" for v, n in ranked)


def _undo_damaged(output: str, spans: list[ShardSpan]) -> None:
    """Committed shards that fail their check (``repair``) are undone, to be redone."""
    damaged = damaged_shards(output, spans)
    for shard, problem in sorted(damaged.items()):
        _say(f"actprep: {shard_name(shard)} is damaged ({problem}): redoing it")
        undo_commit(output, shard)


def _finish_interrupted_commits(output: str) -> list[int]:
    """Committed shards whose work files are still there (a commit killed after its tar
    was in place): their work is dropped now."""
    committed = layout.committed_shards(output)
    done = sorted(layout.work_shards(output) & committed)
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
    groups = list(totals["failures"].items())
    for reason, count in groups[:SUMMARY_GROUPS]:
        _say(f"  failed x{count}: {reason}")
    if len(groups) > SUMMARY_GROUPS:
        rest = sum(count for _, count in groups[SUMMARY_GROUPS:])
        _say(f"  ... and {len(groups) - SUMMARY_GROUPS} more failure reasons ({rest} rows): "
             f"'actprep stats {output}' lists them all")
    if done != planned:
        _say(f"actprep: error: the index holds {done} rows, the plan {planned}")
    _say(f"actprep: output in {output} (shards shard-*.tar, index/*.parquet, labels.json)")


def _drop_empty_work_dir(output: str) -> None:
    """The work area holds checkpoints of unfinished shards only; gone when all commit."""
    if storage.is_local(output):
        for folder in (layout.internal_dir(output), os.path.join(output, layout.WORK_DIR)):
            try:
                os.rmdir(folder)
            except OSError:
                pass
