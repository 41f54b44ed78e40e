"""VGGish benchmark: examples/s of actprep's VGGish (numpy reference preprocessing + torch
network) against the TensorFlow implementation of the same model (a SavedModel with the
TF-Hub interface, preprocessing in TF ops: the tfhub backend), in one run, on the same audio
and the same weights; reported as ratios.

A script, not a test. Audio: a generated minute of chirps and noise at 16 kHz (62 examples).
Weights: the deterministic test weights of ../shared/data/vggish/make_weights.py (the speed
does not depend on their values). On CUDA it also times the torch network there and checks
that it agrees with the CPU result.

    python benchmarks/vggish.py [--seconds-audio 60] [--batch-sizes 1,16,64] [--seconds 5]
                                [--no-tf] [--json FILE]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from actprep.extractors.audio import vggish_input as vi
from actprep.extractors.audio.vggish_torch import VggishEmbedder, VggishStream

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "vggish"))
if not os.path.isdir(DEFAULT_DATA):  # no shared set beside the checkout: the same files
    DEFAULT_DATA = os.path.join(HERE, "..", "tests", "data", "vggish")


def test_weights(data: str) -> dict:
    spec = importlib.util.spec_from_file_location("make_weights",
                                                  os.path.join(data, "make_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.weights()


def audio(seconds: float) -> np.ndarray:
    """Chirps over noise, mono float32 at 16 kHz."""
    t = np.arange(int(seconds * vi.SAMPLE_RATE)) / vi.SAMPLE_RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 400 * (t % 5)) * t)
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    return (chirp + noise).astype(np.float32)


def rate(fn, count: int, seconds: float) -> float:
    """Items/s of ``fn()`` (which handles ``count`` items), after one warm-up call, repeated
    for at least ``seconds``."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seconds-audio", type=float, default=60.0)
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--cuda-batch-sizes", default="16,64,256")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--no-tf", action="store_true", help="skip the TensorFlow baseline")
    parser.add_argument("--json")
    args = parser.parse_args()

    weights = test_weights(args.data)
    wave = audio(args.seconds_audio)
    examples = vi.waveform_to_examples(wave)
    n = len(examples)
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "audio_seconds": args.seconds_audio, "examples": n}
    print(f"{n} examples ({args.seconds_audio:g} s of audio), torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads")

    res["preprocess_examples_per_s"] = rate(lambda: vi.waveform_to_examples(wave), n,
                                            args.seconds)
    print(f"preprocessing (numpy, reference log-mel): {res['preprocess_examples_per_s']:.0f} "
          f"examples/s")
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    res["torch_cpu"] = {}
    for b in map(int, args.batch_sizes.split(",")):
        emb = VggishEmbedder(state, "cpu", b)
        res["torch_cpu"][b] = rate(lambda: emb.embed(examples), n, args.seconds)
        print(f"torch cpu network, batch {b:>3}: {res['torch_cpu'][b]:.1f} examples/s")
    emb = VggishEmbedder(state, "cpu", 64)

    def torch_end_to_end() -> np.ndarray:
        stream = VggishStream(emb)
        stream.push(wave)
        return stream.finish()

    res["torch_end_to_end"] = rate(torch_end_to_end, n, args.seconds)
    print(f"torch end to end (waveform in, batch 64): {res['torch_end_to_end']:.1f} examples/s "
          f"= {res['torch_end_to_end'] * 0.96:.0f}x real time")

    if not args.no_tf:
        from actprep.extractors.audio.vggish_tf import HubVggish, export_saved_model

        with tempfile.TemporaryDirectory() as tmp:
            export_saved_model(weights, tmp)
            hub = HubVggish(tmp, batch_examples=64)
            tf_out = hub.embed_audio([wave])
            res["tf_end_to_end"] = rate(lambda: hub.embed_audio([wave]), n, args.seconds)
        torch_out = torch_end_to_end()
        res["tf_vs_torch_max_rel_diff"] = float(np.abs(tf_out - torch_out).max()
                                                / np.abs(tf_out).max())
        res["ratio_torch_over_tf"] = res["torch_end_to_end"] / res["tf_end_to_end"]
        print(f"TensorFlow end to end (tfhub backend, SavedModel): {res['tf_end_to_end']:.1f} "
              f"examples/s; torch / TF = {res['ratio_torch_over_tf']:.2f}; max relative "
              f"difference {res['tf_vs_torch_max_rel_diff']:.1e}")

    if torch.cuda.is_available():
        cpu_out = emb.embed(examples)
        res["torch_cuda"] = {}
        for b in map(int, args.cuda_batch_sizes.split(",")):
            big = np.concatenate([examples] * max(1, (4 * b) // n + 1))
            gpu = VggishEmbedder(state, "cuda", b)

            def run() -> None:
                gpu.embed(big)
                torch.cuda.synchronize()
            res["torch_cuda"][b] = rate(run, len(big), args.seconds)
            print(f"torch cuda network, batch {b:>3}: {res['torch_cuda'][b]:.0f} examples/s")
        gpu_out = VggishEmbedder(state, "cuda", 64).embed(examples)
        res["cuda_vs_cpu_max_rel_diff"] = float(np.abs(gpu_out - cpu_out).max()
                                                / np.abs(cpu_out).max())
        print(f"cuda vs cpu max relative difference: {res['cuda_vs_cpu_max_rel_diff']:.1e}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
