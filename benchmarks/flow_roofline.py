"""Roofline projection of the fused TV-L1 (``tvl1_flow(..., compiled=True)``) at 340x256.

A script, not a test: it measures counts, not times, so it runs on any machine (the CPU is
enough) and projects GPU pairs/s from them. Three measurements, then a projection:

1. bytes per inner iteration per pixel, from Inductor's own accounting: ``_inner_steps``
   (batch 1, 2 flow channels, 256x340, height and width symbolic as the solver marks them)
   and the median filter graphs ``_median5_active`` and ``_median3_active`` are compiled with a
   fresh Inductor cache and the ``inductor_metrics`` log on, and
   ``torch._inductor.metrics.num_bytes_accessed`` is read (``GraphLowering.count_bytes``:
   per fused kernel, each buffer it reads or writes counted once, at most its size), with the
   number of generated kernels and a per-kernel breakdown (a hook on ``count_bytes``); once
   with Inductor's CPU defaults and once with its (lower) GPU realization thresholds, and
   against the compulsory traffic (inputs read once, outputs written once);
2. FLOPs per pixel, by walking the ATen graph that Inductor lowers (after AOT autograd and
   Inductor's decompositions): each elementwise arithmetic, comparison or select op counts
   its output elements, a reduction its input elements, data movement nothing;
3. inner iterations and median filter calls per pair, on real frames, per preset: the eager
   path (CPU, batch 1, same flows as the compiled one) with ``_tvl1_step`` and
   ``_median_blur`` wrapped, each call weighted by its pyramid level's pixels over the full
   size ("full-resolution-equivalent" iterations); also what a batch of the measured pairs
   would run in lockstep (each outer iteration as long as its slowest pair, in whole compiled
   calls of ``--inner-unroll`` iterations) and the ceiling without early stopping;
4. projection: bytes per pair = (bytes/px/iteration x iterations + median bytes/px x median
   calls) x 256 x 340; pairs/s = bandwidth x efficiency / bytes per pair on an H200
   (4.8 TB/s) and an L4 (300 GB/s), with the arithmetic intensity against each GPU's FP32
   machine balance. Warping and the pyramid (eager, a few per cent) are not in it.

The bytes are those of the CPU (C++) kernels' fusion; Triton on CUDA goes through the same
scheduler but may fuse differently: the GPU figures are projections until
``benchmarks/gpu_check.sh`` runs on a GPU.

    python benchmarks/flow_roofline.py [--data DIR] [--sequences Dimetrodon,Grove2,...]
                                       [--video FILE --pairs N] [--presets opencv,quality,tsn]
                                       [--inner-unroll K] [--steps S] [--efficiency 0.6]
                                       [--threads N] [--json FILE]

About 2-3 minutes on 2 idle cores (the eager runs, then six cold compilations). ``--video``
counts on the first ``--pairs`` consecutive pairs of your own video (decoded at 340x256, gray)
instead of the Middlebury frames.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from actprep.extractors.flow.params import TVL1Params, preset

SIZE = (340, 256)  # width, height
W, H = SIZE
PIXELS = W * H
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "middlebury"))
if not os.path.isdir(DEFAULT_DATA):  # no shared set beside the checkout: the repository's
    DEFAULT_DATA = os.path.join(HERE, "..", "tests", "data", "middlebury")  # (3 sequences, gray)
REAL_SEQUENCES = ("Dimetrodon", "Grove2", "Grove3", "Hydrangea", "RubberWhale")
# name: (memory bandwidth B/s, FP32 non-tensor peak FLOP/s), vendor figures
GPUS = {"H200": (4.8e12, 67e12), "L4": (300e9, 30e12)}
DEFAULT_EFFICIENCY = 0.6
TARGET = ("opencv", "H200", 1000.0)  # preset, GPU, pairs/s at 340x256
ANCHORS = ("OpenCV's CUDA TV-L1: 14-30 pairs/s at 320x240; denseflow: 45-120 pairs/s "
           "(published figures, not measured here)")

# FLOP counting rule, by ATen op name (overload packet)
ELEMENTWISE = {"add", "sub", "mul", "div", "neg", "sqrt", "rsqrt", "reciprocal", "abs",
               "minimum", "maximum", "clamp", "clamp_min", "clamp_max", "pow", "square",
               "where", "lt", "gt", "le", "ge", "eq", "ne", "logical_and", "logical_or",
               "logical_not", "bitwise_and", "bitwise_or", "bitwise_not", "sign", "exp",
               "log", "floor", "ceil", "round", "fma", "lerp"}
REDUCTIONS = {"sum", "mean", "amax", "amin", "prod", "any", "all"}
MOVEMENT = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "expand", "slice",
            "select", "permute", "clone", "copy", "copy_", "cat", "constant_pad_nd", "pad",
            "convert_element_type", "_to_copy", "full", "scalar_tensor", "empty", "zeros",
            "ones", "alias", "detach", "lift_fresh_copy", "index", "split", "unbind", "stack",
            "as_strided", "sym_size", "sym_numel", "iota", "arange"}


# ---------------------------------------------------------------------------------------------
# Inductor with a fresh cache and its byte accounting on


def fresh_inductor() -> str:
    """Points Inductor at a new empty cache folder (before torch is imported), turns its
    caches off and the ``inductor_metrics`` log on (its records dropped, the counts kept)."""
    cache = tempfile.mkdtemp(prefix="actprep-roofline-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    import torch
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor import compile_fx

    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False
    torch._logging.set_logs(inductor_metrics=True)
    compile_fx.inductor_metrics_log.addFilter(lambda record: False)  # counted, not printed
    return cache


@dataclass
class GraphCount:
    """What one compiled graph costs, as Inductor and its ATen graph say."""

    label: str
    bytes_accessed: int = 0  # torch._inductor.metrics.num_bytes_accessed
    hook_bytes: int = 0  # the same from the per-kernel breakdown
    kernels: int = 0  # torch._inductor.metrics.generated_kernel_count
    compulsory_bytes: int = 0  # each input read once, each output written once
    flops: int = 0
    flops_by_op: dict[str, int] = field(default_factory=dict)
    uncounted_ops: list[str] = field(default_factory=list)
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    compile_s: float = 0.0


def _hint(n: Any) -> int:
    """Concrete value of an int or SymInt (its example value)."""
    if isinstance(n, int):
        return n
    return int(n.node.hint if n.node.hint is not None else n.node.shape_env.size_hint(n.node.expr))


def _numel(meta_val: Any) -> int:
    return math.prod(_hint(s) for s in meta_val.shape)


def count_flops(gm: Any, record: GraphCount) -> None:
    """Adds the FLOPs of an ATen FX graph to ``record`` (rule in ``ELEMENTWISE`` etc.)."""
    by_op: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not hasattr(node.target, "overloadpacket"):
            continue
        name = node.target.overloadpacket.__name__
        if name in ELEMENTWISE:
            by_op[name] += _numel(node.meta["val"])
        elif name in REDUCTIONS:
            by_op[name] += _numel(node.args[0].meta["val"])
        elif name not in MOVEMENT and name not in record.uncounted_ops:
            record.uncounted_ops.append(name)
    record.flops_by_op = dict(by_op)
    record.flops = sum(by_op.values())


@contextlib.contextmanager
def kernel_breakdown(record: GraphCount, names: list[str]) -> Iterator[None]:
    """Wraps ``GraphLowering.count_bytes`` to keep each fused kernel's buffers and bytes
    (it is only reachable while the graph is being compiled)."""
    from torch._inductor.graph import GraphLowering

    original = GraphLowering.count_bytes

    def counting(self: Any) -> Any:
        result = original(self)
        inputs = dict(zip(self.graph_input_names, names))
        for node in self.scheduler.nodes:
            acc = node.get_read_write_buffer_accesses(include_reads=True, include_writes=True)
            writes = {d.name for d in node.read_writes.writes}
            record.breakdown.append({
                "kernel": node.get_name(), "bytes": int(sum(acc.values())),
                "buffers": {inputs.get(k, k) + (" (w)" if k in writes else ""): int(v)
                            for k, v in acc.items() if v}})
        record.hook_bytes += int(sum(k["bytes"] for k in record.breakdown))
        return result

    GraphLowering.count_bytes = counting
    try:
        yield
    finally:
        GraphLowering.count_bytes = original


class _Captured(Exception):
    """Raised by ``_Capture`` with the function the solver was about to compile and its
    arguments."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.name = getattr(fn, "__name__", repr(fn))
        super().__init__(self.name)
        self.fn, self.call_args, self.kwargs = fn, args, kwargs


@dataclass(frozen=True)
class _Capture:
    """Stands in for ``tvl1_torch.Fused``: instead of compiling and calling, raises
    ``_Captured`` with the call, so the graph is measured on exactly the arguments (and
    dynamic marks) the compiled path would give it."""

    unroll: int = 1
    cuda_graphs: bool = False
    kernels: str = "inductor"

    def fn(self, fn: Callable) -> Callable:
        def capture(*args: Any, **kwargs: Any) -> Any:
            raise _Captured(fn, args, kwargs)
        return capture

    def kept(self, *tensors: Any) -> tuple:
        return tensors


def _captured(call: Callable[[], Any]) -> _Captured:
    try:
        call()
    except _Captured as got:
        return got
    raise SystemExit("the solver did not call a compiled function where expected")


def measure_graph(label: str, call: _Captured) -> GraphCount:
    """Compiles the captured call (height and width symbolic where the solver marked them)
    and returns Inductor's byte and kernel counts and the FLOPs of the ATen graph it
    lowered."""
    import torch
    import torch._inductor.metrics as metrics
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    record = GraphCount(label)
    names: list[str] = []

    def inner(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        count_flops(gm, record)
        return compile_fx_inner(gm, example_inputs, **kwargs)

    def backend(gm: Any, example_inputs: Any) -> Any:
        names[:] = [_placeholder_name(n) for n in gm.graph.nodes if n.op == "placeholder"]
        return compile_fx(gm, example_inputs, inner_compile=inner)

    torch._dynamo.reset()
    metrics.reset()
    start = time.perf_counter()
    with kernel_breakdown(record, names), torch.no_grad():
        out = torch.compile(call.fn, backend=backend, dynamic=None)(*call.call_args, **call.kwargs)
    record.compile_s = time.perf_counter() - start
    record.bytes_accessed = int(metrics.num_bytes_accessed)
    record.kernels = int(metrics.generated_kernel_count)
    outs = out if isinstance(out, tuple) else (out,)
    tensors = (*call.call_args, *call.kwargs.values(), *outs)
    record.compulsory_bytes = sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))
    return record


def _placeholder_name(node: Any) -> str:
    """Dynamo's placeholder name without its decoration: ``L_u_`` -> ``u``."""
    name = node.name
    if name[:2] in ("L_", "l_") and name.endswith("_"):
        return name[2:-1]
    return name


def inner_call(params: TVL1Params, steps: int) -> _Captured:
    """The first compiled call ``_inner_compiled`` makes for one outer iteration at
    256x340 (batch 1, C = 2, ``steps`` iterations per call), random state."""
    import torch

    from actprep.extractors.flow import tvl1_torch

    gen = torch.Generator().manual_seed(0)
    u, px, py, gvec = (torch.randn(1, 2, H, W, generator=gen) for _ in range(4))
    grad = torch.rand(1, H, W, generator=gen) * 100
    rho_c = torch.randn(1, H, W, generator=gen)
    active = torch.ones(1, dtype=torch.bool)
    eps = params.epsilon ** 2 * PIXELS
    return _captured(lambda: tvl1_torch._inner_compiled(
        u, px, py, (gvec, grad, rho_c), active, eps, params, _Capture(steps)))


def median_call(size: int) -> _Captured:
    """The compiled median call ``_filter_active`` makes on CUDA at 256x340 (batch 1); on the
    CPU it uses OpenCV's medianBlur instead, so the call is built here as it builds it."""
    import torch

    from actprep.extractors.flow import tvl1_torch

    u = torch.randn(1, 2, H, W, generator=torch.Generator().manual_seed(1))
    active = torch.ones(1, dtype=torch.bool)
    padded = tvl1_torch._replicate_pad(u, size // 2)
    tvl1_torch._dynamic_hw(padded, u)
    return _Captured(tvl1_torch._MEDIAN_ACTIVE[size], (padded, u, active), {})


def check_plausible(rec: GraphCount) -> str:
    """A sentence on whether the count makes sense; raises if it is unusable."""
    if rec.bytes_accessed == 0 and rec.hook_bytes == 0:
        raise SystemExit(f"{rec.label}: Inductor counted 0 bytes (is the inductor_metrics "
                         "log on, and the cache fresh?)")
    if rec.bytes_accessed == 0:
        rec.bytes_accessed = rec.hook_bytes
        return "metrics counter empty: bytes summed from the per-kernel hook"
    ratio = rec.bytes_accessed / rec.compulsory_bytes
    agree = "equal" if rec.hook_bytes == rec.bytes_accessed else f"hook {rec.hook_bytes}"
    if ratio < 0.99:
        verdict = "SUSPECT, below"
    elif ratio < 1.01:
        verdict = "plausible: equal to"
    else:
        verdict = "plausible (intermediates written and re-read between kernels):"
    return (f"{verdict} {ratio:.2f}x the compulsory traffic (each input read once, each "
            f"output written once); per-kernel sum {agree}")


# ---------------------------------------------------------------------------------------------
# iterations on real frames (eager path, counted)


def load_middlebury(data: str, names: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, prev, next) gray uint8 340x256 pairs, resized and converted as
    ``benchmarks/flow.py`` does."""
    out = []
    for name in names:
        frames = []
        for f in ("frame10.png", "frame11.png"):
            img = cv2.imread(os.path.join(data, name, f))
            if img is None:
                raise SystemExit(f"no {name}/{f} under {data} (pass --data)")
            img = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        out.append((name, frames[0], frames[1]))
    return out


def load_video(path: str, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to ``count`` consecutive gray 340x256 pairs from the start of a video."""
    from actprep.extractors.decode import iter_frames
    from actprep.extractors.flow.engine import to_gray

    frames = iter_frames(path, SIZE)
    try:
        gray = [to_gray(f) for f in itertools.islice(frames, count + 1)]
    finally:
        frames.close()
    if len(gray) < 2:
        raise SystemExit(f"{path}: fewer than two frames")
    base = os.path.basename(path)
    return [(f"{base}#{i}", gray[i], gray[i + 1]) for i in range(len(gray) - 1)]


@dataclass
class PairCount:
    """Inner iterations of one pair per (level, warp, outer iteration), level pixels, and
    its median filter and warp calls (full-resolution equivalents)."""

    slots: dict[tuple[int, int, int], int] = field(default_factory=dict)
    level_pixels: dict[int, int] = field(default_factory=dict)
    median: float = 0.0
    warps: float = 0.0

    def iterations(self) -> float:
        return sum(n * self.level_pixels[s[0]] for s, n in self.slots.items()) / PIXELS


@contextlib.contextmanager
def counting(record: PairCount) -> Iterator[None]:
    """Wraps the eager solver's per-warp, per-outer-iteration and per-step functions (module
    attributes of tvl1_torch, looked up at each call) to fill ``record``."""
    from actprep.extractors.flow import tvl1_torch as tv

    saved = {k: getattr(tv, k) for k in ("_warp_terms", "_inner_eager", "_tvl1_step",
                                         "_median_blur")}
    state = {"shape": None, "level": -1, "warp": -1, "outer": -1}

    def warp_terms(i0: Any, *a: Any) -> Any:
        if tuple(i0.shape[-2:]) != state["shape"]:
            state.update(shape=tuple(i0.shape[-2:]), level=state["level"] + 1, warp=-1)
            record.level_pixels[state["level"]] = i0.shape[-2] * i0.shape[-1]
        state.update(warp=state["warp"] + 1, outer=-1)
        record.warps += i0.shape[-2] * i0.shape[-1] / PIXELS
        return saved["_warp_terms"](i0, *a)

    def inner_eager(*a: Any) -> Any:
        state["outer"] += 1
        return saved["_inner_eager"](*a)

    def step(u: Any, *a: Any) -> Any:
        key = (state["level"], state["warp"], state["outer"])
        record.slots[key] = record.slots.get(key, 0) + 1
        return saved["_tvl1_step"](u, *a)

    def median(u: Any, size: int) -> Any:
        record.median += u.shape[-2] * u.shape[-1] / PIXELS
        return saved["_median_blur"](u, size)

    wrappers = {"_warp_terms": warp_terms, "_inner_eager": inner_eager, "_tvl1_step": step,
                "_median_blur": median}
    for k, fn in wrappers.items():
        setattr(tv, k, fn)
    try:
        yield
    finally:
        for k, fn in saved.items():
            setattr(tv, k, fn)


def count_pair(prev: np.ndarray, nxt: np.ndarray, params: TVL1Params) -> PairCount:
    """Runs the eager solver on one pair (CPU, batch 1) and counts its work."""
    import torch

    from actprep.extractors.flow.tvl1_torch import tvl1_flow

    record = PairCount()
    a = torch.from_numpy(prev.astype(np.float32))[None]
    b = torch.from_numpy(nxt.astype(np.float32))[None]
    with counting(record):
        tvl1_flow(a, b, params)
    return record


def lockstep(counts: list[PairCount], params: TVL1Params, unroll: int) -> tuple[float, float]:
    """(iterations, median calls) per pair, full-resolution equivalent, when all the pairs
    run as one batch: each outer iteration runs until its slowest pair stops, in whole
    compiled calls of ``unroll`` iterations."""
    longest: dict[tuple[int, int, int], int] = defaultdict(int)
    for c in counts:
        for slot, n in c.slots.items():
            longest[slot] = max(longest[slot], n)
    pixels = counts[0].level_pixels
    calls = -(-params.inner_iterations // unroll)  # the last one masked past the end
    its = sum(min(calls, -(-n // unroll)) * unroll * pixels[s[0]]
              for s, n in longest.items()) / PIXELS
    med = sum(pixels[s[0]] for s in longest) / PIXELS if params.median_filtering > 1 else 0.0
    return its, med


def ceiling(params: TVL1Params) -> tuple[float, float]:
    """(iterations, median calls) per pair without early stopping."""
    import torch

    from actprep.extractors.flow import tvl1_torch

    levels = tvl1_torch._pyramid(torch.zeros(1, H, W), params)
    frac = sum(lv.shape[-2] * lv.shape[-1] for lv in levels) / PIXELS
    outer = frac * params.warps * params.outer_iterations
    return outer * params.inner_iterations, outer if params.median_filtering > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# projection


@dataclass
class Costs:
    """Per-pixel (bytes, FLOPs) of one inner iteration and of one median call per size."""

    label: str
    iteration: tuple[float, float]
    median: dict[int, tuple[float, float]]


def costs_of(label: str, inner: GraphCount, medians: dict[int, GraphCount], steps: int,
             compulsory: bool = False) -> Costs:
    """Costs from Inductor's counts, or with ``compulsory`` from the inputs and outputs
    alone (what a perfectly fused kernel would move)."""
    def per_px(rec: GraphCount, n: int) -> tuple[float, float]:
        nbytes = rec.compulsory_bytes if compulsory else rec.bytes_accessed
        return nbytes / n / PIXELS, rec.flops / n / PIXELS
    return Costs(label, per_px(inner, steps), {k: per_px(v, 1) for k, v in medians.items()})


def project(iters: float, medians: float, costs: Costs, size: int, efficiency: float
            ) -> dict[str, Any]:
    """Bytes, FLOPs and projected pairs/s per GPU for one pair."""
    b_med, f_med = costs.median.get(size, (0.0, 0.0))
    bytes_med = b_med * medians * PIXELS
    bytes_pair = costs.iteration[0] * iters * PIXELS + bytes_med
    flops_pair = (costs.iteration[1] * iters + f_med * medians) * PIXELS
    out: dict[str, Any] = {"costs": costs.label, "iterations": iters, "median_calls": medians,
                           "bytes_per_pair": bytes_pair, "median_share": bytes_med / bytes_pair,
                           "flops_per_pair": flops_pair, "flops_per_byte": flops_pair / bytes_pair}
    for gpu, (bw, peak) in GPUS.items():
        out[gpu] = {"pairs_s_peak_bw": bw / bytes_pair,
                    "pairs_s_at_efficiency": bw * efficiency / bytes_pair,
                    "pairs_s_compute_bound": peak / flops_pair,
                    "machine_balance_flops_per_byte": peak / bw}
    return out


def preset_rows(c: dict, params: TVL1Params, costs: dict[str, Costs], eff: float
                ) -> dict[str, dict]:
    """The projection rows of one preset: per-pair counts under each cost model, then the
    lockstep batch and the ceiling under the CPU fusion."""
    size, cpu = params.median_filtering, costs["cpu"]
    rows = {f"per pair, {k.label}": project(c["iterations"], c["median_calls"], k, size, eff)
            for k in costs.values()}
    lock = c["lockstep"]
    rows[f"batch in lockstep (unroll {lock['unroll']}), {cpu.label}"] = project(
        lock["iterations"], lock["median_calls"], cpu, size, eff)
    rows[f"no early stopping, {cpu.label}"] = project(
        c["ceiling"]["iterations"], c["ceiling"]["median_calls"], cpu, size, eff)
    return rows


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _buffers(k: dict) -> str:
    items = [f"{n} {b / PIXELS:.1f}" for n, b in k["buffers"].items() if b / PIXELS >= 0.05]
    more = f", +{len(items) - 8} more" if len(items) > 8 else ""
    return ", ".join(items[:8]) + more


def print_graph(rec: GraphCount, steps: int, note: str) -> None:
    per = PIXELS * steps
    print(f"### {rec.label}\n")
    print(f"- bytes: {rec.bytes_accessed:,} = **{rec.bytes_accessed / per:.1f} B/pixel**"
          f"{' per iteration' if steps > 1 else ''}; compulsory "
          f"{rec.compulsory_bytes / per:.1f} B/pixel; {note}")
    print(f"- fused kernels generated: **{rec.kernels}** (scheduler nodes: "
          f"{len(rec.breakdown)}); compiled in {rec.compile_s:.0f} s")
    ops = ", ".join(f"{k} {v / per:.1f}" for k, v in sorted(rec.flops_by_op.items()))
    print(f"- FLOPs: **{rec.flops / per:.1f} per pixel** ({ops})")
    if rec.uncounted_ops:
        print(f"- ops neither counted nor data movement: {', '.join(rec.uncounted_ops)}")
    print("- per kernel, B/px (buffer B/px; (w) written):")
    for k in rec.breakdown:
        print(f"  - {k['kernel'][:40]}: {k['bytes'] / PIXELS:.1f} [{_buffers(k)}]")
    print()


def print_preset(name: str, rows: dict[str, dict], efficiency: float) -> None:
    print(f"### {name}\n")
    print("| iterations per pair, bytes from | full-res iterations | median calls | MB/pair "
          "| median share | H200 pairs/s (100 % / {0:.0f} %) | L4 pairs/s (100 % / {0:.0f} %) |"
          .format(efficiency * 100))
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, p in rows.items():
        h, lq = p["H200"], p["L4"]
        print(f"| {label} | {p['iterations']:.1f} | {p['median_calls']:.1f} | "
              f"{p['bytes_per_pair'] / 1e6:,.0f} | {p['median_share']:.0%} | "
              f"{_fmt(h['pairs_s_peak_bw'])} / {_fmt(h['pairs_s_at_efficiency'])} | "
              f"{_fmt(lq['pairs_s_peak_bw'])} / {_fmt(lq['pairs_s_at_efficiency'])} |")
    p = next(iter(rows.values()))
    ai = p["flops_per_byte"]
    bound = "; ".join(f"{g} balance {v['machine_balance_flops_per_byte']:.0f} FLOP/B, "
                      f"compute-bound ceiling {_fmt(v['pairs_s_compute_bound'])} pairs/s"
                      for g, v in ((g, p[g]) for g in GPUS))
    print(f"\nArithmetic intensity (first row): {p['flops_per_pair'] / 1e9:.2f} GFLOP / "
          f"{p['bytes_per_pair'] / 1e9:.2f} GB = {ai:.2f} FLOP/B, far below {bound}: "
          "memory bound.\n")


def print_counts(c: dict) -> None:
    its = [v["iterations"] for v in c["per_pair"].values()]
    per = ", ".join(f"{n} {v['iterations']:.0f}" for n, v in c["per_pair"].items())
    print(f"Per pair: {c['iterations']:.1f} full-resolution-equivalent inner iterations "
          f"(range {min(its):.0f}-{max(its):.0f}: {per}), {c['median_calls']:.1f} median calls, "
          f"{c['warps']:.1f} warps (their cost is not in the bytes).\n")


# ---------------------------------------------------------------------------------------------


def gpu_thresholds() -> dict[str, int]:
    """Inductor's realization thresholds for non-CPU devices, set explicitly so that a CPU
    compile materialises intermediates where a CUDA compile would (its defaults for the
    CPU are higher)."""
    import torch._inductor.config as c

    return {"realize_opcount_threshold": c._realize_opcount_threshold_default,
            "realize_acc_reads_threshold": c._realize_acc_reads_threshold_default}


def measure_graphs(presets: list[str], steps: int, patch: dict[str, Any], tag: str
                   ) -> tuple[GraphCount, dict[int, GraphCount]]:
    """Inductor counts of the inner-iteration graph and of the median sizes the presets use,
    compiled with the Inductor config ``patch``."""
    import torch._inductor.config as inductor_config

    from actprep.extractors.flow import tvl1_torch

    sizes = sorted({preset(p).median_filtering for p in presets} - {1}, reverse=True)
    with inductor_config.patch(patch):
        call = inner_call(preset(presets[0]), steps)
        inner = measure_graph(f"inner iteration ({call.name}, steps={steps}){tag}", call)
        medians = {}
        for size in sizes:
            if size in tvl1_torch._MEDIAN_NET:
                call = median_call(size)
                medians[size] = measure_graph(f"median {size}x{size} ({call.name}){tag}", call)
    return inner, medians


def count_presets(pairs: list, presets: list[str], unroll: int
                  ) -> dict[str, dict[str, Any]]:
    """Per preset: the per-pair counts, the lockstep batch and the ceiling."""
    out = {}
    for name in presets:
        params = preset(name)
        start = time.perf_counter()
        counts = [count_pair(a, b, params) for _, a, b in pairs]
        its, med = lockstep(counts, params, unroll)
        out[name] = {
            "per_pair": {n: {"iterations": c.iterations(), "median_calls": c.median,
                             "warps": c.warps} for (n, _, _), c in zip(pairs, counts)},
            "iterations": float(np.mean([c.iterations() for c in counts])),
            "median_calls": float(np.mean([c.median for c in counts])),
            "warps": float(np.mean([c.warps for c in counts])),
            "lockstep": {"iterations": its, "median_calls": med, "unroll": unroll},
            "ceiling": dict(zip(("iterations", "median_calls"), ceiling(params))),
            "eager_seconds": time.perf_counter() - start}
        print(f"# {name}: {out[name]['iterations']:.1f} iterations, "
              f"{out[name]['median_calls']:.1f} median calls per pair "
              f"({out[name]['eager_seconds']:.0f} s)", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="Middlebury folder")
    p.add_argument("--sequences",
                   help="Middlebury sequences (default: the real-camera ones under --data)")
    p.add_argument("--video", help="count on consecutive pairs of this video instead")
    p.add_argument("--pairs", type=int, default=8, help="pairs taken from --video")
    p.add_argument("--presets", default="opencv,quality,tsn")
    p.add_argument("--inner-unroll", type=int, default=None,
                   help="iterations per compiled call, for the lockstep row (default: "
                   "tvl1_torch's)")
    p.add_argument("--steps", type=int, default=1,
                   help="inner iterations in the compiled graph whose bytes are counted")
    p.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                   help="assumed achievable fraction of the memory bandwidth")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the eager counting runs (the counts do not depend "
                   "on it; 1 keeps OpenMP from spinning when the cores are shared)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    presets = args.presets.split(",")
    for name in presets:
        preset(name)

    cache = fresh_inductor()
    import torch

    from actprep.extractors.flow.tvl1_torch import DEFAULT_INNER_UNROLL

    torch.set_num_threads(args.threads)
    unroll = args.inner_unroll or DEFAULT_INNER_UNROLL
    if args.video:
        pairs = load_video(args.video, args.pairs)
        source = f"{len(pairs)} consecutive pairs of {args.video}"
    else:
        names = (args.sequences.split(",") if args.sequences else
                 [n for n in REAL_SEQUENCES
                  if os.path.exists(os.path.join(args.data, n, "frame10.png"))])
        pairs = load_middlebury(args.data, names)
        source = f"Middlebury frame10/frame11 of {', '.join(names)}"
    info = {"cpu": _cpu_name(), "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "python": platform.python_version(),
            "size": f"{W}x{H}", "frames": source,
            "inductor_cache": f"{cache} (fresh, removed afterwards)"}
    print(f"# flow roofline at {W}x{H}: {info}", file=sys.stderr)
    # the eager runs go first: after Inductor's C++ kernels have run, their OpenMP threads
    # can slow the eager ops down many times over on shared cores
    counts = count_presets(pairs, presets, unroll)
    try:
        graphs = {"cpu": measure_graphs(presets, args.steps, {}, ""),
                  "gpu": measure_graphs(presets, args.steps, gpu_thresholds(),
                                        ", GPU realization thresholds")}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    report(info, graphs, counts, presets, args)
    return 0


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor()


def report(info: dict, graphs: dict[str, tuple], counts: dict, presets: list[str],
           args: argparse.Namespace) -> None:
    """Prints the markdown report and writes the JSON."""
    eff, steps = args.efficiency, args.steps
    recs = [r for inner, medians in graphs.values() for r in (inner, *medians.values())]
    notes = {rec.label: check_plausible(rec) for rec in recs}
    print(f"## Roofline inputs ({info['size']}, {info['cpu']}, {info['cores']} cores, "
          f"torch {info['torch']})\n")
    print(f"Frames for the iteration counts: {info['frames']}.\n")
    inner, medians = graphs["cpu"]
    for rec in (inner, *medians.values()):
        print_graph(rec, steps if rec is inner else 1, notes[rec.label])
    print(f"With Inductor's GPU realization thresholds ({gpu_thresholds()}; the CPU's are "
          "higher), same CPU compiler otherwise:\n")
    g_inner, g_medians = graphs["gpu"]
    for rec in (g_inner, *g_medians.values()):
        n = steps if rec is g_inner else 1
        print(f"- {rec.label}: {rec.bytes_accessed / n / PIXELS:.1f} B/pixel, "
              f"{rec.kernels} kernels")
    print("\nBytes: Inductor's `metrics.num_bytes_accessed` (`GraphLowering.count_bytes`): per "
          "fused kernel, each buffer it reads or writes counted once, at most its size; "
          "intermediates inside a fused kernel cost nothing. Compulsory: the graph's inputs "
          "read once and its outputs written once. FLOPs: the ATen graph Inductor lowers; 1 "
          "per output element of each elementwise arithmetic, comparison or select op (add, "
          "sub, mul, div, sqrt, neg, pow, minimum, maximum, clamp, where, lt, gt, and...), 1 "
          "per input element of a reduction (sum), 0 for data movement (pad, slice, cat, "
          "views, dtype conversions).\n")
    costs = {"cpu": costs_of("Inductor CPU fusion", inner, medians, steps),
             "gpu": costs_of("GPU realize thresholds", g_inner, g_medians, steps),
             "min": costs_of("compulsory traffic only", inner, medians, steps, True)}
    results: dict[str, Any] = {"machine": info, "efficiency_assumed": eff, "steps": steps,
                               "graphs": {r.label: {**r.__dict__, "check": notes[r.label]}
                                          for r in recs},
                               "presets": {}, "anchors": ANCHORS,
                               "target": dict(zip(("preset", "gpu", "pairs_s"), TARGET))}
    print("## Projection (memory bound: pairs/s = bandwidth x efficiency / bytes per pair)\n")
    print(f"GPUs: H200 4.8 TB/s, 67 TFLOP/s FP32; L4 300 GB/s, 30 TFLOP/s FP32. "
          f"{eff:.0%} of peak bandwidth is an assumption, not a measurement. Warping and the "
          "pyramid (eager, a few per cent) are not included. Rows: 'per pair' counts each "
          "pair's own iterations (as if alone, or ideally compacted); 'batch in lockstep' runs "
          "the measured pairs as one batch, each outer iteration as long as its slowest pair "
          "in whole compiled calls (a larger batch can only run more, up to the next row); "
          "'no early stopping' runs every iteration the preset allows.\n")
    for name in presets:
        rows = preset_rows(counts[name], preset(name), costs, eff)
        print_preset(name, rows, eff)
        print_counts(counts[name])
        results["presets"][name] = {**counts[name], "projection": rows}
    print(f"Anchors: {ANCHORS}.\n")
    _print_target(results, eff)
    print("Caveat: the bytes come from the CPU (C++) kernels' fusion; Triton's fusion on CUDA "
          "uses the same scheduler but may differ. These are projections until "
          "benchmarks/gpu_check.sh runs on a GPU.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


def _print_target(results: dict, eff: float) -> None:
    name, gpu, want = TARGET
    if name not in results["presets"]:
        return
    rows = results["presets"][name]["projection"]
    got = {k: v[gpu]["pairs_s_at_efficiency"] for k, v in rows.items()}
    verdict = "; ".join(f"{k}: {v:,.0f} ({'meets' if v >= want else 'misses'})"
                        for k, v in got.items())
    c = results["presets"][name]
    budget = GPUS[gpu][0] * eff / want  # bytes per pair allowed
    per_it = {}
    for label, row in rows.items():
        if label.startswith("per pair") and "GPU" not in label:
            med_bytes = row["bytes_per_pair"] * row["median_share"]
            per_it[label] = (budget - med_bytes) / c["iterations"] / PIXELS
    allowed = " and ".join(f"{v:.0f} B/pixel with the median bytes of '{k}'"
                           for k, v in per_it.items())
    print(f"Target: at least {want:,.0f} pairs/s at {W}x{H} with `{name}` on one {gpu}. "
          f"Projected at {eff:.0%} of bandwidth: {verdict}. The target allows "
          f"{budget / 1e9:.2f} GB per pair: at the measured iteration and median counts, "
          f"at most {allowed} per inner iteration.\n")


if __name__ == "__main__":
    sys.exit(main())
