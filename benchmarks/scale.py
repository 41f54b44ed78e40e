"""How actprep's bookkeeping scales with the manifest: wall time and peak RSS of planning,
the whole job, a rerun of the finished job, ``stats`` and ``verify``, for generated
manifests of growing size whose videos are absent (every row is pure bookkeeping: plan,
one "video not found" failure, index row, commit) plus a handful of tiny real clips, so
the media path runs too. Reports rows/s and the ratios of the largest size to a baseline
size measured in the same run (the bar: peak RSS within 1.5x, time linear).

    python benchmarks/scale.py                          # 10k, 65k, 650k Kinetics rows
    python benchmarks/scale.py --rows 20000,100000 --dataset mit
    python benchmarks/scale.py --plot docs/scale.png --json scale.json
    python benchmarks/scale.py --rows 10000,650000 --steps plan   # planning only

Each step runs as its own process (``actprep ...`` or ``python -c``), with its peak RSS
from ``os.wait4``; the work folder is deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

CLIPS = 4  # tiny real clips per manifest
STEPS = ("plan", "run", "rerun", "stats", "verify")


def measure(cmd: list[str], log: str) -> dict:
    """Runs ``cmd``; wall seconds, CPU seconds (user + system: steadier than wall time on
    a busy machine), peak RSS in MB and exit status."""
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"seconds": round(time.monotonic() - start, 2),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_mb": round(usage.ru_maxrss / 1024, 1),
            "exit": os.waitstatus_to_exitcode(status)}


def make_clips(root: str, count: int) -> list[tuple[str, str]]:
    """``count`` one-second clips under ``root``; their (youtube id, label)."""
    from actprep.extractors.synth import make_video
    from actprep.schemas.manifest import kinetics_key

    clips = []
    for i in range(count):
        yid = f"realclip{i:03d}"
        path = os.path.join(root, "real", kinetics_key(yid, 0, 10) + ".mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        make_video(path, duration=1.0, fps=10, size=(96, 64), audio_freq=440.0)
        clips.append((yid, f"class {i}"))
    return clips


def write_manifest(path: str, rows: int, dataset: str, clips: list[tuple[str, str]],
                   seed: int = 0) -> None:
    """A Kinetics CSV (400 classes) or a Moments in Time CSV (339 categories) of ``rows``
    rows, the first ``len(clips)`` naming real clips."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    with open(path, "w", encoding="utf-8") as f:
        if dataset == "kinetics":
            f.write("label,youtube_id,time_start,time_end,split\n")
        for i in range(rows):
            if i < len(clips):
                yid, label = clips[i]
                start = 0
            else:
                yid = "".join(rng.choice(alphabet) for _ in range(11))
                label, start = f"class {i % 400}", i % 300
            if dataset == "kinetics":
                f.write(f"{label},{yid},{start},{start + 10},train\n")
            else:
                category = label.replace(" ", "_") if i < len(clips) else f"category{i % 339}"
                path = f"real/{yid}_000000_000010.mp4" if i < len(clips) else \
                    f"{category}/{yid}.mp4"
                f.write(f"{path},{category},3,0\n")


def run_size(work: str, rows: int, dataset: str, clips: list, video_root: str,
             steps: tuple[str, ...] = STEPS) -> dict:
    manifest = os.path.join(work, f"{dataset}-{rows}.csv")
    write_manifest(manifest, rows, dataset, clips)
    out = os.path.join(work, f"out-{rows}")
    common = ["--dataset", dataset, "--manifest", manifest, "--video-root", video_root]
    plan_code = ("import sys; from actprep.pipelines.options import RunOptions; "
                 "from actprep.pipelines.planner import load_or_create_plan; "
                 "p = load_or_create_plan(RunOptions(dataset=sys.argv[1], manifest=sys.argv[2], "
                 "video_root=sys.argv[3], output=sys.argv[4])); print(p.entries)")
    commands = {
        "plan": [sys.executable, "-c", plan_code, dataset, manifest, video_root,
                 os.path.join(work, f"plan-{rows}")],
        "run": ["actprep", "run", *common, "--output", out, "--no-progress"],
        "rerun": ["actprep", "run", *common, "--output", out, "--no-progress"],
        "stats": ["actprep", "stats", out, "--json"],
        "verify": ["actprep", "verify", out, "--json"],
    }
    figures = {"rows": rows}
    for step in steps:
        figures[step] = measure(commands[step], os.path.join(work, f"{step}-{rows}.log"))
        print(f"{dataset} {rows:>8} rows  {step:<7} {figures[step]['seconds']:>8.2f} s  "
              f"(cpu {figures[step]['cpu_seconds']:>7.2f} s)  "
              f"{figures[step]['peak_mb']:>8.1f} MB  exit {figures[step]['exit']}", flush=True)
    shutil.rmtree(os.path.join(work, f"plan-{rows}"), ignore_errors=True)
    if steps != STEPS:
        return figures
    with open(os.path.join(work, f"rerun-{rows}.log"), encoding="utf-8") as f:
        figures["rerun_said_nothing_to_do"] = "nothing to do" in f.read()
    with open(os.path.join(work, f"stats-{rows}.log"), encoding="utf-8") as f:
        stats = json.loads(f.read().strip().splitlines()[-1])
    figures["index_rows"] = stats["samples_ok"] + stats["samples_failed"]
    figures["samples_ok"] = stats["samples_ok"]
    figures["run_ms_per_row"] = round(1000 * figures["run"]["seconds"] / rows, 3)
    shutil.rmtree(out, ignore_errors=True)
    return figures


def ratios(big: dict, base: dict, steps: tuple[str, ...] = STEPS) -> dict:
    return {step: {"peak": round(big[step]["peak_mb"] / base[step]["peak_mb"], 2),
                   "seconds": round(big[step]["seconds"] / base[step]["seconds"], 2)}
            for step in steps}


def plot(results: list[dict], path: str, dataset: str, steps: tuple[str, ...] = STEPS) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, wall) = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r["rows"] for r in results]
    for step in steps:
        mem.plot(rows, [r[step]["peak_mb"] for r in results], marker="o", label=step)
        wall.plot(rows, [r[step]["seconds"] for r in results], marker="o", label=step)
    for ax, what in ((mem, "peak RSS (MB)"), (wall, "wall time (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("manifest rows")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    wall.set_yscale("log")
    mem.set_ylim(bottom=0)
    mem.legend()
    fig.suptitle(f"actprep bookkeeping against manifest size ({dataset}, videos absent)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,65000,650000",
                        help="comma-separated manifest sizes (default 10000,65000,650000)")
    parser.add_argument("--baseline", type=int, help="size the ratios compare against "
                        "(default: the second smallest, or the smallest)")
    parser.add_argument("--dataset", choices=("kinetics", "mit"), default="kinetics")
    parser.add_argument("--work", help="work folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--plot", help="also plot peak RSS and wall time to this PNG")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated steps to run, in this order: {','.join(STEPS)} "
                        f"(default all; 'plan' alone measures planning only)")
    args = parser.parse_args()
    steps = tuple(s for s in STEPS if s in args.steps.split(","))
    if not steps or set(args.steps.split(",")) - set(STEPS):
        parser.error(f"--steps: choose among {','.join(STEPS)}")
    sizes = sorted(int(n) for n in args.rows.split(","))
    work = args.work or tempfile.mkdtemp(prefix="actprep-scale-")
    os.makedirs(work, exist_ok=True)
    try:
        video_root = os.path.join(work, "videos")
        clips = make_clips(video_root, CLIPS)
        results = [run_size(work, n, args.dataset, clips, video_root, steps) for n in sizes]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = next((r for r in results if r["rows"] == args.baseline),
                results[1] if len(results) > 2 else results[0])
    report = {"dataset": args.dataset, "cores": os.cpu_count(), "results": results,
              "baseline_rows": base["rows"], "largest_rows": results[-1]["rows"],
              "ratios_largest_to_baseline": ratios(results[-1], base, steps)}
    print(json.dumps(report["ratios_largest_to_baseline"], indent=1))
    for r in results if steps == STEPS else []:
        ok = r["index_rows"] == r["rows"] and r["samples_ok"] == CLIPS and \
            r["rerun_said_nothing_to_do"] and all(r[s]["exit"] == 0 for s in STEPS[:-1])
        print(f"{r['rows']} rows: {r['run_ms_per_row']} ms per row for the whole run, "
              f"{r['rows'] / r['run']['seconds']:.0f} rows/s; "
              f"{'every row accounted for' if ok else 'PROBLEM: see the figures'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(results, args.plot, args.dataset, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
