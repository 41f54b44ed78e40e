"""Flow benchmark: pairs/s of OpenCV's CPU DualTVL1 and the torch TV-L1 (CPU, and CUDA when
present) on the same real frames at 340x256, in one run, reported as ratios to OpenCV.

A script, not a test. Frames: the Middlebury frame10/frame11 pairs of ../shared/data
(real photographs), resized to 340x256 and converted to gray as the pipeline does. On CUDA it
also checks correctness against the CPU result of the same backend (endpoint error) and
sweeps the batch size.

    python benchmarks/flow.py [--data DIR] [--presets opencv,quality] [--pairs N]
                              [--batch-sizes 1,4,8] [--cuda-batch-sizes 1,8,32,64,128,256]
                              [--compiled] [--inner-unroll K]
                              [--cuda-compiled-batch-sizes 32,128,256] [--no-cuda-graphs]
                              [--seconds S] [--json FILE]
                              [--write-reference NPZ | --reference NPZ]

``--compiled`` adds rows for ``tvl1_flow(..., compiled=True)`` on the CPU: steady-state pairs/s,
the seconds of its first call (compilation, cold or from the Inductor cache; the cache folder
is printed), and the largest |compiled - eager| flow difference over all the pairs, one by one.
On CUDA the compiled path (Triton kernels) is timed at ``--cuda-compiled-batch-sizes``, plain
and replayed as CUDA graphs, with its first-call seconds, peak GPU memory and the largest
|CUDA compiled - CPU eager| difference of the first pair.

Where OpenCV has no ``cv2.optflow`` (a GPU machine with plain opencv-python), the OpenCV rows
are skipped; ``--reference`` then brings OpenCV's flows of the same pairs, written beforehand
on a machine with opencv-contrib by ``--write-reference``, for the agreement column.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time

import cv2
import numpy as np

from actprep.extractors.flow.params import preset

SIZE = (340, 256)
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "middlebury"))
if not os.path.isdir(DEFAULT_DATA):  # no shared set beside the checkout: the repository's
    DEFAULT_DATA = os.path.join(HERE, "..", "tests", "data", "middlebury")  # (3 sequences, gray)


def load_pairs(data: str, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gray uint8 340x256 pairs from the Middlebury sequences, cycled to ``count``."""
    seqs = sorted(glob.glob(os.path.join(data, "*", "frame10.png")))
    if not seqs:
        raise SystemExit(f"no Middlebury frames under {data} (pass --data)")
    pairs = []
    for f10 in seqs:
        f11 = f10.replace("frame10", "frame11")
        gray = [cv2.cvtColor(cv2.resize(cv2.imread(f), SIZE, interpolation=cv2.INTER_AREA),
                             cv2.COLOR_BGR2GRAY) for f in (f10, f11)]
        pairs.append((gray[0], gray[1]))
    return [pairs[i % len(pairs)] for i in range(count)]


def _timed(fn, budget: float) -> tuple[float, int]:
    """Calls fn() (which processes some pairs and returns their count) until ``budget``
    seconds have passed, after one warm-up call; returns (pairs/s, pairs timed)."""
    fn()
    done, start = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return done / elapsed, done


def bench_opencv(pairs, params, budget: float) -> tuple[float, list[np.ndarray]]:
    from actprep.extractors.flow.opencv_backend import opencv_flow

    flows = [opencv_flow(a, b, params) for a, b in pairs]

    def step() -> int:
        for a, b in pairs:
            opencv_flow(a, b, params)
        return len(pairs)
    return _timed(step, budget)[0], flows


def bench_torch(pairs, params, device: str, batch: int, budget: float):
    import torch

    from actprep.extractors.flow.tvl1_torch import tvl1_flow

    prev, nxt = (t.to(device) for t in _stacked(pairs, batch))

    def step() -> int:
        out = tvl1_flow(prev, nxt, params)
        if device == "cuda":
            torch.cuda.synchronize()
        step.last = out
        return batch
    rate = _timed(step, budget)[0]
    flows = step.last.permute(0, 2, 3, 1).cpu().numpy()
    mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return rate, flows, mem


def bench_compiled(pairs, params, batch: int, budget: float, unroll: int | None,
                   device: str = "cpu", cuda_graphs: bool = False, kernels: str = "inductor"):
    """(pairs/s, first-call seconds, flows [B, H, W, 2]) of the compiled torch backend."""
    import torch

    from actprep.extractors.flow.tvl1_torch import tvl1_flow

    prev, nxt = (t.to(device) for t in _stacked(pairs, batch))

    def call():
        out = tvl1_flow(prev, nxt, params, compiled=True, inner_unroll=unroll,
                        cuda_graphs=cuda_graphs, kernels=kernels)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    start = time.perf_counter()
    flows = call().permute(0, 2, 3, 1).cpu().numpy()
    first = time.perf_counter() - start

    def step() -> int:
        call()
        return batch
    return _timed(step, budget)[0], first, flows


def compiled_max_diff(pairs, params, unroll: int) -> float:
    """Largest |compiled - eager| flow component over the distinct pairs, each alone (px)."""
    from actprep.extractors.flow.tvl1_torch import tvl1_flow

    worst = 0.0
    for i in range(len({id(a) for a, _ in pairs})):
        prev, nxt = _stacked(pairs[i:i + 1], 1)
        eager = tvl1_flow(prev, nxt, params)
        fused = tvl1_flow(prev, nxt, params, compiled=True, inner_unroll=unroll)
        worst = max(worst, float((fused - eager).abs().max()))
    return worst


def _stacked(pairs, batch: int):
    """prev, nxt float32 CPU tensors [batch, H, W], cycling through ``pairs``."""
    import torch

    src = (pairs * -(-batch // len(pairs)))[:batch]
    return (torch.from_numpy(np.stack([a for a, _ in src]).astype(np.float32)),
            torch.from_numpy(np.stack([b for _, b in src]).astype(np.float32)))


def bench_cuda_compiled(pairs, params, res: dict, cpu_flows, cv_flows, base, args,
                        unroll: int, name: str) -> list[tuple]:
    """Rows of the compiled path on CUDA, Inductor's kernels and the hand-written Triton
    ones (``tvl1_triton``, what the engine runs), each plain and as CUDA graphs, for each
    batch size; a failure (a Triton or graph capture error) is recorded, not fatal."""
    import torch

    rows = []
    variants = [(k, g) for k in ("triton", "inductor")
                for g in ((False,) if args.no_cuda_graphs else (False, True))]
    for kernels, graphs in variants:
        label = f"torch compiled, {kernels}" + (" + CUDA graphs" if graphs else "")
        name_k = "_triton" if kernels == "triton" else ""
        for b in (int(x) for x in args.cuda_compiled_batch_sizes.split(",")):
            key = f"torch_cuda_compiled{name_k}{'_graphs' if graphs else ''}_b{b}"
            torch.cuda.reset_peak_memory_stats()
            try:
                rate, first, flows = bench_compiled(pairs, params, b, args.seconds, unroll,
                                                    "cuda", graphs, kernels)
            except Exception as exc:  # noqa: BLE001 - recorded in the results
                res[key + "_error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"# {name} {label} b{b}: {res[key + '_error']}", file=sys.stderr)
                break
            mem = torch.cuda.max_memory_allocated() / 2**20
            res[key] = rate
            res[key + "_first_call_s"] = first
            res[key + "_epe_vs_cpu"] = epe(flows[0], cpu_flows[0])
            res[key + "_max_abs_diff_vs_cpu_px"] = float(np.abs(flows[0] - cpu_flows[0]).max())
            if cv_flows is not None:
                res[key + "_epe_vs_opencv"] = epe(flows[0], cv_flows[0])
            res[key + "_gpu_mib"] = mem
            rows.append((name, f"{label} (first call {first:.1f} s)", "cuda", b, rate,
                         rate / base if base else None, res[key + "_epe_vs_cpu"], mem))
    return rows


def has_opencv_tvl1() -> bool:
    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


def write_reference(path: str, pairs, presets: list[str]) -> None:
    """OpenCV's flows of ``pairs`` for each preset it can run, as one .npz."""
    from actprep.extractors.flow.opencv_backend import opencv_flow

    arrays = {name: np.stack([opencv_flow(a, b, preset(name)) for a, b in pairs])
              for name in presets if preset(name).pyramid == "resize"}
    np.savez_compressed(path, **arrays)
    print(f"wrote OpenCV flows of {len(pairs)} pairs for {', '.join(arrays)} to {path}")


def epe(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(-1)).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--presets", default="opencv,quality")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--batch-sizes", default="1,4,8", help="torch on the CPU")
    p.add_argument("--cuda-batch-sizes", default="1,8,32,64,128,256")
    p.add_argument("--seconds", type=float, default=5.0, help="timing budget per measurement")
    p.add_argument("--compiled", action="store_true",
                   help="also time the torch.compile path on the CPU (compiles on first use)")
    p.add_argument("--cuda-compiled-batch-sizes", default="32,128,256",
                   help="CUDA batch sizes for the compiled path ('' skips it)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on CUDA, time the compiled path without CUDA graphs only")
    p.add_argument("--inner-unroll", type=int, default=None,
                   help="inner iterations per compiled call (default: tvl1_torch's)")
    p.add_argument("--json")
    p.add_argument("--write-reference", metavar="NPZ",
                   help="only write OpenCV's flows of the pairs (for --reference) and exit")
    p.add_argument("--reference", metavar="NPZ",
                   help="OpenCV flows of the same pairs, for the agreement column when this "
                   "machine's OpenCV has no TV-L1")
    args = p.parse_args(argv)

    import torch

    from actprep.extractors.flow.tvl1_torch import DEFAULT_INNER_UNROLL, inductor_cache_dir

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    cv2.setNumThreads(cores)
    pairs = load_pairs(args.data, args.pairs)
    if args.write_reference:
        write_reference(args.write_reference, pairs, args.presets.split(","))
        return 0
    reference = dict(np.load(args.reference)) if args.reference else {}
    cuda = torch.cuda.is_available()
    info = {"cores": cores, "python": platform.python_version(), "torch": torch.__version__,
            "opencv": cv2.__version__, "cuda": torch.cuda.get_device_name(0) if cuda else None,
            "size": SIZE, "pairs": len(pairs), "opencv_tvl1": has_opencv_tvl1()}
    if args.compiled:
        info["inductor_cache"] = inductor_cache_dir()
    print(f"# flow benchmark at {SIZE[0]}x{SIZE[1]}: {info}", file=sys.stderr)
    rows, results = [], {"machine": info, "presets": {}}
    for name in args.presets.split(","):
        params = preset(name)
        res: dict = {}
        cv_flows = reference.get(name)
        if params.pyramid == "resize" and has_opencv_tvl1():
            res["opencv_cpu"], cv_flows = bench_opencv(pairs, params, args.seconds)
            rows.append((name, "opencv", "cpu", 1, res["opencv_cpu"], 1.0, None, None))
        base = res.get("opencv_cpu")
        cpu_flows = None
        for b in (int(x) for x in args.batch_sizes.split(",")):
            rate, flows, _ = bench_torch(pairs, params, "cpu", b, args.seconds)
            cpu_flows = flows if cpu_flows is None else cpu_flows
            res[f"torch_cpu_b{b}"] = rate
            if base is None:  # no OpenCV TV-L1 here: the first torch CPU rate is the baseline
                base = rate
                res["baseline"] = f"torch_cpu_b{b}"
            agree = epe(flows[0], cv_flows[0]) if cv_flows is not None else None
            rows.append((name, "torch", "cpu", b, rate, rate / base if base else None, agree, None))
        if args.compiled:
            unroll = args.inner_unroll  # None: the CPU's default, the loop graph
            for b in (int(x) for x in args.batch_sizes.split(",")):
                rate, first, _ = bench_compiled(pairs, params, b, args.seconds, unroll)
                res[f"torch_cpu_compiled_b{b}"] = rate
                res[f"torch_cpu_compiled_b{b}_first_call_s"] = first
                rows.append((name, f"torch compiled (first call {first:.1f} s)", "cpu", b, rate,
                             rate / base if base else None, None, None))
            res["compiled_max_abs_diff_px"] = compiled_max_diff(pairs, params, unroll)
            res["inner_unroll"] = unroll or "loop"
            print(f"# {name}: max |compiled - eager| {res['compiled_max_abs_diff_px']:.3g} px "
                  f"over the pairs (unroll {unroll or 'loop'})", file=sys.stderr)
        if cuda:
            for b in (int(x) for x in args.cuda_batch_sizes.split(",")):
                torch.cuda.reset_peak_memory_stats()
                rate, flows, mem = bench_torch(pairs, params, "cuda", b, args.seconds)
                res[f"torch_cuda_b{b}"] = rate
                res[f"torch_cuda_b{b}_epe_vs_cpu"] = epe(flows[0], cpu_flows[0])
                if cv_flows is not None:
                    res[f"torch_cuda_b{b}_epe_vs_opencv"] = epe(flows[0], cv_flows[0])
                rows.append((name, "torch", "cuda", b, rate, rate / base if base else None,
                             res[f"torch_cuda_b{b}_epe_vs_cpu"], mem))
                if cv_flows is not None:
                    mag = float(np.sqrt((cv_flows[0] ** 2).sum(-1)).mean())
                    res[f"torch_cuda_b{b}_epe_vs_opencv_rel"] = (
                        res[f"torch_cuda_b{b}_epe_vs_opencv"] / mag)
        if cuda and args.cuda_compiled_batch_sizes:
            unroll = args.inner_unroll or DEFAULT_INNER_UNROLL
            rows += bench_cuda_compiled(pairs, params, res, cpu_flows, cv_flows, base, args,
                                        unroll, name)
        results["presets"][name] = res
        _save(args.json, results)  # after each preset: a run cut short keeps what it measured
        print(f"# {name}: {json.dumps(res)}", file=sys.stderr)
    print("| preset | backend | device | batch | pairs/s | vs baseline | EPE vs reference | GPU MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, backend, dev, b, rate, ratio, agree, mem in rows:
        print(f"| {name} | {backend} | {dev} | {b} | {rate:.2f} | "
              f"{'' if ratio is None else f'{ratio:.2f}x'} | "
              f"{'' if agree is None else f'{agree:.3f}'} | {'' if mem is None else f'{mem:.0f}'} |")
    print("\nBaseline: OpenCV's CPU DualTVL1 with the same parameters on this machine's cores, "
          "or where this OpenCV has no TV-L1, the first torch CPU row. EPE vs reference: torch "
          "on the CPU against OpenCV (first pair); torch on CUDA against torch on the CPU "
          "(first pair; against OpenCV in the JSON when known).")
    return 0


def _save(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
