"""Reader benchmark: ``ActprepDataset`` samples/s against plain ``webdataset`` decoding.

A script, not a test. Every figure is compared with a baseline measured in the same run on the
same machine, so the ratios are what matters.

1. Two actprep outputs are generated once and cached in the work folder, from moving-texture
   clips made by ``actprep.extractors.synth.make_video`` (h264, no audio, 25 fps):
   ``rgb/``: --clips (default 24) clips of --duration (4 s) at --size (340x256),
   ``--modalities rgb``; ``flow/``: --flow-clips (default 4) such clips with
   ``--modalities rgb,flow --flow-backend opencv`` (TV-L1 on the CPU runs at about 1 frame
   pair/s at 340x256 on 2 cores, hence fewer clips). Both are written by ``actprep run``
   (``actprep.commands.cli.main``, its default DirectRunner settings).
2. Baselines: ``webdataset.WebDataset(urls, shardshuffle=False).decode("rgb")`` iterated over
   every sample, decoding every JPEG member (RGB and flow) to float32 HxWx3 with PIL, which is
   what a user without actprep's reader would write; ``.decode("rgb8")`` (uint8, the type
   the reader returns) is measured too.
3. The reader, one process (no DataLoader workers), test-mode sampling: TSN rgb (3 frames),
   TSN flow (3 x 5 flow fields), clip 32 x 2 rgb; each against the baseline of its output.
   Each reader case runs twice: the indexed reader (ranged reads at the index's offsets,
   the default) and ``streaming=True`` (webdataset streaming the tars, the reader before
   the index was used), so their ratio is the cost or gain of random access; and TSN rgb
   once more in train mode (shuffled order against the streaming shuffle buffer).

Each measurement iterates the dataset until at least --seconds have passed (whole epochs);
baseline and reader alternate --repeats times; medians are reported, with ratios.

    python benchmarks/reader.py [--workdir DIR] [--clips N] [--flow-clips N] [--duration S]
                                [--size WxH] [--repeats R] [--seconds S] [--json FILE]
                                [--no-baselines]
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterable

MOTIONS = ((2.0, 1.0), (-2.0, 0.0), (0.0, 2.0), (1.0, -1.0), (3.0, 0.0), (-1.0, -2.0))
FPS = 25


def make_output(root: str, clips: int, duration: float, size: tuple[int, int],
                modalities: str) -> str:
    """An actprep output of ``clips`` generated videos, cached by its parameters; returns
    the shard pattern."""
    params = {"clips": clips, "duration": duration, "size": list(size), "fps": FPS,
              "modalities": modalities, "index": "tar ranges"}  # older outputs lack them
    done = os.path.join(root, "done.json")
    out = os.path.join(root, "out")
    if os.path.exists(done) and json.load(open(done)) == params:
        return _pattern(out)
    from actprep.commands.cli import main
    from actprep.extractors.synth import make_video

    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    rows = [["path", "label"]]
    for i in range(clips):
        name = f"videos/clip{i:04d}.mp4"
        make_video(os.path.join(root, name), duration=duration, fps=FPS, size=size,
                   audio_freq=None, motion=MOTIONS[i % len(MOTIONS)])
        rows.append([name, f"class{i % 4}"])
    with open(os.path.join(root, "list.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    args = ["run", "--dataset", "generic", "--manifest", os.path.join(root, "list.csv"),
            "--output", out, "--modalities", modalities, "--size", f"{size[0]}x{size[1]}",
            "--shard-size", "8", "--no-progress"]
    if "flow" in modalities:
        args += ["--flow-backend", "opencv"]
    if main(args) != 0:
        raise SystemExit(f"actprep run failed for {root}")
    with open(done, "w") as f:
        json.dump(params, f)
    return _pattern(out)


def _pattern(out: str) -> str:
    shards = sorted(glob.glob(os.path.join(out, "shard-*.tar")))
    if not shards:
        raise SystemExit(f"no shards in {out}")
    return "::".join(shards)


def timed(make: Callable[[], Iterable[Any]], seconds: float) -> dict:
    """Whole passes over ``make()`` until ``seconds`` have passed: samples, time, rate."""
    count, start = 0, time.perf_counter()
    while True:
        for _ in make():
            count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"samples": count, "seconds": elapsed, "rate": count / elapsed}


def baseline(urls: str, decoder: str) -> Callable[[], Iterable[Any]]:
    import webdataset as wds

    return lambda: wds.WebDataset(urls.split("::"), shardshuffle=False).decode(decoder)


def reader(urls: str, **kwargs: Any) -> Callable[[], Iterable[Any]]:
    from actprep.readers import ActprepDataset

    kwargs.setdefault("mode", "test")
    ds = ActprepDataset(urls.split("::"), **kwargs)
    if not ds.streaming:
        ds.catalog()  # the index is read once, as make_loader does before the workers start
    epoch = iter(range(1 << 30))

    def one_epoch() -> Iterable[Any]:
        ds.set_epoch(next(epoch))  # train mode: a new order (and offsets) each pass
        return ds
    return one_epoch


def measure(cases: dict[str, Callable[[], Iterable[Any]]], repeats: int,
            seconds: float) -> dict[str, list[dict]]:
    """Every case once per repeat, in turn (so a noisy moment hits all of them)."""
    results: dict[str, list[dict]] = {name: [] for name in cases}
    for r in range(repeats):
        for name, make in cases.items():
            results[name].append(timed(make, seconds))
            print(f"  repeat {r + 1}: {name}: {results[name][-1]['rate']:.2f} samples/s",
                  flush=True)
    return results


def report(results: dict[str, list[dict]], baselines: dict[str, tuple[str, str]],
           streamed: dict[str, str]) -> list[dict]:
    """Median rates and ratios; ``baselines`` maps a case to its decode("rgb") and
    decode("rgb8") baselines, ``streamed`` an indexed-reader case to its streaming twin
    (ratio indexed / streaming, and per repeat, as the cases alternate)."""
    median = {name: statistics.median(m["rate"] for m in runs) for name, runs in results.items()}
    rows = []
    print("\n| case | samples/s | range | vs decode(\"rgb\") | vs decode(\"rgb8\") "
          "| indexed / streaming (per repeat) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        rates = [m["rate"] for m in runs]
        ratios = [median[name] / median[b] for b in baselines.get(name, ()) if b in median]
        cells = [f"{r:.1f}x" for r in ratios] + [""] * (2 - len(ratios))
        twin = streamed.get(name)
        vs_streaming = median[name] / median[twin] if twin else None
        per_repeat = [a["rate"] / b["rate"] for a, b in zip(runs, results[twin])] if twin else []
        cells.append(f"**{vs_streaming:.3f}** ({', '.join(f'{r:.2f}' for r in per_repeat)})"
                     if twin else "")
        print(f"| {name} | {median[name]:.2f} | {min(rates):.2f}-{max(rates):.2f} | "
              f"{' | '.join(cells)} |")
        rows.append({"case": name, "median": median[name], "runs": runs,
                     "ratios": ratios, "vs_streaming": vs_streaming,
                     "vs_streaming_per_repeat": per_repeat})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                     "actprep-bench-reader"))
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--flow-clips", type=int, default=4)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--size", default="340x256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--json")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the webdataset decode-everything baselines (the slow cases)")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split("x"))
    start = time.perf_counter()
    rgb = make_output(os.path.join(a.workdir, "rgb"), a.clips, a.duration, size, "rgb")
    flow = make_output(os.path.join(a.workdir, "flow"), a.flow_clips, a.duration, size,
                       "rgb,flow")
    print(f"outputs ready in {time.perf_counter() - start:.0f} s under {a.workdir}", flush=True)
    import cv2
    import torch
    import webdataset

    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, torch {torch.__version__},"
          f" webdataset {webdataset.__version__}, opencv {cv2.__version__}")
    readers = {  # name: (output, reader arguments)
        "TSN rgb (3 x 1)": (rgb, dict(modality="rgb", sampling="tsn")),
        "clip rgb (32 x 2)": (rgb, dict(modality="rgb", sampling="clip")),
        "TSN rgb (3 x 1), train": (rgb, dict(modality="rgb", sampling="tsn", mode="train")),
        "TSN flow (3 x 5)": (flow, dict(modality="flow", sampling="tsn")),
        "TSN rgb+flow": (flow, dict(modality="rgb+flow", sampling="tsn")),
    }
    cases: dict[str, Callable[[], Iterable[Any]]] = {}
    if not a.no_baselines:
        cases['rgb output: decode("rgb")'] = baseline(rgb, "rgb")
        cases['rgb output: decode("rgb8")'] = baseline(rgb, "rgb8")
        cases['flow output: decode("rgb")'] = baseline(flow, "rgb")
        cases['flow output: decode("rgb8")'] = baseline(flow, "rgb8")
    streamed = {}
    for name, (urls, kwargs) in readers.items():
        cases[name] = reader(urls, **kwargs)
        cases[f"{name}, streaming"] = reader(urls, streaming=True, **kwargs)
        streamed[name] = f"{name}, streaming"
    results = measure(cases, a.repeats, a.seconds)
    on_rgb = ('rgb output: decode("rgb")', 'rgb output: decode("rgb8")')
    on_flow = ('flow output: decode("rgb")', 'flow output: decode("rgb8")')
    baselines = {name: on_rgb if urls == rgb else on_flow for name, (urls, _) in readers.items()}
    baselines.update({streamed[name]: baselines[name] for name in readers})
    rows = report(results, baselines, streamed)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
