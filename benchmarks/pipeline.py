"""Pipeline benchmark: the whole ``actprep run`` job against ffmpeg alone, plus worker memory.

A script, not a test. Every figure is compared with a baseline measured in the same run on the
same machine, so the ratios are what matters, not the absolute frames/s.

1. A Kinetics-like set is generated once with ``actprep.extractors.synth.make_video`` and cached
   in the work folder: N clips (default 48, a small shard's worth) of S seconds (default 10), 30 fps, 640x360, h264 +
   AAC tone, named ``{youtube_id}_{start:06d}_{end:06d}.mp4``, with a Kinetics CSV
   (``label,youtube_id,time_start,time_end,split``).
2. Baseline: ffmpeg alone decodes every clip and scales it to the size the job uses
   (``output_size(w, h, short_side=256)``, bicubic, like the job) as rawvideo rgb24 into a pipe
   that is read and dropped. Two single-threaded ffmpeg processes run at a time over the file
   list (a thread pool of ``nproc`` workers, each running ``ffmpeg -threads 1
   -filter_threads 1``): on many files this is ffmpeg's best use of the cores (one process per
   core, no frame-thread overhead). Frames/s = frames read / wall time of the whole list.
3. The job: ``actprep run --dataset kinetics --modalities rgb,mfcc --no-progress`` as a
   subprocess with actprep's own defaults (DirectRunner with one in-memory worker, videos on
   ``--workers=<cores>`` threads; ``--beam-args`` adds options, e.g. ``--beam-args=--workers=1``),
   into a fresh output folder. Wall time includes
   the interpreter, the imports and Beam's startup. Frames/s = frames in the Parquet index /
   wall time. A 1-clip job of the same kind estimates the fixed overhead; the marginal rate
   (frames_N - frames_1) / (time_N - time_1) is the job's throughput once started.
   Baseline, job and 1-clip job alternate; each is repeated --repeats times; medians are
   reported.
4. Memory: in a fresh Python process, one ``process_entry`` call on an 8 s and an 80 s video
   (640x360, 30 fps, with audio); peak RSS of that Python process (``RUSAGE_SELF``) and of its
   largest ffmpeg/ffprobe child (``RUSAGE_CHILDREN``; Linux reports the largest single child,
   not a sum).

    python benchmarks/pipeline.py [--workdir DIR] [--clips N] [--duration S] [--size WxH]
                                  [--fps F] [--repeats R] [--json FILE]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

from actprep.extractors.decode import output_size
from actprep.extractors.ffmpeg_bin import chosen, ffmpeg_exe
from actprep.extractors.synth import make_video

SHORT_SIDE = 256
JOB_TARGET = 0.5  # job frames/s over ffmpeg frames/s: at least this
MEMORY_TARGET = 1.2  # worker peak RSS, long video over short video: at most this
LABELS = ("abseiling", "applauding", "passing American football (in game)", "tasting beer")
TONES = (220.0, 330.0, 440.0, 523.25, 660.0, 880.0)
MOTIONS = ((2.0, 1.0), (-2.0, 0.0), (0.0, 2.0), (1.0, -1.0), (3.0, 0.0), (-1.0, -2.0))


# ---------------------------------------------------------------------------------- media


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _make_cached(path: str, **kwargs) -> str:
    """make_video into a temporary name, then rename: a killed run never leaves a partial
    file that a later run would take as cached."""
    if not os.path.exists(path):
        root, ext = os.path.splitext(path)
        tmp = f"{root}.partial{ext}"
        make_video(tmp, **kwargs)
        os.replace(tmp, path)
    return path


def make_set(root: str, clips: int, duration: float, fps: float,
             size: tuple[int, int]) -> tuple[str, str, list[str]]:
    """Kinetics-like set under ``root``: (csv path, video folder, video paths)."""
    videos = os.path.join(root, "videos")
    os.makedirs(videos, exist_ok=True)
    manifest = os.path.join(root, "kinetics.csv")
    jobs, rows = [], []
    seconds = max(1, round(duration))
    for i in range(clips):
        youtube_id = f"bench{i:06d}"  # 11 characters, like a YouTube id
        start = 10 * i
        end = start + seconds
        label = LABELS[i % len(LABELS)]
        rows.append([label, youtube_id, start, end, "train"])
        path = os.path.join(videos, f"{youtube_id}_{start:06d}_{end:06d}.mp4")
        jobs.append((path, dict(duration=duration, fps=fps, size=size,
                                audio_freq=TONES[i % len(TONES)],
                                motion=MOTIONS[i % len(MOTIONS)])))
    with ThreadPoolExecutor(_cores()) as pool:
        paths = list(pool.map(lambda job: _make_cached(job[0], **job[1]), jobs))
    _write_csv(manifest, rows)
    return manifest, videos, paths


def _write_csv(path: str, rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        out.writerows(rows)


# ------------------------------------------------------------------------------- baseline


def _ffmpeg_decode(path: str, width: int, height: int) -> int:
    """ffmpeg alone: decode + bicubic scale to rgb24 into a pipe, read and dropped.
    Returns the frame count."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error",
           "-threads", "1", "-filter_threads", "1", "-i", path, "-map", "0:V:0",
           "-vf", f"scale={width}:{height}:flags=bicubic,setsar=1", "-an",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "cfr", "-threads", "1", "pipe:"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    frame = width * height * 3
    buf = bytearray(frame)
    total = 0
    while True:
        got = proc.stdout.readinto(buf)
        if not got:
            break
        total += got
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {err.decode(errors='replace').strip()}")
    return total // frame


def run_baseline(paths: list[str], width: int, height: int, workers: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        frames = sum(pool.map(lambda p: _ffmpeg_decode(p, width, height), paths))
    wall = time.perf_counter() - start
    return {"frames": frames, "wall_s": wall, "fps": frames / wall}


# ------------------------------------------------------------------------------------ job


def _actprep_cmd() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "actprep")
    if os.path.exists(script):
        return [script]
    found = shutil.which("actprep")
    return [found] if found else [sys.executable, "-m", "actprep.commands.cli"]


def run_job(manifest: str, videos: str, output: str, log: str, expect: int,
            beam_args: list[str] = ()) -> dict:
    """One whole ``actprep run`` into a fresh ``output``; wall time of the command."""
    from actprep.commands.progress import summarize

    shutil.rmtree(output, ignore_errors=True)
    cmd = _actprep_cmd() + ["run", "--dataset", "kinetics", "--manifest", manifest,
                            "--video-root", videos, "--output", output,
                            "--modalities", "rgb,mfcc", "--no-progress", *beam_args]
    with open(log, "wb") as err:
        start = time.perf_counter()
        code = subprocess.run(cmd, stdout=err, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - start
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    # A non-zero status after the summary line (seen: SIGABRT "terminate called without an
    # active exception" as the process exits) is recorded, not fatal, when the output is
    # complete; the index check below decides.
    if code != 0 and "samples ok" not in text:
        raise RuntimeError(f"actprep run exited with {code} (log {log}):\n{text[-3000:]}")
    if code != 0:
        print(f"warning: actprep run exited with status {code} after finishing: "
              f"{text.strip().splitlines()[-1]}", file=sys.stderr)
    totals = summarize(output)
    if totals["samples_ok"] != expect or totals["samples_failed"]:
        raise RuntimeError(f"job made {totals['samples_ok']} samples ok, "
                           f"{totals['samples_failed']} failed; expected {expect} ok: {totals}")
    size = sum(os.path.getsize(os.path.join(output, n)) for n in os.listdir(output)
               if n.endswith(".tar"))
    shutil.rmtree(output, ignore_errors=True)
    return {"frames": totals["frames"], "wall_s": wall, "fps": totals["frames"] / wall,
            "shard_bytes": size, "exit_code": code}


# --------------------------------------------------------------------------------- memory

_MEMORY_PROBE = textwrap.dedent("""
    import glob, json, os, resource, sys, tempfile, threading
    from actprep.pipelines.options import RunOptions
    from actprep.pipelines.process import process_entry
    from actprep.schemas.plan import PlanEntry

    def children():
        pids = set()
        for name in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
            try:
                with open(name) as f:
                    pids.update(int(p) for p in f.read().split())
            except OSError:
                pass
        return pids

    hwm = {}  # child pid -> (comm, VmHWM KiB): the child's own peak after exec
    stop = threading.Event()
    def poll():
        while not stop.wait(0.01):
            for pid in children():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        fields = dict(l.split(":", 1) for l in f if ":" in l)
                    kib = int(fields["VmHWM"].split()[0])
                    # the latest reading, not the largest: VmHWM only grows within one
                    # address space, and a read racing the exec may see the parent's
                    hwm[pid] = (fields["Name"].strip(), kib)
                except (OSError, KeyError, ValueError):
                    pass

    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    entry = PlanEntry(key="memprobe", line=1, shard=0, dataset="kinetics", path=sys.argv[1],
                      label="x", label_index=0, split="train", error=None)
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    with tempfile.TemporaryDirectory() as out:
        result = process_entry(entry, RunOptions(dataset="kinetics", manifest="unused",
                                                 output=out))
    stop.set()
    watcher.join()
    print(json.dumps({
        "status": result["status"], "reason": result.get("failure_reason"),
        "frames": result.get("frames"), "mfcc_frames": result.get("mfcc_frames"),
        "sample_bytes": result.get("sample_bytes"),
        "self_after_import_kib": after_import,
        "self_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "ffmpeg_hwm_kib": max([k for n, k in hwm.values() if "ffmpeg" in n] or [0]),
        "children_seen": sorted(set(f"{n}:{k}" for n, k in hwm.values()))}))
""")


def measure_memory(path: str) -> dict:
    """Peak RSS of a fresh Python process running one process_entry on ``path``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, path],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed on {path}:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["status"] != "ok":
        raise RuntimeError(f"memory probe: {path} failed: {out['reason']}")
    out["wall_s"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------------- report


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import apache_beam

    return {"cores": _cores(), "cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "ffmpeg": chosen().describe(), "apache_beam": apache_beam.__version__,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _spread(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{min(values):.1f}-{max(values):.1f}" if len(values) > 1 else ""


def report(res: dict) -> str:
    b, j, one = res["baseline"], res["job"], res["job_1clip"]
    cfg = res["config"]
    lines = [
        f"set: {cfg['clips']} clips x {cfg['duration']:g} s, {cfg['fps']:g} fps, "
        f"{cfg['size'][0]}x{cfg['size'][1]} h264+aac -> {cfg['out_size'][0]}x"
        f"{cfg['out_size'][1]}; {res['frames']} frames; repeats {cfg['repeats']} (median, range)",
        "",
        f"{'measurement':<44} {'wall s':>8} {'frames/s':>10} {'range f/s':>14}",
        f"{'-' * 44} {'-' * 8} {'-' * 10} {'-' * 14}",
        f"{'ffmpeg alone (' + str(cfg['baseline_workers']) + ' x -threads 1)':<44} "
        f"{_median(b, 'wall_s'):8.2f} {_median(b, 'fps'):10.1f} {_spread(b, 'fps'):>14}",
        f"{'actprep run, whole job':<44} {_median(j, 'wall_s'):8.2f} "
        f"{_median(j, 'fps'):10.1f} {_spread(j, 'fps'):>14}",
        f"{'actprep run, 1 clip (fixed overhead)':<44} {_median(one, 'wall_s'):8.2f} "
        f"{_median(one, 'fps'):10.1f} {_spread(one, 'fps'):>14}",
        f"{'actprep run, marginal (N - 1 clip)':<44} {res['marginal_wall_s']:8.2f} "
        f"{res['marginal_fps']:10.1f} {'':>14}",
        "",
        f"ratio whole job / ffmpeg, paired repeats (median): {res['ratio_paired']:.2f}\n"
        f"ratio whole job / ffmpeg:     {res['ratio']:.2f}  (target >= {JOB_TARGET}: "
        f"{'met' if res['ratio_met'] else 'NOT met'})",
        f"ratio marginal job / ffmpeg:  {res['ratio_marginal']:.2f}  (startup excluded)",
    ]
    bad = [r["exit_code"] for r in j + one if r["exit_code"]]
    if bad:
        lines.append(f"note: {len(bad)} of {len(j) + len(one)} job runs exited with a non-zero "
                     f"status {sorted(set(bad))} after completing their output (counted)")
    mem = res.get("memory")
    if mem:
        lines += ["", f"{'memory, one process_entry':<26} {'frames':>6} {'python peak':>12} "
                  f"{'after import':>13} {'ffmpeg own peak':>16} {'RUSAGE_CHILDREN':>16}",
                  f"{'(MiB)':<26} {'-' * 6} {'-' * 12} {'-' * 13} {'-' * 16} {'-' * 16}"]
        for m in mem["runs"]:
            name = f"{m['duration']:g} s video"
            lines.append(f"{name:<26} {m['frames']:6d} "
                         f"{m['self_peak_kib'] / 1024:12.1f} "
                         f"{m['self_after_import_kib'] / 1024:13.1f} "
                         f"{m['ffmpeg_hwm_kib'] / 1024:16.1f} "
                         f"{m['children_peak_kib'] / 1024:16.1f}")
        lines += ["", f"ratio python peak long / short: {mem['ratio']:.2f}  (target <= "
                  f"{MEMORY_TARGET}: {'met' if mem['ratio_met'] else 'NOT met'}); "
                  f"ffmpeg own peak: {mem['ffmpeg_ratio']:.2f}",
                  "(ffmpeg own peak: VmHWM of the ffmpeg children polled every 10 ms; "
                  "RUSAGE_CHILDREN also counts the\n forked Python image before exec, "
                  "so it tracks the Python process, not ffmpeg)"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                          "actprep-bench-pipeline"),
                        help="generated media are cached here between runs")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    parser.add_argument("--size", type=_size, default=(640, 360), help="WxH of the clips")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-durations", default="8,80",
                        help="video lengths (s) for the memory probe; empty to skip")
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--beam-args", default="",
                        help="extra Beam options for the job, space-separated")
    args = parser.parse_args(argv)
    beam_args = args.beam_args.split()
    if args.clips < 2:
        parser.error("--clips must be at least 2 (the 1-clip job is the overhead estimate)")

    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu_model']}, Python {info['python']}, "
          f"{info['ffmpeg']}, Beam {info['apache_beam']}, load {info['loadavg_at_start']}",
          file=sys.stderr)
    w, h = args.size
    out_w, out_h = output_size(w, h, short_side=SHORT_SIDE)
    tag = f"k{args.clips}x{args.duration:g}s-{w}x{h}-{args.fps:g}fps"
    root = os.path.join(args.workdir, tag)
    t0 = time.perf_counter()
    manifest, videos, paths = make_set(root, args.clips, args.duration, args.fps, (w, h))
    one_dir = os.path.join(root, "one")
    os.makedirs(one_dir, exist_ok=True)
    one_manifest = os.path.join(one_dir, "kinetics.csv")
    with open(manifest, encoding="utf-8") as f:
        header, first = list(csv.reader(f))[:2]
    _write_csv(one_manifest, [first])
    print(f"set ready in {root} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    workers = info["cores"]
    baseline, job, job1 = [], [], []
    output = os.path.join(root, "out")
    for r in range(args.repeats):
        baseline.append(run_baseline(paths, out_w, out_h, workers))
        job.append(run_job(manifest, videos, output, os.path.join(root, "job.log"), args.clips,
                           beam_args))
        job1.append(run_job(one_manifest, videos, output, os.path.join(root, "job1.log"), 1,
                            beam_args))
        print(f"repeat {r + 1}/{args.repeats}: ffmpeg {baseline[-1]['fps']:.0f} f/s "
              f"({baseline[-1]['wall_s']:.2f} s), job {job[-1]['fps']:.0f} f/s "
              f"({job[-1]['wall_s']:.2f} s), 1-clip job {job1[-1]['wall_s']:.2f} s",
              file=sys.stderr)
    frames = job[0]["frames"]
    if baseline[0]["frames"] != frames:
        print(f"warning: ffmpeg read {baseline[0]['frames']} frames, the job indexed {frames}",
              file=sys.stderr)
    base_fps = _median(baseline, "fps")
    marginal_wall = _median(job, "wall_s") - _median(job1, "wall_s")
    marginal_fps = (frames - job1[0]["frames"]) / marginal_wall if marginal_wall > 0 else float("nan")
    res = {
        "machine": info,
        "config": {"clips": args.clips, "duration": args.duration, "fps": args.fps,
                   "size": [w, h], "out_size": [out_w, out_h], "repeats": args.repeats,
                   "baseline_workers": workers, "workdir": root, "beam_args": beam_args},
        "frames": frames, "baseline": baseline, "job": job, "job_1clip": job1,
        "marginal_wall_s": marginal_wall, "marginal_fps": marginal_fps,
        "ratio": _median(job, "fps") / base_fps, "ratio_marginal": marginal_fps / base_fps,
        # each job against the baseline measured just before it, under the same load
        "ratio_paired": statistics.median(j["fps"] / b["fps"] for j, b in zip(job, baseline)),
    }
    res["ratio_met"] = res["ratio"] >= JOB_TARGET

    durations = [float(d) for d in args.memory_durations.split(",") if d.strip()]
    if durations:
        runs = []
        for d in durations:
            path = _make_cached(os.path.join(args.workdir, f"mem-{d:g}s-{w}x{h}-{args.fps:g}fps.mp4"),
                                duration=d, fps=args.fps, size=(w, h), audio_freq=440.0)
            runs.append({"duration": d, **measure_memory(path)})
            print(f"memory {d:g} s: python {runs[-1]['self_peak_kib'] / 1024:.1f} MiB, "
                  f"ffmpeg own {runs[-1]['ffmpeg_hwm_kib'] / 1024:.1f} MiB, RUSAGE_CHILDREN "
                  f"{runs[-1]['children_peak_kib'] / 1024:.1f} MiB", file=sys.stderr)
        res["memory"] = {"runs": runs}
        if len(runs) >= 2:
            res["memory"]["ratio"] = runs[-1]["self_peak_kib"] / runs[0]["self_peak_kib"]
            res["memory"]["children_ratio"] = (runs[-1]["children_peak_kib"]
                                               / runs[0]["children_peak_kib"])
            res["memory"]["ffmpeg_ratio"] = (runs[-1]["ffmpeg_hwm_kib"]
                                             / max(1, runs[0]["ffmpeg_hwm_kib"]))
            res["memory"]["ratio_met"] = res["memory"]["ratio"] <= MEMORY_TARGET
        else:
            del res["memory"]
    print(report(res))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
