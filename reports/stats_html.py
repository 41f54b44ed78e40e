"""The HTML report of ``actprep stats --html``: one self-contained file (plots as inline PNG,
no scripts, no external assets) that opens anywhere, from the figures of ``stats.compute``."""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from actprep.pipelines import storage  # noqa: E402
from actprep.reports.stats import named  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .7em;text-align:right;
border-bottom:1px solid #eee}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{background:#f6f8fa;border-radius:6px;
padding:.7em 1.1em}.card b{display:block;font-size:1.4em}.warn{color:#b00}
img{max-width:100%}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bars(labels: list[str], values: list[float], title: str, color: str = "#4c72b0",
          highlight: set[str] = frozenset()) -> str:
    fig, ax = plt.subplots(figsize=(10, max(2.5, min(0.18 * len(labels), 30))))
    colors = ["#c44e52" if name in highlight else color for name in labels]
    ax.barh(range(len(labels)), values, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 40 else 9)
    ax.invert_yaxis()
    ax.set_title(title)
    return _png(fig)


def _histogram(stats: dict[str, Any], name: str, unit: str) -> str:
    hist, d = stats["histograms"].get(name), stats[name]
    title = name.replace("_", " ")
    if not hist or not d:
        return f"<p>{html.escape(title)}: no values</p>"
    fig, ax = plt.subplots(figsize=(5, 2.6))
    edges = hist["edges"]
    ax.stairs(hist["counts"], edges, fill=True, color="#4c72b0")
    for q, style in (("median", "-"), ("p5", ":"), ("p95", ":")):
        ax.axvline(d[q], color="#c44e52", linestyle=style, linewidth=1)
    ax.set_title(f"{title}: median {d['median']:g}, p5 {d['p5']:g}, p95 {d['p95']:g} "
                 f"(n={d['count']})", fontsize=9)
    ax.set_xlabel(unit)
    return _png(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(stats: dict[str, Any], output: str) -> str:
    cards = [("samples ok", stats["samples_ok"]), ("failed", stats["samples_failed"]),
             ("shards", stats["shards"]), ("GB", f"{stats['bytes'] / 1e9:.2f}"),
             ("hours", f"{stats['hours']:.2f}"), ("frames", stats["frames"]),
             ("classes", len(stats["classes"]))]
    parts = [f"<h1>actprep output {html.escape(output)}</h1><div class=cards>"]
    parts += [f"<div class=card><b>{html.escape(str(v))}</b>{k}</div>" for k, v in cards]
    parts.append("</div><h2>Modality coverage (share of ok samples)</h2>")
    parts.append(_table(list(stats["coverage"]),
                        [[f"{v:.1%}" for v in stats["coverage"].values()]]))
    classes = stats["classes"]
    flagged = set(stats["classes_missing"]) | set(stats["classes_under_threshold"])
    parts.append(f"<h2>Classes</h2><p>{len(stats['classes_missing'])} without samples, "
                 f"{len(stats['classes_under_threshold'])} under "
                 f"{stats['class_threshold']} (red)</p>")
    if flagged:
        parts.append("<p class=warn>" + html.escape(", ".join(
            f"{n} ({classes[n]})" for n in sorted(flagged))) + "</p>")
    if classes:
        ordered = sorted(classes, key=lambda n: (-classes[n], n))
        parts.append(_bars(ordered, [classes[n] for n in ordered], "ok samples per class",
                           highlight=flagged))
    parts.append("<h2>Failures</h2>")
    if stats["failures"]:
        parts.append(_table(["stage", "count"], [[k, v] for k, v in
                                                  stats["failures_by_stage"].items()]))
        parts.append(_table(["reason", "count"], [[k, v] for k, v in
                                                   list(stats["failures"].items())[:50]]))
    else:
        parts.append("<p>none</p>")
    parts.append("<h2>Distributions</h2><div class=grid>")
    for name, unit in (("duration", "seconds"), ("fps", "frames per second"),
                       ("flow_magnitude", "mean |flow|, px"),
                       ("audio_rms_dbfs", "RMS level, dBFS")):
        parts.append(_histogram(stats, name, unit))
    parts.append("</div>")
    for name in ("fps_values", "stored_resolution", "source_resolution"):
        if stats[name]:
            keys = list(stats[name])
            parts.append(_bars(keys, [stats[name][k] for k in keys],
                               f"{name.replace('_', ' ')} (ok samples)"))
    table = stats["shard_table"]
    parts.append("<h2>Shards</h2>")
    if table:
        fig, ax = plt.subplots(figsize=(10, 2.5))
        ax.bar(range(len(table)), [r["bytes"] / 1e6 for r in table], color="#55a868")
        ax.set_ylabel("MB")
        ax.set_xlabel("shard")
        ax.set_title("shard sizes")
        parts.append(_png(fig))
    flagged = stats["shards_badly_mixed"]
    names = named(flagged)
    parts.append(f"<p{' class=warn' if flagged else ''}>{len(flagged)} of {len(table)} "
                 f"badly mixed ({html.escape(stats['shard_mix_rule'])})"
                 f"{': ' + html.escape(names) if flagged else ''}</p>")
    parts.append(_table(
        ["shard", "ok", "failed", "bytes", "classes", "top class", "top share", "mix"],
        [[r["shard"], r["ok"], r["failed"], r["bytes"], r["classes"], r["top_class"] or "-",
          "-" if r["top_share"] is None else f"{r['top_share']:.0%}",
          "badly mixed" if r["badly_mixed"] else ""] for r in table[:500]]))
    if len(table) > 500:
        parts.append(f"<p>... {len(table) - 500} more shards (actprep stats --json)</p>")
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>actprep stats</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_html(stats: dict[str, Any], output: str, path: str) -> None:
    """Writes the report to ``path`` (local or gs://)."""
    storage.write_atomic(path, render(stats, output).encode())
