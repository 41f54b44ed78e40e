"""Soak check: the same ``actprep run`` (defaults, a generated Kinetics manifest whose videos
are absent, plus a few tiny real clips) many times in a row on fresh outputs; every run
must exit 0 with every planned key in the index exactly once and every shard committed
with exactly its planned rows. (Beam's multi_threading DirectRunner, actprep's old
default, lost rows in 3 of 13 such runs at 30k rows and crashed or ran out of memory in 3.)

    python benchmarks/soak.py                  # 10 runs of 30k rows
    python benchmarks/soak.py --runs 20 --rows 50000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import CLIPS, make_clips, measure, write_manifest  # noqa: E402


def check(out: str, rows: int) -> list[str]:
    """What is wrong with a finished output: keys missing, repeated or unplanned, shards
    whose index disagrees with the plan."""
    from actprep.pipelines.planfile import iter_entries, read_spans

    planned = [e.key for e in iter_entries(out)]
    indexed, per_shard, ok = [], {}, 0
    folder = os.path.join(out, "index")
    for name in sorted(os.listdir(folder)):
        table = pq.read_table(os.path.join(folder, name), columns=["key", "status"])
        per_shard[int(name[len("shard-"):-len(".parquet")])] = table.num_rows
        indexed += table["key"].to_pylist()
        ok += table["status"].to_pylist().count("ok")
    problems = [] if ok == CLIPS else [f"{ok} samples ok, {CLIPS} real clips"]
    if len(planned) != rows:
        problems.append(f"plan holds {len(planned)} rows, the manifest {rows}")
    if sorted(indexed) != sorted(planned):
        missing = set(planned) - set(indexed)
        problems.append(f"index holds {len(indexed)} rows ({len(set(indexed))} keys), "
                        f"plan {len(planned)}; {len(missing)} planned keys missing")
    for span in read_spans(out):
        if per_shard.get(span.shard) != span.count or \
                not os.path.exists(os.path.join(out, f"shard-{span.shard:06d}.tar")):
            problems.append(f"shard {span.shard}: index rows {per_shard.get(span.shard)}, "
                            f"planned {span.count}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="actprep-soak-")
    results = []
    try:
        videos = os.path.join(work, "videos")
        clips = make_clips(videos, CLIPS)
        manifest = os.path.join(work, "manifest.csv")
        write_manifest(manifest, args.rows, "kinetics", clips)
        for run in range(1, args.runs + 1):
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            figures = measure(["actprep", "run", "--dataset", "kinetics", "--manifest", manifest,
                               "--video-root", videos, "--output", out, "--no-progress"],
                              os.path.join(work, f"run{run}.log"))
            problems = check(out, args.rows) if figures["exit"] == 0 else ["exit status"]
            figures["problems"] = problems
            results.append(figures)
            print(f"run {run}: exit {figures['exit']}, {figures['seconds']} s, "
                  f"{figures['peak_mb']} MB: {'; '.join(problems) or 'correct'}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    correct = sum(not r["problems"] for r in results)
    print(f"{correct} of {len(results)} runs correct ({args.rows} rows each)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": args.rows, "runs": results, "correct": correct}, f, indent=1)
    return 0 if correct == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
