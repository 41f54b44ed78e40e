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
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from actprep.pipelines import storage  # noqa: E402
from actprep.reports.stats import duration_text, named, size_text  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .7em;text-align:right;
border-bottom:1px solid #eee}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{background:#f6f8fa;border-radius:6px;
padding:.7em 1.1em}.card b{display:block;font-size:1.4em}.warn{color:#b00}
img{max-width:100%}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}"""


# the distribution panels: name in the figures, title, x-axis label, unit of the title
DISTRIBUTION_PANELS = (("duration", "duration", "seconds", "s"),
                       ("fps", "frame rate", "frames per second", "fps"),
                       ("flow_magnitude", "flow magnitude", "mean |flow| per frame pair, px",
                        "px"),
                       ("audio_rms_dbfs", "audio level", "RMS level, dBFS", "dBFS"))
VALUE_PANELS = (("fps_values", "frame rates", "fps"),
                ("stored_resolution", "stored resolution", "px"),
                ("source_resolution", "source resolution", "px"))
CLASS_BARS = 60  # classes drawn one bar each at most; more: their histogram and the ends
CLASS_ENDS = 15  # with more classes: the largest and the smallest drawn as bars, each end
SHARD_LABELS = 30  # shard names on the shard chart's axis at most; more shards: every k-th
COUNT = "ok samples"  # the label of every count axis


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _integer(axis) -> None:
    """A count axis: ticks on whole numbers only (no 0.5 samples)."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _bars(labels: list[str], values: list[int], title: str, color: str = "#4c72b0",
          highlight: set[str] = frozenset()) -> Figure | None:
    """Horizontal bars of counts, one per label; None when every count is 0."""
    if not any(values):
        return None
    fig, ax = plt.subplots(figsize=(10, max(2.5, min(0.18 * len(labels), 30))))
    _draw_bars(ax, labels, values, color, highlight)
    ax.set_title(title)
    return fig


def _draw_bars(ax, labels: list[str], values: list[int | None], color: str,
               highlight: set[str] = frozenset()) -> None:
    """Horizontal count bars on ``ax``, top to bottom; a row whose value is None has its
    label and no bar (a gap: "... 670 more classes")."""
    at = [i for i, value in enumerate(values) if value is not None]
    ax.barh(at, [values[i] for i in at],
            color=["#c44e52" if labels[i] in highlight else color for i in at])
    ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 40 else 9)
    ax.invert_yaxis()
    ax.set_xlabel(COUNT)
    _integer(ax.xaxis)


def class_figure(stats: dict[str, Any]) -> Figure | None:
    """Ok samples per class, largest first, flagged classes in red; None when no class
    has a sample. Up to ``CLASS_BARS`` classes one bar each; with more (Kinetics' 400-700)
    a histogram of the classes by their count, and bars for the ``CLASS_ENDS`` largest and
    smallest, so the chart stays readable however many classes there are."""
    classes = stats["classes"]
    flagged = set(stats["classes_missing"]) | set(stats["classes_under_threshold"])
    ordered = sorted(classes, key=lambda n: (-classes[n], n))
    if len(ordered) <= CLASS_BARS or not any(classes.values()):
        return _bars(ordered, [classes[n] for n in ordered], "ok samples per class",
                     highlight=flagged)
    fig, (hist, ends) = plt.subplots(2, 1, figsize=(10, 3 + 0.18 * (2 * CLASS_ENDS + 1)),
                                     height_ratios=(3, 0.18 * (2 * CLASS_ENDS + 1)))
    counts = [classes[n] for n in ordered]
    hist.hist(counts, bins=min(50, max(counts) + 1), range=(-0.5, max(counts) + 0.5),
              color="#4c72b0")
    hist.axvline(stats["class_threshold"] - 0.5, color="#c44e52", linestyle="--", linewidth=1.5)
    hist.set_title(f"{len(ordered)} classes by their ok samples (red: the threshold, "
                   f"--min-class-samples {stats['class_threshold']})", fontsize=10)
    hist.set_xlabel(COUNT)
    hist.set_ylabel("classes")
    _integer(hist.xaxis)
    _integer(hist.yaxis)
    rest = len(ordered) - 2 * CLASS_ENDS
    ends_of = ordered[:CLASS_ENDS] + ordered[-CLASS_ENDS:]
    values = [classes[n] for n in ends_of]
    _draw_bars(ends, ends_of[:CLASS_ENDS] + [f"... {rest} more classes"] + ends_of[CLASS_ENDS:],
               values[:CLASS_ENDS] + [None] + values[CLASS_ENDS:], "#4c72b0", flagged)
    ends.set_title(f"the {CLASS_ENDS} largest and {CLASS_ENDS} smallest classes "
                   "(actprep stats --all-classes lists every class)", fontsize=10)
    fig.tight_layout()
    return fig


def histogram_figure(stats: dict[str, Any], name: str) -> Figure | None:
    """The histogram of a distribution (``DISTRIBUTION_PANELS``) with its median, p5 and
    p95; None when no ok sample has a value (flow off, no audio)."""
    title, label, unit = next(panel[1:] for panel in DISTRIBUTION_PANELS if panel[0] == name)
    hist, d = stats["histograms"].get(name), stats[name]
    if not hist or not d or not any(hist["counts"]):
        return None
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.stairs(hist["counts"], hist["edges"], fill=True, color="#4c72b0")
    for q, style in (("median", "-"), ("p5", ":"), ("p95", ":")):
        ax.axvline(d[q], color="#c44e52", linestyle=style, linewidth=1)
    ax.set_title(f"{title}: median {d['median']:g} {unit}, p5 {d['p5']:g} {unit}, "
                 f"p95 {d['p95']:g} {unit} (n={d['count']})", fontsize=9)
    ax.set_xlabel(label)
    ax.set_ylabel(COUNT)
    _integer(ax.yaxis)
    return fig


def value_figure(stats: dict[str, Any], name: str) -> Figure | None:
    """Ok samples per value of ``name`` (``VALUE_PANELS``); None without values."""
    title, unit = next((t, u) for n, t, u in VALUE_PANELS if n == name)
    values = stats.get(name) or {}
    keys = list(values)
    return _bars([f"{k} {unit}" for k in keys], [values[k] for k in keys],
                 f"{title} (ok samples)") if keys else None


def shard_figure(stats: dict[str, Any]) -> Figure | None:
    """Each shard's size in MB, its name under its bar (every k-th name when there are more
    than ``SHARD_LABELS`` shards); None without shards."""
    table = stats["shard_table"]
    if not table:
        return None
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.bar(range(len(table)), [r["bytes"] / 1e6 for r in table], color="#55a868")
    step = -(-len(table) // SHARD_LABELS)  # ceil
    ticks = list(range(0, len(table), step))
    ax.set_xticks(ticks, [table[i]["shard"] for i in ticks], rotation=90,
                  fontsize=8 if len(ticks) > 12 else 9)
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_ylabel("MB")
    ax.set_title("shard sizes" + (f" (one name every {step} shards)" if step > 1 else ""))
    return fig


def figures(stats: dict[str, Any]) -> dict[str, Figure]:
    """Every plot of the report that has data, by name (``classes``, the names of
    ``DISTRIBUTION_PANELS`` and ``VALUE_PANELS``, ``shards``); a plot without data is left
    out, never drawn empty. The caller closes them (``render`` does)."""
    made = {"classes": class_figure(stats),
            **{name: histogram_figure(stats, name) for name, *_ in DISTRIBUTION_PANELS},
            **{name: value_figure(stats, name) for name, _, _ in VALUE_PANELS},
            "shards": shard_figure(stats)}
    return {name: fig for name, fig in made.items() if fig is not None}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(stats: dict[str, Any], output: str) -> str:
    plots = figures(stats)
    cards = [("samples ok", stats["samples_ok"]), ("samples failed", stats["samples_failed"]),
             ("shards", stats["shards"]), ("in shards", size_text(stats["bytes"])),
             ("of video", duration_text(stats["hours"] * 3600)), ("frames", stats["frames"]),
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
                 f"{stats['class_threshold']} ok sample"
                 f"{'' if stats['class_threshold'] == 1 else 's'} (red)</p>")
    if flagged:
        parts.append("<p class=warn>" + html.escape(", ".join(
            f"{n} ({classes[n]})" for n in sorted(flagged))) + "</p>")
    if "classes" in plots:
        parts.append(_png(plots.pop("classes")))
    parts.append("<h2>Failures</h2>")
    if stats["failures"]:
        parts.append(_table(["stage", "failed samples"], [[k, v] for k, v in
                                                          stats["failures_by_stage"].items()]))
        parts.append(_table(["reason", "failed samples"], [[k, v] for k, v in
                                                           list(stats["failures"].items())[:50]]))
    else:
        parts.append("<p>none</p>")
    parts.append("<h2>Distributions</h2><div class=grid>")
    shown = set(plots)
    parts += [_png(plots.pop(name)) for name, *_ in DISTRIBUTION_PANELS if name in plots]
    parts.append("</div>")
    absent = [title for name, title, *_ in DISTRIBUTION_PANELS if name not in shown]
    if absent:
        parts.append(f"<p>Left out, no ok sample has a value: {', '.join(absent)}</p>")
    parts += [_png(plots.pop(name)) for name, _, _ in VALUE_PANELS if name in plots]
    table = stats["shard_table"]
    parts.append("<h2>Shards</h2>")
    if "shards" in plots:
        parts.append(_png(plots.pop("shards")))
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
