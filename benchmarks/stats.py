"""``actprep stats`` on a generated million-row index, against the bare read of the same
index with pyarrow (the least any tool must do), in one run; reported as a ratio.

    python benchmarks/stats.py [--rows 1000000] [--shards 1000] [--workdir DIR] [--repeats 3]

The output folder is synthetic: Parquet indices in the real schema (random but plausible
values: 700 classes, 3 % failures, flow and audio figures) and small placeholder shard tars
(stats reads only their sizes).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actprep.reports.stats import compute, load_index
from actprep.schemas.index import INDEX_SCHEMA, write_index
from actprep.schemas.labels import LabelMap

REASONS = ["probe: Invalid data found when processing input",
           "decode: truncated: decoded 12 frames (0.48 s) of the 10.00 s its header declares",
           "fetch: file not found: <video>"]


def make_output(folder: str, rows: int, shards: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = [f"class {i:03d}" for i in range(700)]
    os.makedirs(os.path.join(folder, "index"), exist_ok=True)
    per = rows // shards
    for s in range(shards):
        n = per + (1 if s < rows % shards else 0)
        failed = rng.random(n) < 0.03
        label = rng.integers(0, 700, n)
        fps = rng.choice([24.0, 25.0, 30.0, 30000 / 1001], n)
        duration = rng.uniform(2, 10, n)
        data = {
            "key": [f"v{s:06d}_{i:06d}" for i in range(n)], "line": np.arange(n) + s * per,
            "shard": [f"shard-{s:06d}"] * n, "dataset": ["kinetics"] * n,
            "split": ["train"] * n, "label": [classes[i] for i in label],
            "label_index": label.astype(np.int32),
            "status": np.where(failed, "failed", "ok"),
            "failure_stage": [r.split(":")[0] if f else None
                              for f, r in zip(failed, rng.choice(REASONS, n))],
            "failure_reason": [r.split(": ", 1)[1] if f else None
                               for f, r in zip(failed, rng.choice(REASONS, n))],
            "attempts": np.ones(n, np.int32), "source_path": [f"/v/{i}.mp4" for i in range(n)],
            "source_bytes": rng.integers(10**5, 10**7, n), "duration": duration, "fps": fps,
            "frames": (duration * fps).astype(np.int32), "width": np.full(n, 340, np.int32),
            "height": np.full(n, 256, np.int32),
            "source_width": rng.choice([640, 1280, 1920], n).astype(np.int32),
            "source_height": rng.choice([360, 720, 1080], n).astype(np.int32),
            "has_audio": rng.random(n) < 0.9, "audio_sample_rate": np.full(n, 16000, np.int32),
            "audio_rms_dbfs": rng.normal(-25, 6, n).astype(np.float32),
            "mfcc_frames": (duration * 100).astype(np.int32),
            "flow_pairs": (duration * fps).astype(np.int32) - 1,
            "flow_backend": ["torch"] * n,
            "flow_magnitude": rng.gamma(2.0, 1.0, n).astype(np.float32),
            "members": (duration * fps * 3).astype(np.int32),
            "sample_bytes": rng.integers(10**6, 10**7, n),
            "sample_sha256": ["0" * 64] * n,
        }
        rows_ = pa.table({f: data.get(f, [None] * n) for f in INDEX_SCHEMA.names},
                         schema=INDEX_SCHEMA).to_pylist()
        with open(os.path.join(folder, "index", f"shard-{s:06d}.parquet"), "wb") as f:
            write_index(rows_, f)
        with open(os.path.join(folder, f"shard-{s:06d}.tar"), "wb") as f:
            f.write(b"\0" * 1024)
    with open(os.path.join(folder, "labels.json"), "w") as f:
        f.write(LabelMap(tuple(classes), "benchmark").to_json())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                     "actprep-bench-stats"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    folder = os.path.join(args.workdir, f"{args.rows}x{args.shards}")
    if not os.path.exists(os.path.join(folder, "labels.json")):
        start = time.perf_counter()
        make_output(folder, args.rows, args.shards)
        print(f"generated {args.rows} rows in {args.shards} shards in "
              f"{time.perf_counter() - start:.0f} s: {folder}")
    labels = LabelMap.from_json(open(os.path.join(folder, "labels.json")).read())
    files = sorted(os.path.join(folder, "index", f) for f in os.listdir(
        os.path.join(folder, "index")))
    base, ours = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        table = pq.read_table(files)
        base.append(time.perf_counter() - start)
        assert table.num_rows == args.rows
        start = time.perf_counter()
        stats = compute(*load_index(folder), labels)
        ours.append(time.perf_counter() - start)
        assert stats["samples_ok"] + stats["samples_failed"] == args.rows
    res = {"rows": args.rows, "shards": args.shards, "cpus": os.cpu_count(),
           "read_s": min(base), "stats_s": min(ours), "ratio": min(ours) / min(base),
           "rows_per_s": args.rows / min(ours)}
    print(f"{args.rows} rows, {args.shards} index files, {os.cpu_count()} cpus: pyarrow read "
          f"{res['read_s']:.2f} s, actprep stats {res['stats_s']:.2f} s "
          f"({res['rows_per_s'] / 1e6:.2f} M rows/s), ratio {res['ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
