"""``actprep verify OUTPUT``: reads every shard of an output and checks it against its index
and plan, so a damaged copy, an unfinished run or a writer bug is found before training.

Checks, each reported as a problem with a ``kind``:

- the output as a whole: ``missing`` (a planned shard without its tar; says whether its work
  is pending under ``_work/``, i.e. the run is unfinished), ``unindexed`` (a tar without its
  index), ``orphan-index`` (an index without its tar), ``extra`` (files that are not part of
  an output, tars of shards outside the plan), ``plan`` (a damaged ``plan-shards.json``;
  per shard: unparseable plan lines, lines that are not the shard's);
- each index against the plan: ``index`` (one row per plan entry of the shard, same key,
  shard and label index; ok rows carry their member count, bytes and sha256, and their
  byte range ``tar_offset``/``tar_bytes`` on all ok rows or on none: older outputs lack it);
- each tar, streamed member by member (never a whole shard in memory): ``corrupt`` (not a
  valid tar to its end: truncation, bad header checksum, data after the end), ``header``
  (headers other than ``schemas.sample.tar_info``'s: mode 0444, mtime 0, uid/gid 0, no
  names, regular files, POSIX format), ``members`` / ``bytes`` / ``sha256`` (a sample
  against its index row), ``range`` (a sample of the right size whose members are not
  at the byte range its row records: a reader would seek to the wrong bytes), ``sample-missing`` (an ok row without members),
  ``sample-unindexed`` (members without an ok row, e.g. of a failed row), ``order``
  (members not contiguous or not in the documented order, samples not in key order),
  ``decode`` (a JPEG that does not decode, with the wrong channels or size; an ``.npy``
  that does not load, of the wrong dtype or shape), ``content`` (``.json`` whose ``key``
  differs, ``.cls`` other than the row's label index, unknown or misnumbered members,
  frame / flow / audio members the row does not account for); ``unreadable`` (I/O errors).

Shards are checked in parallel threads (JPEG decoding and hashing release the GIL), each
reading its own slice of the plan, through a bounded pool: memory holds the shards in flight,
never the whole plan or index, whatever the size of the output.
Exit status: 0 no problem, 1 problems, 2 bad usage or not an actprep output.

Here: the output's listing, the index against the plan, one shard's checks put together, and
the command. The strict tar reader is ``tarstream``, the member and sample checks
``samplecheck``, the report model ``problems``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time
from typing import Any, Iterator

import pyarrow as pa

from actprep.pipelines import layout, planfile, storage
from actprep.pipelines.bounded import imap
from actprep.reports.problems import Problem, Report, ShardResult
from actprep.reports.samplecheck import ShardScan
from actprep.reports.tarstream import TarCorrupt, TarReader
from actprep.schemas import naming
from actprep.schemas.index import FAILED, OK, read_index
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import PlanEntry, ShardSpan

_TOP_FILES = frozenset({naming.RUN, naming.PLAN, naming.PLAN_SHARDS, naming.LABELS, naming.LOCK})
_TOP_DIRS = frozenset({layout.INDEX_DIR, layout.WORK_DIR})


class NotAnOutput(Exception):
    """The folder is not an actprep output (no run.json or plan.jsonl)."""


# --------------------------------------------------------------------------- index checks

def index_problems(shard: str, rows: list[dict], entries: list[PlanEntry]) -> list[Problem]:
    """The index against the plan: one row per plan entry (by line) agreeing on key, shard
    and label index; ok rows with their member count, bytes and sha256; (key, line) order."""
    found: list[Problem] = []

    def add(key: str | None, detail: str) -> None:
        found.append(Problem(shard, key, "index", detail))
    planned = {e.line: e for e in entries}
    seen: dict[int, int] = {}
    for row in rows:
        line, key = row["line"], row["key"]
        seen[line] = seen.get(line, 0) + 1
        entry = planned.get(line)
        if entry is None:
            add(key, f"index row for manifest line {line} is not in this shard's plan")
            continue
        for field, want in (("key", entry.key), ("shard", shard),
                            ("label_index", entry.label_index)):
            if row[field] != want:
                add(key, f"line {line}: index {field} {row[field]!r}, plan {want!r}")
        if row["status"] not in (OK, FAILED):
            add(key, f"line {line}: status {row['status']!r}")
        elif row["status"] == OK and None in (row["members"], row["sample_bytes"],
                                              row["sample_sha256"]):
            add(key, f"line {line}: ok row without members, sample_bytes or sample_sha256")
    for line, count in sorted(seen.items()):
        if count > 1 and line in planned:
            add(planned[line].key, f"manifest line {line} has {count} index rows")
    for line in sorted(planned.keys() - seen.keys()):
        add(planned[line].key, f"manifest line {line} has no index row")
    ranged = [r.get("tar_offset") is not None and r.get("tar_bytes") is not None
              for r in rows if r["status"] == OK]
    if any(ranged) and not all(ranged):  # a commit records every ok row's range, or none
        add(None, f"{ranged.count(False)} of {len(ranged)} ok rows without tar_offset/"
                  f"tar_bytes")
    ok_keys = collections.Counter(r["key"] for r in rows if r["status"] == OK)
    for key in sorted(k for k, n in ok_keys.items() if n > 1):
        add(key, f"{ok_keys[key]} ok rows")
    if [(r["key"], r["line"]) for r in rows] != sorted((r["key"], r["line"]) for r in rows):
        add(None, "index rows are not in (key, line) order")
    return found


# ---------------------------------------------------------------------------- one shard

@dataclasses.dataclass(frozen=True)
class ShardJob:
    """What checking one planned shard needs: where its plan lines are (read by the job,
    so only the shards in flight hold theirs) and what the listing found for it."""

    output: str
    span: ShardSpan
    first_line: int  # line number in plan.jsonl of the shard's first entry
    has_tar: bool
    has_index: bool
    work: tuple[int, int]  # files, and result records among them, under _work/<shard>/
    modalities: frozenset[str]
    decode: bool

    @property
    def shard(self) -> int:
        return self.span.shard


def _plan_entries(job: ShardJob, name: str, result: ShardResult) -> list[PlanEntry] | None:
    """The shard's plan entries from its slice of the plan; lines that do not parse or are
    not the shard's become ``plan`` problems; None (a problem) if the slice is unreadable."""
    def problem(detail: str) -> None:
        result.problems.append(Problem(name, None, "plan", detail))
    span = job.span
    try:
        lines = planfile.read_lines(job.output, span.offset, span.length)
    except (planfile.PlanError, OSError) as exc:
        problem(f"plan lines unreadable: {exc}")
        return None
    entries = []
    for number, line in enumerate(lines, job.first_line):
        if not line.strip():
            continue
        try:
            entry = PlanEntry.from_json(line)
        except (ValueError, TypeError) as exc:
            problem(f"{layout.PLAN}:{number}: {exc}")
            continue
        if entry.shard != span.shard:
            problem(f"{layout.PLAN}:{number}: entry {entry.key} of {shard_name(entry.shard)} "
                    f"among the lines of {name}")
            continue
        entries.append(entry)
    if len(lines) != span.count:
        problem(f"{layout.PLAN_SHARDS} says {span.count} entries, {layout.PLAN} has "
                f"{len(lines)} lines there")
    return entries


def _load_rows(job: ShardJob, name: str, result: ShardResult) -> list[dict] | None:
    """The shard's index rows, or None (with a problem) when it cannot be read."""
    path = layout.shard_index(job.output, job.shard)
    try:
        data = storage.read_bytes(path)
        result.bytes += len(data)
        return read_index(pa.BufferReader(data)).to_pylist()
    except Exception as exc:  # ArrowInvalid, schema mismatch, OSError: all unreadable
        result.problems.append(Problem(name, None, "index", f"index {layout.INDEX_DIR}/{name}"
                                       f".parquet unreadable: {type(exc).__name__}: {exc}"))
        return None


def _pending_work(shard: int, planned: int, work: tuple[int, int]) -> str:
    """What ``_work/`` holds for an uncommitted shard, in words."""
    files, done = work
    if not files:
        return "no work under _work/ either"
    return (f"its work is pending under {layout.WORK_DIR}/{shard_name(shard)}/ ({done} of "
            f"{planned} videos done): the run is unfinished")


def check_shard(job: ShardJob) -> ShardResult:
    """Every check of one planned shard (tar, index, plan); never raises for bad data."""
    name = shard_name(job.shard)
    result = ShardResult(name)
    if not job.has_tar:
        result.problems.append(Problem(name, None, "missing", f"missing: planned, no tar; "
                                       f"{_pending_work(job.shard, job.span.count, job.work)}"))
        if job.has_index:
            result.problems.append(Problem(name, None, "orphan-index",
                                           f"orphan index: {layout.INDEX_DIR}/{name}.parquet "
                                           f"has no tar"))
        return result
    entries = _plan_entries(job, name, result)
    rows = None
    if job.has_index:
        rows = _load_rows(job, name, result)
        if rows is not None and entries is not None:
            result.problems += index_problems(name, rows, entries)
    else:
        result.problems.append(Problem(name, None, "unindexed", f"unindexed: no "
                                       f"{layout.INDEX_DIR}/{name}.parquet"))
    _scan_tar(job, name, rows, result)
    return result


def _scan_tar(job: ShardJob, name: str, rows: list[dict] | None, result: ShardResult) -> None:
    scan = ShardScan(name, rows, job.modalities, job.decode)
    reader = None
    try:
        with storage.FileSystems.open(layout.shard_tar(job.output, job.shard),
                                      compression_type="uncompressed") as stream:
            reader = TarReader(stream)
            for member, data in reader:
                scan.add(member, data)
        scan.finish(complete=True)
    except TarCorrupt as exc:
        scan.finish(complete=False)
        unread = len(scan.ok.keys() - scan.tallies.keys())
        tail = f"; ok samples not reached: {unread}" if rows else ""
        scan.problem(exc.key, "corrupt", f"{exc}{tail}")
    except OSError as exc:
        scan.problem(None, "unreadable", f"unreadable: {exc}")
    result.problems += scan.problems
    result.samples = len(scan.tallies)
    result.bytes += reader.offset if reader else 0
    result.checked = True


# ------------------------------------------------------------------------- the output

def _relative(output: str, path: str) -> str:
    return path[len(output):].lstrip("/\\").replace(os.sep, "/")


def _files(output: str) -> Iterator[str]:
    """Every file under ``output`` (hidden temporaries included), relative: one listing,
    streamed where local, so a large ``_work/`` is never held as a list of paths."""
    if storage.is_local(output):
        for folder, _, files in os.walk(output):
            for name in files:
                yield _relative(output, os.path.join(folder, name))
    else:
        yield from (_relative(output, p) for p in storage.files_in(output))


@dataclasses.dataclass
class Listing:
    """What one listing of the output found: shards with a tar and with an index, per
    shard its files and result records under ``_work/``, and ``extra`` problems."""

    tars: set[int]
    indexes: set[int]
    work: dict[int, tuple[int, int]]
    extra: list[Problem]


def list_output(output: str) -> Listing:
    """Lists the output once; files that are not part of an output are ``extra`` (folders
    other than index/ and _work/ count once)."""
    tars, indexes, extra, folders = set(), set(), [], set()
    work: dict[int, tuple[int, int]] = {}
    for rel in _files(output):
        head, _, rest = rel.partition("/")
        if not rest and (number := naming.tar_shard(rel)) is not None:
            tars.add(number)
        elif head == layout.WORK_DIR:
            if "/" in rest and (number := naming.work_shard(rest)) is not None:
                files, done = work.get(number, (0, 0))
                done += naming.result_line(rel.rsplit("/", 1)[-1]) is not None
                work[number] = (files + 1, done)
        elif not rest and rel in _TOP_FILES:
            continue
        elif head == layout.INDEX_DIR and (number := naming.index_shard(rest)) is not None:
            indexes.add(number)
        elif rest and head not in _TOP_DIRS:
            folders.add(head)
        else:
            extra.append(rel)
    problems = [Problem(None, None, "extra", f"extra file: {rel}") for rel in sorted(extra)]
    problems += [Problem(None, None, "extra", f"extra folder: {f}/") for f in sorted(folders)]
    return Listing(tars, indexes, work, problems)


def load_run(output: str) -> dict[str, Any]:
    """run.json; NotAnOutput without it or without plan.jsonl, or on a storage this
    installation cannot open."""
    unopenable = storage.unopenable(output)
    if unopenable:
        raise NotAnOutput(f"{output}: {unopenable}")
    run_path, plan_path = storage.join(output, layout.RUN), storage.join(output, layout.PLAN)
    for path in (run_path, plan_path):
        if not storage.exists(path):
            raise not_an_output(output, path.rsplit("/", 1)[-1])
    try:
        return json.loads(storage.read_text(run_path))
    except ValueError as exc:
        raise NotAnOutput(f"{run_path} is not JSON: {exc}") from None


def not_an_output(output: str, missing: str, command: str = "verify") -> NotAnOutput:
    """The error for a folder without ``missing`` (run.json, plan.jsonl). When outputs lie
    directly inside it (``actprep demo --output DIR`` writes DIR/shards), it names them
    (the first five) and the ``actprep COMMAND`` line to run on the first."""
    import shlex

    text = f"{output} is not an actprep output (no {missing})"
    inside = _outputs_inside(output)
    if not inside:
        return NotAnOutput(text)
    held = f"it holds one: {inside[0]}" if len(inside) == 1 else (
        f"it holds {len(inside)}: {', '.join(inside[:5])}" + (" ..." if len(inside) > 5 else ""))
    return NotAnOutput(f"{text}; {held}. Try: actprep {command} {shlex.quote(inside[0])}")


def _outputs_inside(folder: str, look_at: int = 10_000) -> list[str]:
    """The actprep outputs directly inside a local ``folder`` (run.json in an immediate
    subfolder; nothing deeper is searched), for a user who named the folder above one.
    Only the first ``look_at`` entries are looked at, so the cost stays bounded when
    ``folder`` is a flat folder of a million videos; gs:// is not listed."""
    if not storage.is_local(folder) or not os.path.isdir(folder):
        return []
    found = []
    try:
        with os.scandir(folder) as entries:
            for n, entry in enumerate(entries):
                if n >= look_at:
                    break
                try:
                    if entry.is_dir() and os.path.isfile(os.path.join(entry.path, layout.RUN)):
                        found.append(entry.path)
                except OSError:  # an entry that cannot be looked at is no output
                    continue
    except OSError:
        return []
    return sorted(found)


def load_spans(output: str) -> tuple[list[ShardSpan] | None, list[Problem]]:
    """Each planned shard's span of the plan (rebuilt from plan.jsonl when plan-shards.json
    is missing), or None and a ``plan`` problem when they cannot be had."""
    has_spans = storage.exists(storage.join(output, layout.PLAN_SHARDS))
    try:
        return planfile.read_spans(output, remember=False), []
    except planfile.PlanError as exc:
        hint = (f"; delete {layout.PLAN_SHARDS} to have it rebuilt from {layout.PLAN}"
                if has_spans else "")
        return None, [Problem(None, None, "plan", f"{exc}; shards not checked{hint}")]


def _jobs(output: str, spans: list[ShardSpan], listing: Listing, modalities: frozenset[str],
          decode: bool) -> Iterator[ShardJob]:
    first = 1
    for span in spans:
        yield ShardJob(output, span, first, span.shard in listing.tars,
                       span.shard in listing.indexes, listing.work.get(span.shard, (0, 0)),
                       modalities, decode)
        first += span.count


def verify(output: str, workers: int = 8, decode: bool = True) -> Report:
    """Checks the output at ``output`` (local or gs://); raises NotAnOutput."""
    start = time.monotonic()
    output = output.rstrip("/") or "/"
    run = load_run(output)
    spans, problems = load_spans(output)
    listing = list_output(output)
    problems += listing.extra
    if spans is None:
        return Report(output, 0, 0, 0, time.monotonic() - start, problems)
    planned = {s.shard for s in spans}
    for shard in sorted(listing.tars - planned):
        problems.append(Problem(None, None, "extra", f"extra file: {shard_name(shard)}.tar "
                                f"(shard not in the plan)"))
    for shard in sorted(listing.indexes - planned - listing.tars):
        problems.append(Problem(shard_name(shard), None, "orphan-index", f"orphan index: "
                                f"{layout.INDEX_DIR}/{shard_name(shard)}.parquet has no tar "
                                f"(and is not in the plan)"))
    modalities = frozenset(run.get("modalities") or ())
    checked = samples = read = 0
    for result in imap(check_shard, _jobs(output, spans, listing, modalities, decode), workers):
        problems += result.problems
        checked, samples, read = (checked + result.checked, samples + result.samples,
                                  read + result.bytes)
    return Report(output, checked, samples, read, time.monotonic() - start, problems)


# ------------------------------------------------------------------------------ the CLI

def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="an actprep output folder (local or gs://)")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help="shards checked at once (default min(8, cores))")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-decode", action="store_true",
                        help="skip decoding members (JPEG, .npy, .json, .cls): structure, "
                        "headers, counts and sha256 only")


def add_verify_parser(sub) -> None:
    """Registers ``actprep verify`` on the CLI's subparsers."""
    parser = sub.add_parser("verify", help="read every shard of an output and check it "
                            "against its index and plan; exit 1 on any problem")
    add_arguments(parser)
    parser.set_defaults(func=cmd_verify)


def cmd_verify(parser: argparse.ArgumentParser, args: argparse.Namespace,
               beam_args: list[str]) -> int:
    if beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        report = verify(args.output, args.workers, decode=not args.no_decode)
    except NotAnOutput as exc:
        print(f"actprep verify: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), sort_keys=True) if args.json else report.render_text())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``actprep verify`` on its own (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="actprep verify")
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    return cmd_verify(parser, args, rest)


if __name__ == "__main__":
    sys.exit(main())
