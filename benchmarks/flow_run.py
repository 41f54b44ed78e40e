"""End-to-end flow benchmark: a flow-only ``actprep run`` with OpenCV's TV-L1 against the
compiled torch TV-L1 on the CPU, compilation included.

A script, not a test. N clips (default 4 of 3 s at 25 fps: 296 frame pairs) of moving
texture are made once with ``actprep.extractors.synth.make_video`` at the job's size and
cached in the work folder. Then, as subprocesses with actprep's default runner settings,
each into a fresh output folder, in this order:

1. ``--flow-backend opencv`` (the baseline);
2. ``--flow-backend auto`` (compiled torch on the CPU) with an empty Inductor cache: the
   compilation a first run on a fresh machine or worker pays;
3. the same again with the cache the previous run filled: what a rerun, or every worker
   after the first on a machine, pays.

Each is ``actprep run --dataset generic --modalities flow --size WxH --flow-preset P``;
wall time includes the interpreter, imports, Beam and the launcher's model check. Reported:
seconds, pairs/s and the ratio to OpenCV's time, per run, and the mean absolute difference
between the two backends' first flow JPEGs (they are different solvers, so not zero).

    python benchmarks/flow_run.py [--workdir DIR] [--clips N] [--seconds S] [--fps F]
                                  [--size 340x256] [--preset opencv] [--json FILE]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from actprep.extractors.synth import make_video

MOTIONS = ((2.0, 1.0), (-2.0, 0.0), (0.0, 2.0), (1.0, -1.0), (3.0, 0.0), (-1.0, -2.0))


def make_set(root: str, clips: int, seconds: float, fps: float,
             size: tuple[int, int]) -> str:
    """The clips and a generic manifest (path,label) in ``root``, made once."""
    os.makedirs(root, exist_ok=True)
    manifest = os.path.join(root, "list.csv")
    rows = [["path", "label"]]
    for i in range(clips):
        name = f"clip{i:03d}_{size[0]}x{size[1]}_{seconds:g}s_{fps:g}.mp4"
        path = os.path.join(root, name)
        if not os.path.exists(path):
            make_video(path, duration=seconds, fps=fps, size=size,
                       motion=MOTIONS[i % len(MOTIONS)])
        rows.append([name, f"class{i % 3}"])
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return manifest


def run_job(manifest: str, output: str, backend: str, args, cache: str) -> dict:
    """One ``actprep run``; wall seconds, pairs from the index, and the log's tail."""
    import pyarrow.parquet as pq

    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "actprep.commands.cli", "run", "--dataset", "generic",
           "--manifest", manifest, "--output", output, "--modalities", "flow",
           "--size", f"{args.size[0]}x{args.size[1]}", "--flow-preset", args.preset,
           "--flow-backend", backend, "--no-progress"]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = pq.read_table(os.path.join(output, "index")).to_pylist()
    pairs = sum(r["flow_pairs"] or 0 for r in rows)
    used = sorted({r["flow_backend"] for r in rows})
    return {"seconds": wall, "pairs": pairs, "pairs_per_s": pairs / wall, "backend": used,
            "warnings": [x for x in proc.stderr.splitlines() if x.startswith("WARNING")]}


def first_flow_difference(out_a: str, out_b: str) -> float:
    """Mean |a - b| (8-bit levels) of the first flow_x JPEG of the first sample."""
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    def first(out: str) -> np.ndarray:
        tar = sorted(f for f in os.listdir(out) if f.endswith(".tar"))[0]
        sample = next(iter(wds.WebDataset(os.path.join(out, tar), shardshuffle=False)))
        name = sorted(k for k in sample if k.startswith("flow_x."))[0]
        return np.asarray(Image.open(io.BytesIO(sample[name])), dtype=np.float32)
    return float(np.abs(first(out_a) - first(out_b)).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "actprep-flowrun"))
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per clip")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", type=lambda t: tuple(int(x) for x in t.split("x")),
                   default=(340, 256))
    p.add_argument("--preset", default="opencv")
    p.add_argument("--runs", default="opencv,cold,warm",
                   help="which of the three runs (the ratios need opencv)")
    p.add_argument("--json")
    args = p.parse_args(argv)

    manifest = make_set(os.path.join(args.workdir, "videos"), args.clips, args.seconds,
                        args.fps, args.size)
    cache = os.path.join(args.workdir, "inductor")
    chosen = args.runs.split(",")
    if "cold" in chosen:
        shutil.rmtree(cache, ignore_errors=True)
    runs = {}
    for key, label, backend in (("opencv", "opencv", "opencv"),
                                ("cold", "torch, cold cache", "auto"),
                                ("warm", "torch, warm cache", "auto")):
        if key not in chosen:
            continue
        out = os.path.join(args.workdir, "out-" + label.replace(", ", "-").replace(" ", "-"))
        runs[label] = run_job(manifest, out, backend, args, cache)
        runs[label]["output"] = out
        print(f"# {label}: {runs[label]}", file=sys.stderr)
    base = runs["opencv"]["seconds"] if "opencv" in runs else float("nan")
    diff = (first_flow_difference(runs["opencv"]["output"], runs["torch, warm cache"]["output"])
            if {"opencv", "torch, warm cache"} <= set(runs) else float("nan"))
    info = {"machine": {"cores": len(os.sched_getaffinity(0)),
                        "python": platform.python_version(), "cpu": platform.processor()},
            "clips": args.clips, "seconds": args.seconds, "fps": args.fps,
            "size": list(args.size), "preset": args.preset, "runs": runs,
            "first_flow_x_mean_abs_diff": diff}
    print(f"flow-only actprep run, {args.clips} clips x {args.seconds:g} s at {args.fps:g} fps, "
          f"{args.size[0]}x{args.size[1]}, preset {args.preset}, "
          f"{info['machine']['cores']} cores\n")
    print("| run | backend | seconds | pairs | pairs/s | speed-up over OpenCV |")
    print("|---|---|---:|---:|---:|---:|")
    for label, r in runs.items():
        print(f"| {label} | {', '.join(r['backend'])} | {r['seconds']:.1f} | {r['pairs']} | "
              f"{r['pairs_per_s']:.2f} | {base / r['seconds']:.2f}x |")
    print(f"\nFirst flow_x JPEG, OpenCV against torch: mean |difference| {diff:.2f} levels "
          f"of 255.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
