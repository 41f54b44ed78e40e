"""``actprep stats OUTPUT``: what an output holds, from its Parquet index, before anyone spends
GPU-weeks training on it. Shards are read one at a time (a bounded pool reads ahead) and
aggregated in batches of ``BATCH_ROWS``, so memory holds a batch of rows plus the ok values
of the distribution columns as numpy arrays (exact quantiles; 24 bytes per ok sample),
never the whole index.

Only committed shards count (an index without its tar is a commit in progress).
``--json`` prints one object; ``--html FILE`` writes a self-contained report with plots.

Per shard it also reports how its ok samples mix classes (``ShardMix``): the number of
classes and the largest class's share, flagged as badly mixed by ``MIX_RULE``
(``shard_table`` rows: ``classes``, ``top_class``, ``top_share``, ``badly_mixed``; the
flagged ones under ``shards_badly_mixed``). A shard keeps four numbers for it, so memory
grows with classes and shards, not rows.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actprep.pipelines import layout, storage
from actprep.pipelines.bounded import imap
from actprep.pipelines.planfile import PlanError, read_spans
from actprep.reports.verify import not_an_output
from actprep.schemas.index import INDEX_SCHEMA, OK, read_index
from actprep.schemas.labels import LabelMap
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import OLD_ORDER, ORDER_SETTING

QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
# what the figures use: reading and filtering only these is 2x faster than the whole index
COLUMNS = ["key", "shard", "status", "label", "failure_stage", "failure_reason", "source_path",
           "duration", "fps", "frames", "width", "height", "source_width", "source_height",
           "has_audio", "mfcc_frames", "vggish_examples", "flow_pairs", "flow_magnitude",
           "audio_rms_dbfs"]
# columns whose ok values are kept (in their own dtype) for quantiles and histograms
DISTRIBUTIONS = ("duration", "fps", "flow_magnitude", "audio_rms_dbfs")
# shards are aggregated in batches of about this many rows: per-call overheads of the
# grouping dominate at one shard a call, and a batch is still a few MB
BATCH_ROWS = 50_000
MISSING_NAMED = 20  # planned shards not committed named in the report; the rest counted
# A shard is badly mixed when its largest class holds more than twice the samples that
# class's share of the split gives the shard, plus 3: the class-stratified plan keeps every
# class within a sample or two of its share; a shard cut from key-sorted class folders holds
# one or two classes. Counted on ok samples with a label; an unlabelled output has no flags.
# Only the largest class is judged (four numbers a shard): a class over-represented while
# another is larger goes unflagged, and no class over half the split can be flagged.
MIX_FACTOR, MIX_SLACK = 2, 3
MIX_RULE = (f"largest class over {MIX_FACTOR}x its share of the split "
            f"plus {MIX_SLACK} samples")
_COVERAGE = {"rgb": "frames", "flow": "flow_pairs", "mfcc": "mfcc_frames",
             "vggish": "vggish_examples"}

Groups = collections.Counter  # (values of the grouped columns) -> rows


def _read_shard(output: str, shard: int, columns: list[str] | None = COLUMNS) -> pa.Table:
    return read_index(pa.BufferReader(storage.read_bytes(layout.shard_index(output, shard))),
                      columns)


def _shard_sizes(tars: dict[int, int]) -> dict[str, int]:
    return {shard_name(n): size for n, size in sorted(tars.items())}


def load_index(output: str, workers: int = 16, columns: list[str] | None = COLUMNS
               ) -> tuple[pa.Table, dict[str, int]]:
    """The rows of every committed shard in one table (``columns`` of them; None: all),
    and each committed shard tar's size in bytes. The CLI streams instead
    (``output_stats``); this is for callers that want the table."""
    tars = layout.shard_tars(output)
    tables = list(imap(lambda n: _read_shard(output, n, columns), sorted(tars), workers))
    empty = INDEX_SCHEMA.empty_table()
    table = pa.concat_tables(tables) if tables else (
        empty.select(columns) if columns else empty)
    return table, _shard_sizes(tars)


def _distribution(values: np.ndarray) -> dict[str, Any] | None:
    """count, mean and quantiles (min, p5, median, p95, max) of the values."""
    if len(values) == 0:
        return None
    array = pa.array(values)
    q = pc.quantile(array, q=list(QUANTILES), interpolation="nearest").to_pylist()
    return {"count": len(values), "mean": round(float(pc.mean(array).as_py()), 4),
            **{name: round(float(v), 4) for name, v in zip(("min", "p5", "median", "p95", "max"), q)}}


def _histogram(values: np.ndarray, bins: int = 30) -> dict[str, list] | None:
    """Bin edges and counts of the values (numpy's histogram over their range)."""
    if len(values) == 0:
        return None
    counts, edges = np.histogram(values.astype(np.float64), bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def _groups(table: pa.Table, *columns: str) -> Groups:
    """Rows per distinct value of ``columns`` (nulls included)."""
    if table.num_rows == 0:
        return Groups()
    grouped = table.group_by(list(columns)).aggregate([(columns[0], "count")]).to_pylist()
    return Groups({tuple(g[c] for c in columns): g[f"{columns[0]}_count"] for g in grouped})


def _ranked(groups: Groups) -> list[tuple[tuple, int]]:
    """The groups, most frequent first (ties by value, as text)."""
    return sorted(groups.items(), key=lambda item: (-item[1], str(item[0])))


def failure_reason(stage: str | None, reason: str | None, path: str | None,
                   key: str | None = None) -> str:
    """``stage: reason`` with the video's own path and key taken out, so equal causes
    group ("video not found: no <key>.{mp4/...}" is one group, not one per video)."""
    text = reason or ""
    if path:
        text = text.replace(path, "<video>")
    if key:
        text = text.replace(key, "<key>")
    text = re.sub(r"/\S+\.(mp4|mkv|webm|avi|mov|m4v|flv)\b", "<video>", text)
    return f"{stage}: {text}"


def _classes(counts: dict[str, int], labels: LabelMap | None,
             minimum: int | None) -> dict[str, Any]:
    names = list(labels.names) if labels is not None else sorted(counts)
    full = {name: counts.get(name, 0) for name in names}
    for name in counts:  # labels outside the map cannot happen, but never hide data
        full.setdefault(name, counts[name])
    present = sorted(v for v in full.values() if v)
    threshold = minimum if minimum is not None else (
        max(1, int(0.2 * present[len(present) // 2])) if present else 1)
    return {"classes": full, "class_threshold": threshold,
            "classes_missing": sorted(n for n, v in full.items() if v == 0),
            "classes_under_threshold": sorted(n for n, v in full.items() if 0 < v < threshold)}


@dataclasses.dataclass(frozen=True)
class ShardMix:
    """How one shard's labelled ok samples spread over classes: their number, the number
    of classes and the largest class (ties: the first name) with its count."""

    samples: int = 0
    classes: int = 0
    top: str | None = None
    top_count: int = 0

    def merged(self, other: "ShardMix") -> "ShardMix":
        """These figures and ``other``'s, of other classes, together."""
        mine, theirs = (-self.top_count, self.top or ""), (-other.top_count, other.top or "")
        top = self if mine <= theirs else other
        return ShardMix(self.samples + other.samples, self.classes + other.classes,
                        top.top, top.top_count)

    def badly_mixed(self, split: dict[str, int], total: int) -> bool:
        """``MIX_RULE`` against the split's ok samples per class (``total`` of them)."""
        if not self.samples or not total:
            return False
        expected = self.samples * split.get(self.top, 0) / total
        return self.top_count > MIX_FACTOR * expected + MIX_SLACK

    def figures(self, split: dict[str, int], total: int) -> dict[str, Any]:
        """The shard table's class columns."""
        share = round(self.top_count / self.samples, 4) if self.samples else None
        return {"classes": self.classes, "top_class": self.top, "top_share": share,
                "badly_mixed": self.badly_mixed(split, total)}


def _shard_mixes(labelled: pa.Table) -> dict[str, ShardMix]:
    """Each shard's ``ShardMix`` from its labelled ok rows: rows per (shard, label) counted
    and sorted by pyarrow (largest class first, ties by name), so Python touches one row
    per shard, not one per class of every shard."""
    if labelled.num_rows == 0:
        return {}
    pairs = labelled.group_by(["shard", "label"]).aggregate([("label", "count")]).sort_by(
        [("shard", "ascending"), ("label_count", "descending"), ("label", "ascending")])
    shards = pairs["shard"].to_numpy(zero_copy_only=False)
    counts = pairs["label_count"].to_numpy()
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
    classes = np.diff(np.r_[starts, len(shards)])
    samples = np.add.reduceat(counts, starts)
    tops = pairs["label"].take(pa.array(starts)).to_pylist()
    return {shards[i]: ShardMix(int(n), int(c), top, int(counts[i]))
            for i, n, c, top in zip(starts, samples, classes, tops)}


class Aggregate:
    """The figures of the report, accumulated a table (a shard) at a time: counts, sums
    and groups, plus the ok values of ``DISTRIBUTIONS`` for exact quantiles."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.stages = Groups()
        self.shards = Groups()  # (shard, status)
        self.labels = Groups()
        self.mix: dict[str, ShardMix] = {}
        self.valid: collections.Counter[str] = collections.Counter()  # coverage: ok rows with it
        self.sums = {"duration": 0.0, "frames": 0, "flow_pairs": 0}
        self.values: dict[str, list[np.ndarray]] = {name: [] for name in DISTRIBUTIONS}
        self.stored = Groups()
        self.source = Groups()

    def add(self, table: pa.Table) -> None:
        table = table.select(COLUMNS)
        ok_mask = pc.equal(table["status"], OK)
        ok, failed = table.filter(ok_mask), table.filter(pc.invert(ok_mask))
        self.ok += ok.num_rows
        self.failed += failed.num_rows
        self.failures.update(failure_reason(s, r, p, k) for s, r, p, k in zip(
            *(failed[c].to_pylist() for c in ("failure_stage", "failure_reason",
                                               "source_path", "key"))))
        self.stages.update(_groups(failed, "failure_stage"))
        self.shards.update(_groups(table, "shard", "status"))
        labelled = ok.filter(pc.is_valid(ok["label"]))
        self.labels.update(_groups(labelled, "label"))
        self._add_mix(labelled)
        for column in _COVERAGE.values():
            self.valid[column] += ok.num_rows - ok[column].null_count
        self.valid["audio"] += pc.sum(pc.fill_null(ok["has_audio"], False)).as_py() or 0
        for column in self.sums:
            self.sums[column] += pc.sum(ok[column]).as_py() or 0
        for column in DISTRIBUTIONS:
            if (values := pc.drop_null(ok[column]).to_numpy()).size:
                self.values[column].append(values)
        self.stored.update(_groups(ok.filter(pc.is_valid(ok["width"])), "width", "height"))
        self.source.update(_groups(ok.filter(pc.is_valid(ok["source_width"])),
                                   "source_width", "source_height"))

    def _add_mix(self, labelled: pa.Table) -> None:
        """Each shard's class figures from its labelled ok rows. Exact when ``add`` gets
        whole shards, as ``output_stats`` and ``compute`` give them; rows naming a shard
        seen in an earlier batch (a damaged index: verify names it) count as further
        classes of it."""
        for shard, mix in _shard_mixes(labelled).items():
            self.mix[shard] = self.mix[shard].merged(mix) if shard in self.mix else mix

    def result(self, shard_bytes: dict[str, int], labels: LabelMap | None = None,
               min_class_samples: int | None = None) -> dict[str, Any]:
        """Every figure of the report as plain JSON-able values."""
        per_shard = collections.defaultdict(lambda: {"ok": 0, "failed": 0})
        for (shard, status), n in self.shards.items():
            per_shard[shard]["ok" if status == OK else "failed"] += n
        split = {k[0]: v for k, v in self.labels.items()}
        total = sum(split.values())
        shards = [{"shard": name, **per_shard.get(name, {"ok": 0, "failed": 0}),
                   "bytes": shard_bytes[name],
                   **self.mix.get(name, ShardMix()).figures(split, total)}
                  for name in sorted(shard_bytes)]
        values = {name: np.concatenate(arrays) if arrays else np.empty(0)
                  for name, arrays in self.values.items()}
        fps = Groups({(float(v),): int(n) for v, n in zip(*np.unique(values["fps"],
                                                                      return_counts=True))})
        n_ok = self.ok

        def share(count: int) -> float:
            return round(count / n_ok, 4) if n_ok else 0.0
        return {
            "samples_ok": n_ok,
            "samples_failed": self.failed,
            "shards": len(shard_bytes),
            "bytes": int(sum(shard_bytes.values())),
            "hours": round(float(self.sums["duration"]) / 3600, 6),  # 4 ms
            "frames": int(self.sums["frames"]),
            "flow_pairs": int(self.sums["flow_pairs"]),
            "failures": dict(self.failures.most_common()),
            "failures_by_stage": {k[0]: v for k, v in _ranked(self.stages)},
            **_classes({k[0]: v for k, v in self.labels.items()}, labels, min_class_samples),
            "coverage": {**{name: share(self.valid[column])
                            for name, column in _COVERAGE.items()},
                         "audio": share(self.valid["audio"])},
            "duration": _distribution(values["duration"]),
            "fps": _distribution(values["fps"]),
            "fps_values": {f"{k[0]:g}": v for k, v in _ranked(fps)[:20]},
            "stored_resolution": {f"{w}x{h}": n for (w, h), n in _ranked(self.stored)[:20]},
            "source_resolution": {f"{w}x{h}": n for (w, h), n in _ranked(self.source)[:20]},
            "flow_magnitude": _distribution(values["flow_magnitude"]),
            "audio_rms_dbfs": _distribution(values["audio_rms_dbfs"]),
            "histograms": {name: _histogram(values[name]) for name in DISTRIBUTIONS},
            "shard_table": shards,
            "shards_badly_mixed": [row["shard"] for row in shards if row["badly_mixed"]],
            "shard_mix_rule": MIX_RULE,
        }


def compute(table: pa.Table, shard_bytes: dict[str, int], labels: LabelMap | None = None,
            min_class_samples: int | None = None) -> dict[str, Any]:
    """Every figure of the report, from a table of index rows (``COLUMNS`` at least)."""
    aggregate = Aggregate()
    aggregate.add(table)
    return aggregate.result(shard_bytes, labels, min_class_samples)


def _read_checked(output: str, shard: int) -> tuple[pa.Table | None, str | None]:
    """A committed shard's index rows, or None and what is wrong with its index file."""
    try:
        data = storage.read_bytes(layout.shard_index(output, shard))
    except FileNotFoundError:
        return None, "its index is missing"
    try:
        return read_index(pa.BufferReader(data), COLUMNS), None
    except (pa.ArrowException, OSError) as exc:  # parsed from memory: not an I/O error
        return None, f"its index is not a readable index file ({exc})"


def output_stats(output: str, labels: LabelMap | None = None,
                 min_class_samples: int | None = None, workers: int = 8) -> dict[str, Any]:
    """``compute`` over every committed shard of ``output``, read a shard at a time and
    added in batches of about ``BATCH_ROWS`` rows. Shards whose index is missing or
    unreadable are left out and named under ``damaged``; planned shards not committed
    are counted under ``shards_missing``."""
    tars = layout.shard_tars(output)
    aggregate = Aggregate()
    batch: list[pa.Table] = []
    damaged: dict[str, str] = {}
    shards = sorted(tars)
    for shard, (table, problem) in zip(shards, imap(lambda n: _read_checked(output, n),
                                                    shards, workers)):
        if table is None:
            damaged[shard_name(shard)] = problem
            del tars[shard]
            continue
        batch.append(table)
        if sum(t.num_rows for t in batch) >= BATCH_ROWS:
            aggregate.add(pa.concat_tables(batch))
            batch = []
    if batch:
        aggregate.add(pa.concat_tables(batch))
    result = aggregate.result(_shard_sizes(tars), labels, min_class_samples)
    return {**result, "damaged": damaged, "shard_order": _shard_order(output),
            **_missing(output, set(tars) | {int(name[len("shard-"):]) for name in damaged})}


def _shard_order(output: str) -> str | None:
    """How the output's plan ordered rows into shards: run.json's ``shard_order``,
    ``OLD_ORDER`` when it has none (planned by an older actprep), None when unreadable."""
    try:
        run = json.loads(storage.read_text(storage.join(output, layout.RUN)))
    except (OSError, ValueError):
        return None
    return run.get(ORDER_SETTING, OLD_ORDER) if isinstance(run, dict) else None


def _missing(output: str, committed: set[int]) -> dict[str, Any]:
    """Planned shards that are not committed: their count and the first names."""
    try:
        spans = read_spans(output, remember=False)
    except (PlanError, OSError, ValueError):
        return {"shards_planned": None, "shards_missing": None, "shards_missing_names": []}
    missing = [shard_name(s.shard) for s in spans if s.shard not in committed]
    return {"shards_planned": len(spans), "shards_missing": len(missing),
            "shards_missing_names": missing[:MISSING_NAMED]}


# the distributions of the text report: name in the figures, label, unit
DISTRIBUTION_UNITS = (("duration", "duration", "s"), ("fps", "frame rate", "fps"),
                      ("flow_magnitude", "flow magnitude", "px"),
                      ("audio_rms_dbfs", "audio RMS level", "dBFS"))
CLASSES_LISTED = 20  # classes of the text report listed one by one; more: the extremes
CLASS_EXTREMES = 5  # with more classes: this many with the most and the fewest samples


def size_text(n_bytes: float) -> str:
    """Bytes in decimal units: ``999 B``, ``13.9 MB``, ``1.24 TB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n_bytes) < 999.5 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """A length of video in the unit that reads best: ``23 s``, ``4.5 min``, ``12.3 h``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:,.1f} h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def class_summary(classes: dict[str, int]) -> dict[str, Any] | None:
    """What a trainer checks for balance, from the ok samples per class (classes without
    samples included): min, median, max, the classes at each extreme, and the ratio of the
    largest class to the smallest non-empty one. None without classes."""
    if not classes:
        return None
    counts = sorted(classes.values())
    low, high = counts[0], counts[-1]
    smallest = min((v for v in counts if v), default=0)
    return {"min": low, "median": float(np.median(counts)), "max": high,
            "min_classes": sorted(n for n, v in classes.items() if v == low),
            "max_classes": sorted(n for n, v in classes.items() if v == high),
            "max_over_min": round(high / smallest, 2) if smallest else None}


def _class_lines(stats: dict[str, Any], all_classes: bool) -> list[str]:
    """The classes part of the text report: counts, flags, balance and the per-class
    table (every class up to ``CLASSES_LISTED`` or with ``all_classes``, else the
    ``CLASS_EXTREMES`` largest and smallest)."""
    classes = stats["classes"]
    threshold = stats["class_threshold"]
    lines = [f"classes: {len(classes)}, {len(stats['classes_missing'])} with no sample, "
             f"{len(stats['classes_under_threshold'])} under {_plural(threshold, 'sample')}"
             " (--min-class-samples)"]
    for kind in ("classes_missing", "classes_under_threshold"):
        if stats[kind]:
            shown = named([f"{n} ({classes[n]})" for n in stats[kind]], 20)
            lines.append(f"  {kind.replace('_', ' ')}: {shown}")
    summary = class_summary(classes)
    if summary is None:
        return lines

    def at(names: list[str]) -> str:
        if len(names) == len(classes) > 1:
            return "every class"
        return names[0] if len(names) == 1 else f"{len(names)} classes: {named(names, 3)}"
    ratio = "" if summary["max_over_min"] is None else (
        f"; largest/smallest{' non-empty' if summary['min'] == 0 else ''} "
        f"{summary['max_over_min']:g}x")
    lines.append(f"ok samples per class: min {summary['min']} ({at(summary['min_classes'])}), "
                 f"median {summary['median']:g}, max {summary['max']} "
                 f"({at(summary['max_classes'])}){ratio}")
    ordered = sorted(classes, key=lambda n: (-classes[n], n))
    width = max(7, len(str(summary["max"])))
    lines.append(f"  {'samples':>{width}}  class")
    if all_classes or len(ordered) <= CLASSES_LISTED:
        shown, hidden = ordered, []
    else:
        shown = ordered[:CLASS_EXTREMES] + [""] + ordered[-CLASS_EXTREMES:]
        hidden = ordered[CLASS_EXTREMES:-CLASS_EXTREMES]
    for name in shown:
        lines.append(f"  {classes[name]:>{width}}  {name}" if name else
                     f"  {'...':>{width}}  {len(hidden)} more classes (--all-classes lists "
                     f"every class, --json has them all)")
    return lines


def render_text(stats: dict[str, Any], output: str, all_classes: bool = False) -> str:
    """The terminal report; ``all_classes``: every class's samples, not only the extremes."""
    flow = f", {stats['flow_pairs']} flow pairs" if stats.get("flow_pairs") else ""
    lines = [f"{output}: {stats['samples_ok']} samples ok, {stats['samples_failed']} failed, "
             f"{_plural(stats['shards'], 'shard')}, {size_text(stats['bytes'])}, "
             f"{duration_text(stats['hours'] * 3600)} of video, {stats['frames']} frames{flow}"]
    for name, problem in stats.get("damaged", {}).items():
        lines.append(f"WARNING: {name} is damaged: {problem}; it is not counted here. "
                     f"Rerun the same 'actprep run' command to redo it")
    if stats.get("shards_missing"):
        names = ", ".join(stats["shards_missing_names"])
        more = " ..." if stats["shards_missing"] > len(stats["shards_missing_names"]) else ""
        lines.append(f"WARNING: {stats['shards_missing']} of {stats['shards_planned']} planned "
                     f"shards are not committed (a run still going, or stopped): {names}{more}")
    if stats["failures_by_stage"]:
        lines.append("failed samples by stage: " + ", ".join(
            f"{k} {v}" for k, v in stats["failures_by_stage"].items()))
        reasons = list(stats["failures"].items())
        lines += [f"  x{n} {reason}" for reason, n in reasons[:15]]
        if len(reasons) > 15:
            lines.append(f"  ... {len(reasons) - 15} more failure reasons (--json for all)")
    cov = stats["coverage"]
    lines.append("coverage of ok samples: " + ", ".join(f"{k} {v:.0%}" for k, v in cov.items()))
    lines += _class_lines(stats, all_classes)
    rows = [(label, unit, stats[name]) for name, label, unit in DISTRIBUTION_UNITS
            if stats[name]]
    if rows:
        width = max(len(f"{label} ({unit})") for label, unit, _ in rows) + 1
        figures = ("mean", "min", "p5", "median", "p95", "max")
        lines.append(f"{'of ok samples':<{width}}" + "".join(f"{f:>9}" for f in figures)
                     + "  samples")
        for label, unit, d in rows:
            lines.append(f"{f'{label} ({unit})':<{width}}"
                         + "".join(f"{d[f]:>9.4g}" for f in figures) + f"  {d['count']:>7}")
    if stats.get("fps_values"):
        lines.append("frame rates: " + _at(stats["fps_values"], "fps"))
    for name in ("stored_resolution", "source_resolution"):
        if stats[name]:
            lines.append(f"{name.replace('_', ' ')}: " + _at(stats[name], "px"))
    lines += _mix_warning(stats)
    lines.append("                 samples            tar")
    lines.append("shard            ok  failed        bytes  classes  top share")
    for row in stats["shard_table"][:50]:
        share = "-" if row["top_share"] is None else f"{row['top_share']:.0%}"
        lines.append(f"{row['shard']}  {row['ok']:>5}  {row['failed']:>6}  {row['bytes']:>11}"
                     f"  {row['classes']:>7}  {share:>9}"
                     + ("  badly mixed" if row["badly_mixed"] else ""))
    if len(stats["shard_table"]) > 50:
        lines.append(f"... {len(stats['shard_table']) - 50} more shards (--json for all)")
    return "\n".join(lines)


def _at(counts: dict[str, int], unit: str, limit: int = 8) -> str:
    """``8 samples at 342x256 px, 1 at 256x342 px``: the first ``limit`` values."""
    items = list(counts.items())
    parts = [f"{_plural(n, 'sample') if i == 0 else n} at {value} {unit}"
             for i, (value, n) in enumerate(items[:limit])]
    return ", ".join(parts) + (" ..." if len(items) > limit else "")


def named(items: list[str], limit: int = MISSING_NAMED) -> str:
    """The first ``limit`` of ``items``, comma-joined, with " ..." when there are more."""
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _mix_warning(stats: dict[str, Any]) -> list[str]:
    """The warning line about badly mixed shards, if any."""
    flagged = stats["shards_badly_mixed"]
    if not flagged:
        return []
    names = named(flagged)
    why = (" (planned by an older actprep, in key order: a new output is planned "
           "class-stratified)" if stats.get("shard_order") == OLD_ORDER else "")
    return [f"WARNING: {len(flagged)} of {stats['shards']} shards are badly mixed "
            f"({stats['shard_mix_rule']}): a trainer shuffling shards sees few classes at a "
            f"time{why}: {names}"]


def _labels(output: str) -> LabelMap | None:
    path = storage.join(output, layout.LABELS)
    return LabelMap.from_json(storage.read_text(path)) if storage.exists(path) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actprep stats")
    add_arguments(parser)
    return cmd_stats(parser, parser.parse_args(argv), [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="an actprep output folder (local or gs://)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    parser.add_argument("--min-class-samples", type=int, metavar="N",
                        help="flag classes with fewer ok samples (default: a fifth of the "
                        "median class)")
    parser.add_argument("--all-classes", action="store_true",
                        help="list every class's ok samples (default: every class up to "
                        f"{CLASSES_LISTED}, else the {CLASS_EXTREMES} largest and smallest)")


def add_stats_parser(sub) -> None:
    parser = sub.add_parser("stats", help="totals, classes, distributions and failures of "
                            "an output, from its index")
    add_arguments(parser)
    parser.set_defaults(func=cmd_stats)


def cmd_stats(parser: argparse.ArgumentParser, args: argparse.Namespace,
              beam_args: list[str]) -> int:
    if beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    output = args.output.rstrip("/")
    unopenable = storage.unopenable(output)
    if unopenable or not storage.exists(storage.join(output, layout.RUN)):
        problem = (f"{output}: {unopenable}" if unopenable
                   else not_an_output(output, layout.RUN, 'stats'))
        print(f"actprep stats: error: {problem}", file=sys.stderr)
        return 2
    stats = output_stats(output, _labels(output), args.min_class_samples)
    if args.html:
        from actprep.reports.stats_html import write_html
        write_html(stats, output, args.html)
    print(json.dumps(stats, sort_keys=True) if args.json
          else render_text(stats, output, args.all_classes))
    if args.html and not args.json:
        print(f"report: {args.html}")
    return 1 if stats["damaged"] else 0
