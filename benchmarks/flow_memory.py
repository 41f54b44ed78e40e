"""Memory of the torch TV-L1 backend per batch, to size --flow-batch-size and
--flow-device-batches: on CUDA the peak allocated by torch, on the CPU the growth of the
process's peak resident size (each batch size in a fresh process, so peaks do not mask
each other).

    python benchmarks/flow_memory.py --device cpu --batch-sizes 4,16
    python benchmarks/flow_memory.py --device cuda --batch-sizes 8,32,128 --json mem.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np, torch
from actprep.extractors.flow.engine import FlowEngine
from actprep.extractors.flow.params import preset
device, name, batch, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
frames = [(rng.random((height, width, 3)) * 255).astype(np.uint8) for _ in range(batch + 1)]
engine = FlowEngine("torch", device, preset(name), batch)
list(engine.flows(frames[:2]))  # warm up: kernels, allocator, imports
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before = rss()
list(engine.flows(frames))
mib = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss() - before)
print(json.dumps({"device": device, "preset": name, "batch": batch, "mib": round(mib, 1),
                  "mib_per_pair": round(mib / batch, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--presets", default="opencv,quality")
    parser.add_argument("--batch-sizes", default="4,16")
    parser.add_argument("--size", default="340x256", help="WxH of the frames")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    print(f"{'preset':8} {'batch':>5} {'MiB':>8} {'MiB/pair':>9}  ({args.device}, {args.size})")
    for name in args.presets.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            out = subprocess.run([sys.executable, "-c", CHILD, args.device, name, str(batch),
                                  str(width), str(height)],
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{name:8} {batch:5d} {row['mib']:8.1f} {row['mib_per_pair']:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
