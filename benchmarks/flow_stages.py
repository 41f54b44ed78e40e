"""Where the compiled CPU TV-L1 spends its time, stage by stage, against the inner
iteration's former borders and the former warp.

A script, not a test. The compiled solver (``tvl1_flow(..., compiled=True)``, batch 1, what
the engine runs on the CPU) runs over Middlebury pairs resized to 340x256 with its stages
timed by wrapping the module's functions: the pyramids, the warps (``_warp_terms``: bicubic
sampling of I1 and its gradients, then the linearisation), the median filters, the compiled
inner loops and the flow upscaling. Each round runs the pairs three times, interleaved so
that the machine's drift hits all three (medians over the rounds): as the CPU path does
(stencil borders as pieces joined by ``torch.cat``, OpenCV's ``remap`` as the warp, OpenCV
held to one thread during the solve); with the borders written with ``F.pad`` as before
(same flows, bit for bit); and with the former warp (``grid_sample``, the path of other
devices, forced onto the CPU; OpenCV's default threads). glibc's malloc settings
(``tvl1_torch._keep_freed_memory``) are process-wide, so all three run with them.

    python benchmarks/flow_stages.py [--data DIR] [--preset opencv] [--rounds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from actprep.extractors.flow import tvl1_torch as tv
from actprep.extractors.flow.params import preset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "middlebury"
if not DEFAULT_DATA.is_dir():  # no shared set beside the checkout: the repository's
    DEFAULT_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "middlebury"
STAGES = {"_pyramid": "pyramid", "_warp_terms": "warp", "_filter_active": "median",
          "_inner_compiled": "inner loop", "_upscale_flow": "upscale"}
SIZE = (340, 256)


def load_pairs(data: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The Middlebury frame pairs (frame10, frame11), gray, resized to 340x256."""
    pairs = []
    for seq in sorted(p for p in data.iterdir() if (p / "frame10.png").exists()):
        a, b = (cv2.resize(cv2.imread(str(seq / f"frame{n}.png"), cv2.IMREAD_GRAYSCALE), SIZE)
                for n in (10, 11))
        pairs.append(tuple(torch.from_numpy(x.astype(np.float32))[None] for x in (a, b)))
    if not pairs:
        raise SystemExit(f"{data}: no Middlebury frame10.png/frame11.png pairs")
    return pairs


def padded_primal(u, px, py, gvec, grad, rho_c, l_t, theta, run=None):
    """The primal update with F.pad borders: the inner iteration before the pieces."""
    div = (px - F.pad(px[..., :, :-1], (1, 0, 0, 0))) + (py - F.pad(py[..., :-1, :], (0, 0, 1, 0)))
    rho = rho_c + (gvec * u).sum(1)
    thr = l_t * grad
    fi = -rho / grad.clamp_min(tv._FLT_EPSILON)
    coef = torch.where(rho < -thr, l_t, torch.where(
        rho > thr, -l_t, torch.where(grad > tv._FLT_EPSILON, fi, 0.0)))
    return tv._kept(run, (u + coef[:, None] * gvec) + theta * div, u)


def padded_dual(u, px, py, taut, run=None):
    """The dual update with F.pad borders: the inner iteration before the pieces."""
    ux = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    ng = 1.0 + taut * tv._sqrt_rounded(ux * ux + uy * uy)
    return tv._kept(run, (px + taut * ux) / ng, px), tv._kept(run, (py + taut * uy) / ng, py)


def grid_sample_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The warp of non-CPU devices, run on the CPU."""
    return tv._grid_sample_cubic(img, *tv._sample_coords(img, flow))


def timed(times: dict[str, float], stage: str, fn: Callable) -> Callable:
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[stage] += time.perf_counter() - start
    return run


def opencv_default_threads(device: torch.device) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


SWAPPED = ("_warp_bicubic", "_opencv_single_threaded", "_primal", "_dual")
VARIANTS = {  # name: the functions of SWAPPED
    "the CPU path (cat borders, remap, OpenCV on 1 thread)":
        (tv._warp_bicubic, tv._opencv_single_threaded, tv._primal, tv._dual),
    "F.pad borders (before)":
        (tv._warp_bicubic, tv._opencv_single_threaded, padded_primal, padded_dual),
    "grid_sample warp, OpenCV's default threads (before)":
        (grid_sample_warp, opencv_default_threads, tv._primal, tv._dual),
}


def one_round(pairs: list, params, variant: tuple[Callable, ...]) -> dict[str, float]:
    """Seconds per stage (and "total") for the pairs, one at a time, with ``variant``."""
    times: dict[str, float] = defaultdict(float)
    saved = {name: getattr(tv, name) for name in (*STAGES, *SWAPPED)}
    for name, stage in STAGES.items():
        setattr(tv, name, timed(times, stage, saved[name]))
    for name, fn in zip(SWAPPED, variant):
        setattr(tv, name, fn)
    try:
        start = time.perf_counter()
        for prev, nxt in pairs:
            tv.tvl1_flow(prev, nxt, params, compiled=True)
        times["total"] = time.perf_counter() - start
    finally:
        for name, fn in saved.items():
            setattr(tv, name, fn)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", default="opencv")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pairs, params = load_pairs(args.data), preset(args.preset)
    for variant in VARIANTS.values():  # compile, warm the caches
        one_round(pairs[:1], params, variant)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, variant in VARIANTS.items():
            rounds[name].append(one_round(pairs, params, variant))
    print(f"compiled CPU TV-L1, preset {args.preset}, {len(pairs)} pairs at "
          f"{SIZE[0]}x{SIZE[1]}, batch 1, {torch.get_num_threads()} threads; median of "
          f"{args.rounds} interleaved rounds, ms per pair (share of the total)\n")
    columns = [*STAGES.values(), "total"]
    print("| variant | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    medians = {}
    for name, runs in rounds.items():
        medians[name] = {c: statistics.median(r[c] for r in runs) / len(pairs) * 1e3
                         for c in columns}
        cells = [f"{medians[name][c]:.1f} ({medians[name][c] / medians[name]['total']:.0%})"
                 for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    new, padded, grid = (medians[name] for name in VARIANTS)
    print(f"\nthe CPU path against F.pad borders: inner loop "
          f"{new['inner loop'] / padded['inner loop']:.2f}x the time, whole solver "
          f"{new['total'] / padded['total']:.2f}x; against the grid_sample warp: warp stage "
          f"{new['warp'] / grid['warp']:.2f}x, whole solver {new['total'] / grid['total']:.2f}x")


if __name__ == "__main__":
    main()
