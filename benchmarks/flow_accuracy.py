"""Accuracy of the TV-L1 flows on the Middlebury sequences with public ground truth.

For each of the 8 sequences (full size, gray = cv2.cvtColor BGR2GRAY) computes the average
endpoint error against ``flow10.flo`` over known pixels for the torch backend, compiled
(``fused``, what the pipeline runs) and eager (``torch``, the reference), with the
``opencv``, ``tsn`` and ``quality`` presets, and for OpenCV's DualTVL1 with the ``opencv``
and ``quality`` presets, and prints a Markdown table (plus the mean per run and wall time;
the compiled runs are warmed up first, so compilation is not in their time), then the
largest |fused - eager| flow difference per preset over the sequences.

    python benchmarks/flow_accuracy.py [--data DIR] [--device cpu|cuda] [--runs a,b,...]

--data defaults to the shared reference set beside the checkout (../shared/data/middlebury,
all 8 sequences) and, where that is absent, to the repository's tests/data/middlebury (3 of
them: gray frames, ground truth within 1/2048 px; tests/data/README.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from actprep.extractors.flow.flo import read_flo
from actprep.extractors.flow.opencv_backend import opencv_flow
from actprep.extractors.flow.params import TVL1Params, preset
from actprep.extractors.flow.tvl1_torch import tvl1_flow

SEQUENCES = ("Dimetrodon", "Grove2", "Grove3", "Hydrangea", "RubberWhale", "Urban2", "Urban3",
             "Venus")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "middlebury"
DEFAULT_DATA = SHARED_DATA if SHARED_DATA.is_dir() else REPO / "tests" / "data" / "middlebury"
RUNS = ("fused:opencv", "torch:opencv", "fused:tsn", "torch:tsn", "fused:quality",
        "torch:quality", "opencv:opencv", "opencv:quality")
UNKNOWN = 1e9


def epe(flow: np.ndarray, gt: np.ndarray) -> float:
    """Average endpoint error over the pixels whose ground truth is known."""
    known = (np.abs(gt) < UNKNOWN).all(-1)
    return float(np.linalg.norm(flow - gt, axis=-1)[known].mean())


def load_gray(seq_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """frame10 and frame11 as uint8 gray."""
    return tuple(cv2.cvtColor(cv2.imread(str(seq_dir / f"frame{n}.png")), cv2.COLOR_BGR2GRAY)
                 for n in (10, 11))


def load_gt(seq_dir: Path) -> np.ndarray:
    """flow10.flo, or the compact flow10.npz of tests/data."""
    if (seq_dir / "flow10.flo").exists():
        return read_flo(str(seq_dir / "flow10.flo"))
    spec = importlib.util.spec_from_file_location("make_data",
                                                  REPO / "tests" / "data" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    return make_data.read_flow(str(seq_dir / "flow10.npz"))


def torch_tvl1(prev: np.ndarray, nxt: np.ndarray, p: TVL1Params, device: str,
               compiled: bool = False) -> np.ndarray:
    """The torch backend on one pair, as [H, W, 2]."""
    a = torch.from_numpy(prev).to(device, torch.float32)[None]
    b = torch.from_numpy(nxt).to(device, torch.float32)[None]
    return tvl1_flow(a, b, p, compiled=compiled)[0].permute(1, 2, 0).cpu().numpy()


def run_one(run: str, prev: np.ndarray, nxt: np.ndarray, device: str) -> np.ndarray:
    backend, name = run.split(":")
    if backend == "opencv":
        return opencv_flow(prev, nxt, preset(name))
    return torch_tvl1(prev, nxt, preset(name), device, compiled=backend == "fused")


def warm_up(runs: list[str], device: str) -> None:
    """Compiles (or loads) the graphs of the fused runs before anything is timed."""
    blank = np.zeros((40, 48), np.uint8)
    for run in runs:
        if run.startswith("fused:"):
            run_one(run, blank, blank, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--runs", default=",".join(RUNS),
                    help="comma-separated backend:preset (backend torch or opencv)")
    ap.add_argument("--sequences", help="default: those of the 8 under --data")
    args = ap.parse_args()
    runs = args.runs.split(",")
    seqs = (args.sequences.split(",") if args.sequences else
            [s for s in SEQUENCES if (args.data / s / "frame10.png").exists()])
    table: dict[str, list[float]] = {r: [] for r in runs}
    seconds: dict[str, float] = {r: 0.0 for r in runs}
    diffs: dict[str, float] = {}
    warm_up(runs, args.device)
    for seq in seqs:
        prev, nxt = load_gray(args.data / seq)
        gt = load_gt(args.data / seq)
        flows = {}
        for run in runs:
            t0 = time.perf_counter()
            flows[run] = run_one(run, prev, nxt, args.device)
            seconds[run] += time.perf_counter() - t0
            table[run].append(epe(flows[run], gt))
        for run in runs:
            eager = "torch:" + run.split(":")[1]
            if run.startswith("fused:") and eager in flows:
                diff = float(np.abs(flows[run] - flows[eager]).max())
                diffs[run] = max(diffs.get(run, 0.0), diff)
    print(f"Middlebury EPE (full size, device {args.device} for torch)\n")
    print("| run | " + " | ".join(seqs) + " | mean | seconds |")
    print("|---" * (len(seqs) + 3) + "|")
    for run in runs:
        vals = " | ".join(f"{v:.3f}" for v in table[run])
        print(f"| {run} | {vals} | {np.mean(table[run]):.3f} | {seconds[run]:.1f} |")
    for run, diff in diffs.items():
        print(f"\n{run}: max |fused - eager| over the sequences {diff:.3g} px")


if __name__ == "__main__":
    main()
