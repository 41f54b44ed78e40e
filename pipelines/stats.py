"""``actprep stats OUTPUT``: what an output holds, from its Parquet index (pyarrow compute,
so a million rows take seconds), before anyone spends GPU-weeks training on it.

Only committed shards count (an index without its tar is a commit in progress).
``--json`` prints one object; ``--html FILE`` writes a self-contained report with plots.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from actprep.pipelines import layout, storage
from actprep.schemas.index import INDEX_SCHEMA, OK, read_index
from actprep.schemas.labels import LabelMap
from actprep.schemas.plan import shard_name

QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
# what the figures use: reading and filtering only these is 2x faster than the whole index
COLUMNS = ["shard", "status", "label", "failure_stage", "failure_reason", "source_path",
           "duration", "fps", "frames", "width", "height", "source_width", "source_height",
           "has_audio", "mfcc_frames", "vggish_examples", "flow_pairs", "flow_magnitude",
           "audio_rms_dbfs"]


def load_index(output: str, workers: int = 16, columns: list[str] | None = COLUMNS
               ) -> tuple[pa.Table, dict[str, int]]:
    """The rows of every committed shard (``columns`` of them; None: all), and each
    committed shard tar's size in bytes."""
    tars = layout.shard_tars(output)
    sizes = {shard_name(n): size for n, size in sorted(tars.items())}
    paths = [layout.shard_index(output, n) for n in sorted(tars)]

    def read(path: str) -> pa.Table:
        return read_index(pa.BufferReader(storage.read_bytes(path)), columns)
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        tables = list(pool.map(read, paths))
    empty = INDEX_SCHEMA.empty_table()
    table = pa.concat_tables(tables) if tables else (
        empty.select(columns) if columns else empty)
    return table, sizes


def _sum(column: pa.ChunkedArray) -> float:
    return float(pc.sum(column).as_py() or 0)


def _distribution(column: pa.ChunkedArray) -> dict[str, Any] | None:
    """count, mean and quantiles (min, p5, median, p95, max) of the non-null values."""
    values = pc.drop_null(column)
    if len(values) == 0:
        return None
    q = pc.quantile(values, q=list(QUANTILES), interpolation="nearest").to_pylist()
    return {"count": len(values), "mean": round(float(pc.mean(values).as_py()), 4),
            **{name: round(float(v), 4) for name, v in zip(("min", "p5", "median", "p95", "max"), q)}}


def _histogram(column: pa.ChunkedArray, bins: int = 30) -> dict[str, list] | None:
    """Bin edges and counts of the non-null values (numpy's histogram over their range)."""
    import numpy as np

    values = pc.drop_null(column).to_numpy(zero_copy_only=False)
    if len(values) == 0:
        return None
    counts, edges = np.histogram(values.astype(np.float64), bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def _counts(table: pa.Table, *columns: str) -> list[tuple[tuple, int]]:
    """(values, count) of the groups of ``columns``, most frequent first."""
    if table.num_rows == 0:
        return []
    grouped = table.group_by(list(columns)).aggregate([(columns[0], "count")]).to_pylist()
    out = [(tuple(g[c] for c in columns), g[f"{columns[0]}_count"]) for g in grouped]
    return sorted(out, key=lambda item: (-item[1], str(item[0])))


def failure_reason(stage: str | None, reason: str | None, path: str | None) -> str:
    """``stage: reason`` with the video's own path taken out, so equal causes group."""
    text = reason or ""
    if path:
        text = text.replace(path, "<video>")
    text = re.sub(r"/\S+\.(mp4|mkv|webm|avi|mov|m4v|flv)\b", "<video>", text)
    return f"{stage}: {text}"


def _classes(ok: pa.Table, labels: LabelMap | None, minimum: int | None) -> dict[str, Any]:
    counts = {name[0]: n for name, n in _counts(ok.filter(pc.is_valid(ok["label"])), "label")}
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


def compute(table: pa.Table, shard_bytes: dict[str, int], labels: LabelMap | None = None,
            min_class_samples: int | None = None) -> dict[str, Any]:
    """Every figure of the report as plain JSON-able values."""
    table = table.select(COLUMNS)
    ok_mask = pc.equal(table["status"], OK)
    ok, failed = table.filter(ok_mask), table.filter(pc.invert(ok_mask))
    failures = collections.Counter(
        failure_reason(s, r, p) for s, r, p in zip(failed["failure_stage"].to_pylist(),
                                                   failed["failure_reason"].to_pylist(),
                                                   failed["source_path"].to_pylist()))
    per_shard = collections.defaultdict(lambda: {"ok": 0, "failed": 0})
    for (shard, status), n in _counts(table, "shard", "status"):
        per_shard[shard]["ok" if status == OK else "failed"] += n
    shards = [{"shard": name, **per_shard.get(name, {"ok": 0, "failed": 0}),
               "bytes": shard_bytes[name]} for name in sorted(shard_bytes)]
    n_ok = ok.num_rows

    def coverage(column: str) -> float:
        return round(pc.sum(pc.is_valid(ok[column])).as_py() / n_ok, 4) if n_ok else 0.0
    return {
        "samples_ok": n_ok,
        "samples_failed": failed.num_rows,
        "shards": len(shard_bytes),
        "bytes": int(sum(shard_bytes.values())),
        "hours": round(_sum(ok["duration"]) / 3600, 4),
        "frames": int(_sum(ok["frames"])),
        "flow_pairs": int(_sum(ok["flow_pairs"])),
        "failures": dict(failures.most_common()),
        "failures_by_stage": {k[0]: v for k, v in _counts(failed, "failure_stage")},
        **_classes(ok, labels, min_class_samples),
        "coverage": {"rgb": coverage("frames"), "flow": coverage("flow_pairs"),
                     "mfcc": coverage("mfcc_frames"), "vggish": coverage("vggish_examples"),
                     "audio": round(pc.sum(pc.fill_null(ok["has_audio"], False)).as_py() / n_ok,
                                    4) if n_ok else 0.0},
        "duration": _distribution(ok["duration"]),
        "fps": _distribution(ok["fps"]),
        "fps_values": {f"{k[0]:g}": v for k, v in _counts(ok.filter(pc.is_valid(ok["fps"])),
                                                           "fps")[:20]},
        "stored_resolution": {f"{w}x{h}": n for (w, h), n in _counts(
            ok.filter(pc.is_valid(ok["width"])), "width", "height")[:20]},
        "source_resolution": {f"{w}x{h}": n for (w, h), n in _counts(
            ok.filter(pc.is_valid(ok["source_width"])), "source_width", "source_height")[:20]},
        "flow_magnitude": _distribution(ok["flow_magnitude"]),
        "audio_rms_dbfs": _distribution(ok["audio_rms_dbfs"]),
        "histograms": {name: _histogram(ok[name]) for name in
                       ("duration", "fps", "flow_magnitude", "audio_rms_dbfs")},
        "shard_table": shards,
    }


def render_text(stats: dict[str, Any], output: str) -> str:
    """The terminal report."""
    lines = [f"{output}: {stats['samples_ok']} samples ok, {stats['samples_failed']} failed, "
             f"{stats['shards']} shards, {stats['bytes'] / 1e9:.3f} GB, "
             f"{stats['hours']:.2f} h of video, {stats['frames']} frames"]
    if stats["failures_by_stage"]:
        lines.append("failures by stage: " + ", ".join(
            f"{k} {v}" for k, v in stats["failures_by_stage"].items()))
        lines += [f"  x{n} {reason}" for reason, n in list(stats["failures"].items())[:15]]
    cov = stats["coverage"]
    lines.append("coverage of ok samples: " + ", ".join(f"{k} {v:.0%}" for k, v in cov.items()))
    classes = stats["classes"]
    lines.append(f"classes: {len(classes)}, {len(stats['classes_missing'])} with no sample, "
                 f"{len(stats['classes_under_threshold'])} under {stats['class_threshold']}")
    for kind in ("classes_missing", "classes_under_threshold"):
        if stats[kind]:
            shown = ", ".join(f"{n} ({classes[n]})" for n in stats[kind][:20])
            lines.append(f"  {kind.replace('_', ' ')}: {shown}"
                         + (" ..." if len(stats[kind]) > 20 else ""))
    for name in ("duration", "fps", "flow_magnitude", "audio_rms_dbfs"):
        d = stats[name]
        if d:
            lines.append(f"{name}: mean {d['mean']:g}, min {d['min']:g}, p5 {d['p5']:g}, "
                         f"median {d['median']:g}, p95 {d['p95']:g}, max {d['max']:g}")
    for name in ("stored_resolution", "source_resolution"):
        if stats[name]:
            lines.append(f"{name.replace('_', ' ')}: " + ", ".join(
                f"{k} {v}" for k, v in list(stats[name].items())[:8]))
    lines.append("shard            ok  failed        bytes")
    for row in stats["shard_table"][:50]:
        lines.append(f"{row['shard']}  {row['ok']:>5}  {row['failed']:>6}  {row['bytes']:>11}")
    if len(stats["shard_table"]) > 50:
        lines.append(f"... {len(stats['shard_table']) - 50} more shards (--json for all)")
    return "\n".join(lines)


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
    if not storage.exists(storage.join(output, layout.RUN)):
        print(f"actprep stats: error: {output} is not an actprep output (no {layout.RUN})",
              file=sys.stderr)
        return 2
    table, sizes = load_index(output)
    stats = compute(table, sizes, _labels(output), args.min_class_samples)
    if args.html:
        from actprep.pipelines.stats_html import write_html
        write_html(stats, output, args.html)
    print(json.dumps(stats, sort_keys=True) if args.json else render_text(stats, output))
    if args.html and not args.json:
        print(f"report: {args.html}")
    return 0
