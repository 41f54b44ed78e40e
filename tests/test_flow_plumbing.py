"""Flow plumbing: quantization, .flo files and colour coding, the OpenCV backend, the
streaming engine, the ``actprep flow`` command and flow in ``actprep run``."""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import types

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from actprep.extractors.flow import engine as engine_mod
from conftest import LOCAL_BEAM, middlebury_folder
from actprep.extractors.flow.engine import FlowEngine, resolve
from actprep.extractors.flow.flo import (color_wheel, flow_to_color, known, read_flo,
                                         write_flo)
from actprep.extractors.flow.opencv_backend import opencv_flow
from actprep.extractors.flow.params import TVL1Params, preset
from actprep.extractors.flow.quantize import dequantize, quantize
from actprep.extractors.synth import make_video
from actprep.schemas.sample import decode_sample, dequantize_flow



def _rubberwhale() -> str:
    """RubberWhale from tests/data: frame10.png, frame11.png (gray) and flow10.flo."""
    return middlebury_folder("RubberWhale")


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture, uint8 gray: TV-L1 needs gradients everywhere."""
    noise = np.random.default_rng(seed).uniform(0, 255, (h, w)).astype(np.float32)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 1.5), None, 0, 255,
                         cv2.NORM_MINMAX).astype(np.uint8)


# --- quantization ---------------------------------------------------------------------

@pytest.mark.parametrize("bound", [20.0, 5.0])
def test_quantize_round_trip_within_half_step_and_clips(bound):
    f = np.linspace(-bound, bound, 10001).astype(np.float32)
    q = quantize(f, bound)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255
    assert np.abs(dequantize(q, bound) - f).max() <= bound / 255 + 1e-5
    outside = np.array([-3 * bound, -bound - 0.01, bound + 0.01, 1e6], np.float32)
    assert quantize(outside, bound).tolist() == [0, 0, 255, 255]
    # the reader's copy of the inverse is the same formula
    assert np.array_equal(dequantize_flow(q, bound), dequantize(q, bound))


def test_quantize_rounds_to_nearest_like_dense_flow():
    # 0.1 px at bound 20: 127.5 + 0.1 * 6.375 = 128.14 -> 128 (truncation would also give 128);
    # -0.05 px: 127.18 -> 127; 0.07 px: 127.95 -> 128 (truncation: 127)
    assert quantize(np.array([0.1, -0.05, 0.07]), 20).tolist() == [128, 127, 128]
    with pytest.raises(ValueError):
        quantize(np.zeros(2), 0)


# --- .flo and colour coding -------------------------------------------------------------

def test_flo_round_trip(tmp_path):
    flow = np.random.default_rng(1).normal(0, 3, (7, 11, 2)).astype(np.float32)
    flow[2, 3] = 1e10  # unknown
    path = str(tmp_path / "a.flo")
    write_flo(path, flow)
    assert os.path.getsize(path) == 12 + 7 * 11 * 8
    back = read_flo(path)
    assert back.dtype == np.float32 and np.array_equal(back, flow)
    assert known(back).sum() == 7 * 11 - 1
    (tmp_path / "bad.flo").write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match="tag"):
        read_flo(str(tmp_path / "bad.flo"))


def test_read_middlebury_ground_truth():
    gt = read_flo(f"{_rubberwhale()}/flow10.flo")
    assert gt.shape == (388, 584, 2)
    ok = known(gt)
    assert 0.9 < ok.mean() < 1.0  # RubberWhale has occluded (unknown) pixels
    assert np.abs(gt[ok]).max() < 10


def test_color_wheel_and_coding():
    wheel = color_wheel()
    assert wheel.shape == (55, 3) and wheel[0].tolist() == [255, 0, 0]
    flow = np.zeros((1, 6, 2), np.float32)
    flow[0, 1] = (1, 0)  # +x
    flow[0, 2] = (0, 1)  # +y (down)
    flow[0, 3] = (-1, 0)
    flow[0, 4] = (0, -1)
    flow[0, 5] = (1e10, 0)  # unknown
    img = flow_to_color(flow)
    assert img.dtype == np.uint8 and img.shape == (1, 6, 3)
    assert (img[0, 0] >= 250).all()  # zero flow: white
    r, g, b = img[0, 1].astype(int)
    assert r >= 250 and g <= 10 and b <= 50  # +x: the wheel's red
    colours = {tuple(img[0, i]) for i in range(1, 5)}
    assert len(colours) == 4  # each direction its own hue
    assert img[0, 5].tolist() == [0, 0, 0]


# --- backends and engine ------------------------------------------------------------------

def test_opencv_backend_recovers_a_translation():
    prev = _texture(96, 128)
    shift = np.float32([[1, 0, 2], [0, 1, 1]])  # content moves by (+2, +1)
    nxt = cv2.warpAffine(prev, shift, (128, 96), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    flow = opencv_flow(prev, nxt, preset("opencv"))
    assert flow.dtype == np.float32 and flow.shape == (96, 128, 2)
    inner = flow[12:-12, 12:-12]
    epe = np.hypot(inner[..., 0] - 2, inner[..., 1] - 1).mean()
    assert epe < 0.15, epe


def test_opencv_backend_refuses_gaussian_pyramid():
    with pytest.raises(ValueError, match="torch backend"):
        opencv_flow(_texture(32, 32), _texture(32, 32), preset("tsn"))
    with pytest.raises(ValueError, match="torch backend"):
        FlowEngine("opencv", "cpu", preset("tsn"))


def test_resolve_backend_and_device(monkeypatch):
    monkeypatch.setattr(engine_mod, "cuda_available", lambda: False)
    assert resolve("auto", "auto") == ("torch", "cpu")
    assert resolve("torch", "auto") == ("torch", "cpu")
    assert resolve("opencv", "cpu") == ("opencv", "cpu")
    with pytest.raises(ValueError, match="no CUDA"):
        resolve("auto", "cuda")
    monkeypatch.setattr(engine_mod, "cuda_available", lambda: True)
    assert resolve("auto", "auto") == ("torch", "cuda")
    assert resolve("auto", "cpu") == ("torch", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve("opencv", "cuda")
    with pytest.raises(ValueError, match="unknown"):
        resolve("gpu", "auto")


def _moving_frames(steps: list[int], h: int = 48, w: int = 64) -> list[np.ndarray]:
    """RGB crops of one texture; between frame i and i+1 the content moves by steps[i] px
    to the right (flow u = steps[i])."""
    canvas = _texture(h, w + sum(steps) + 4, seed=2)
    x, frames = sum(steps) + 2, []
    for step in [0] + steps:
        x -= step
        frames.append(cv2.cvtColor(canvas[:, x:x + w], cv2.COLOR_GRAY2RGB))
    return frames


@pytest.mark.parametrize("count", [1, 2, 9])
def test_engine_yields_f_minus_1_flows_in_order(count):
    steps = [1, 3, 2, 4, 1, 2, 3, 1][:count - 1]
    engine = FlowEngine("opencv", "cpu", preset("quality"), batch_size=4)
    assert (engine.backend, engine.device) == ("opencv", "cpu")
    flows = list(engine.flows(iter(_moving_frames(steps))))
    assert len(flows) == count - 1
    for step, flow in zip(steps, flows):
        assert flow.shape == (48, 64, 2) and flow.dtype == np.float32
        assert np.median(flow[8:-8, 8:-8, 0]) == pytest.approx(step, abs=0.25)
        assert np.median(flow[8:-8, 8:-8, 1]) == pytest.approx(0, abs=0.25)


def test_engine_opencv_path_does_not_import_torch():
    code = ("import sys, numpy as np\n"
            "from actprep.extractors.flow.engine import FlowEngine\n"
            "e = FlowEngine('opencv', 'cpu', batch_size=2)\n"
            "f = np.zeros((16, 16, 3), np.uint8)\n"
            "assert len(list(e.flows([f, f, f]))) == 2\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("compile", [False, True])
def test_engine_torch_path_batches_and_keeps_the_tail(monkeypatch, compile):
    """The torch path with a stand-in kernel, 4 pairs per call (as on a GPU): one call per
    batch of <= batch_size pairs, the last partial batch included (compiled: padded to the
    batch size, after a warm-up call), results in order."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(engine_mod, "compile_problem", functools.cache(
        engine_mod.compile_problem.__wrapped__))
    calls = []

    def fake_tvl1(prev, nxt, params, compiled=False, kernels="inductor"):
        assert compiled == compile and kernels == "inductor"  # the CPU's
        assert prev.dtype == torch.float32 and prev.shape == nxt.shape and prev.ndim == 3
        calls.append(prev.shape[0])
        d = (nxt.mean(dim=(1, 2)) - prev.mean(dim=(1, 2)))  # per-pair marker
        return d[:, None, None, None].expand(-1, 2, *prev.shape[1:]).clone()

    fake = types.ModuleType("actprep.extractors.flow.tvl1_torch")
    fake.tvl1_flow = fake_tvl1
    monkeypatch.setitem(sys.modules, "actprep.extractors.flow.tvl1_torch", fake)
    engine = FlowEngine("torch", "cpu", TVL1Params(), batch_size=4, compile=compile,
                        per_call=4)
    assert engine.compiled == compile
    frames = [np.full((8, 10, 3), 10 * i, np.uint8) for i in range(10)]
    flows = list(engine.flows(frames))
    assert calls == ([4, 4, 4, 4] if compile else [4, 4, 1])  # compiled: the warm-up first
    assert len(flows) == 9 and flows[0].shape == (8, 10, 2)
    assert [round(float(f[0, 0, 0])) for f in flows] == [10] * 9


@pytest.mark.parametrize("slots", [1, 2])
def test_engines_of_many_threads_share_the_device_slots(monkeypatch, slots):
    """Four threads, each with its own engine: never more torch batches in flight than the
    shared semaphore allows, so device memory is bounded whatever the thread count; on the
    CPU, one at a time per process whatever the semaphore (each call uses every core)."""
    import threading
    import time

    torch = pytest.importorskip("torch")
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def fake_tvl1(prev, nxt, params, compiled=False, kernels="inductor"):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return torch.zeros((prev.shape[0], 2, *prev.shape[1:]))

    fake = types.ModuleType("actprep.extractors.flow.tvl1_torch")
    fake.tvl1_flow = fake_tvl1
    monkeypatch.setitem(sys.modules, "actprep.extractors.flow.tvl1_torch", fake)
    shared = threading.BoundedSemaphore(slots)
    frames = [np.full((8, 10, 3), i, np.uint8) for i in range(9)]
    counts = []

    def work():
        engine = FlowEngine("torch", "cpu", TVL1Params(), batch_size=2, slots=shared,
                            compile=False)
        counts.append(len(list(engine.flows(frames))))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == [8] * 4
    assert state["most"] == 1


@pytest.mark.slow
def test_engine_torch_backend_on_a_translation():
    steps = [2, 1, 3]
    engine = FlowEngine("torch", "cpu", preset("quality"), batch_size=2)
    flows = list(engine.flows(_moving_frames(steps)))
    assert len(flows) == 3
    for step, flow in zip(steps, flows):
        assert np.median(flow[8:-8, 8:-8, 0]) == pytest.approx(step, abs=0.3)


@pytest.mark.slow
def test_compiled_engine_pads_the_last_batch_and_equals_eager():
    """The compiled engine (the default) with 4 pairs per call, as on a GPU, pads a video's
    last batch with blank pairs; the flows are bit for bit those of the uncompiled engine,
    whatever the frame size, and a second frame size compiles nothing more."""
    from torch._dynamo.utils import counters

    steps = [2, 1, 3, 1, 2, 1]  # 6 pairs: a batch of 4, then 2 padded to 4
    compiled = FlowEngine("torch", "cpu", preset("opencv"), batch_size=4, per_call=4)
    eager = FlowEngine("torch", "cpu", preset("opencv"), batch_size=4, compile=False)
    assert FlowEngine("torch", "cpu", preset("opencv"), batch_size=4).per_call == 1
    assert compiled.compiled and not eager.compiled
    graphs = counters["stats"]["unique_graphs"]
    for h, w in ((48, 64), (58, 42)):
        frames = _moving_frames(steps, h, w)
        fused, plain = list(compiled.flows(frames)), list(eager.flows(frames))
        assert len(fused) == len(steps)
        assert all(np.array_equal(a, b) for a, b in zip(fused, plain))
    assert counters["stats"]["unique_graphs"] == graphs
    assert np.median(fused[0][8:-8, 8:-8, 0]) == pytest.approx(steps[0], abs=0.3)


_ONE_GRAPH = """
import torch
from torch._dynamo.utils import counters
from actprep.extractors.flow.engine import compile_problem
from actprep.extractors.flow.params import preset
from actprep.extractors.flow.tvl1_torch import tvl1_flow
for name in ("opencv", "quality", "tsn"):
    assert compile_problem("cpu", preset(name), 1) is None
for h, w in ((18, 22), (40, 30), (120, 170)):  # levels from 16x16 to 20,400 pixels
    a = torch.rand((1, h, w)) * 255
    tvl1_flow(a, torch.roll(a, 1, -1), preset("opencv"), compiled=True)
print(counters["stats"]["unique_graphs"])
"""


@pytest.mark.slow
def test_one_compiled_graph_for_every_level_size_and_preset():
    """A fresh process compiles (or loads) the inner iterations once, in the warm-up, and
    no frame size, pyramid level (small or large: the stopping error is summed in float64,
    so no Inductor size threshold splits the graph) or preset needs another graph."""
    proc = subprocess.run([sys.executable, "-c", _ONE_GRAPH], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1"]


_NO_COMPILER = """
import logging
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
from actprep.extractors.flow.engine import FlowEngine
from actprep.extractors.flow.params import preset
engines = [FlowEngine("auto", "cpu", preset("opencv"), batch_size=2),
           FlowEngine("auto", "cpu", preset("opencv"), batch_size=2),
           FlowEngine("torch", "cpu", preset("opencv"), batch_size=2),
           FlowEngine("auto", "cpu", preset("tsn"), batch_size=2)]
print(" ".join(f"{e.backend}:{e.compiled}" for e in engines))
"""


@pytest.mark.slow
def test_without_a_cpp_compiler_auto_falls_back_with_one_warning(tmp_path):
    """No C++ compiler (CXX names none, and the Inductor cache is empty): auto takes OpenCV,
    an explicit torch (or a preset OpenCV cannot run) the uncompiled torch TV-L1; one warning
    for each, whatever the number of engines."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run([sys.executable, "-c", _NO_COMPILER], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["opencv:False", "opencv:False", "torch:False", "torch:False"]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, proc.stderr[-3000:]
    assert "using OpenCV's TV-L1" in warnings[0] and "torch.compile cannot run" in warnings[0]
    assert "uncompiled torch TV-L1" in warnings[1]
    assert "Traceback" not in proc.stderr


# --- actprep flow -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.e2e
def test_flow_command_writes_flo_and_png(run_cli, tmp_path, capsys):
    out, png = tmp_path / "rw.flo", tmp_path / "rw.png"
    code = run_cli(["flow", f"{_rubberwhale()}/frame10.png", f"{_rubberwhale()}/frame11.png",
                    "-o", out, "--backend", "opencv", "--preset", "opencv", "--viz", png])
    assert code == 0
    printed = capsys.readouterr().out
    assert "backend opencv" in printed and "max" in printed
    flow = read_flo(str(out))
    assert flow.shape == (388, 584, 2)
    gt = read_flo(f"{_rubberwhale()}/flow10.flo")
    ok = known(gt)
    assert np.hypot(*(flow - gt)[ok].T).mean() < 0.25  # 0.156 measured (data/README.md)
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (388, 584, 3)


def test_flow_command_errors(run_cli, tmp_path, capsys):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((10, 12, 3), np.uint8))
    code = run_cli(["flow", f"{_rubberwhale()}/frame10.png", small, "-o", tmp_path / "x.flo",
                    "--backend", "opencv"])
    err = capsys.readouterr().err
    assert code == 2 and "584x388" in err and "12x10" in err and "small.png" in err
    code = run_cli(["flow", small, small, "-o", tmp_path / "x.txt", "--backend", "opencv"])
    assert code == 2 and ".flo or .npy" in capsys.readouterr().err
    code = run_cli(["flow", small, tmp_path / "missing.png", "-o", tmp_path / "x.npy"])
    assert code == 2 and "missing.png" in capsys.readouterr().err


@pytest.mark.e2e
def test_flow_command_npy(run_cli, tmp_path):
    a = _texture(40, 48)
    b = np.roll(a, 1, axis=1)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    assert run_cli(["flow", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "f.npy",
                    "--backend", "opencv"]) == 0
    flow = np.load(tmp_path / "f.npy")
    assert flow.shape == (40, 48, 2) and flow.dtype == np.float32
    assert np.median(flow[..., 0]) == pytest.approx(1, abs=0.2)


# --- actprep run --modalities rgb,flow,mfcc -------------------------------------------------

MOTION = (2.0, 1.0)  # px per frame at the source size 192x128; stored at 96x64: half


@pytest.fixture(scope="module")
def flow_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowset")
    make_video(str(root / "walk.mp4"), duration=0.4, fps=25, size=(192, 128), motion=MOTION)
    with open(root / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], ["walk.mp4", "walking"]])
    return root


def _run_flow(run_cli, root, out, *extra) -> int:
    return run_cli(["run", "--dataset", "generic", "--manifest", root / "list.csv",
                    "--output", out, "--modalities", "rgb,flow,mfcc", "--size", "96x64",
                    "--flow-backend", "opencv", "--no-progress", *extra, *LOCAL_BEAM])


def _only_sample(out) -> dict:
    samples = list(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 1
    return samples[0]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("raw", [False, True])
def test_run_with_flow(run_cli, flow_set, tmp_path, raw):
    out = tmp_path / "out"
    assert _run_flow(run_cli, flow_set, out, *(["--flow-raw"] if raw else [])) == 0
    row = pq.read_table(out / "index").to_pylist()[0]
    assert row["status"] == "ok", row
    frames = row["frames"]
    assert frames == 10 and row["flow_pairs"] == frames - 1
    assert row["flow_backend"] == "opencv"
    raw_sample = _only_sample(out)
    names = [k for k in raw_sample if not k.startswith("__")]
    assert sum(k.startswith("rgb.") for k in names) == frames
    assert sum(k.startswith("flow_x.") for k in names) == frames - 1
    assert sum(k.startswith("flow_y.") for k in names) == frames - 1
    assert sum(k.startswith("flow.") and k.endswith(".npy") for k in names) == \
        (frames - 1 if raw else 0)
    assert "flow_x.000001.jpg" in names and f"flow_y.{frames - 1:06d}.jpg" in names
    s = decode_sample(raw_sample)
    meta = s["meta"]
    assert meta["params"]["flow"]["backend"] == "opencv"
    assert meta["params"]["flow"]["device"] == "cpu"
    assert meta["params"]["flow"]["preset"] == "quality"
    assert meta["params"]["flow"]["bound"] == 20
    assert meta["params"]["flow"]["tvl1"] == preset("quality").as_dict()
    assert s["rgb"].shape == (frames, 64, 96, 3)
    flow = s["flow"]
    assert flow.dtype == np.float32 and flow.shape == (frames - 1, 2, 64, 96)
    # the window moves by MOTION, so the content by -MOTION; frames are half size
    inner = flow[:, :, 8:-8, 8:-8]
    assert np.median(inner[:, 0]) == pytest.approx(-MOTION[0] / 2, abs=0.2)
    assert np.median(inner[:, 1]) == pytest.approx(-MOTION[1] / 2, abs=0.2)
    assert s["mfcc"] is not None
    if raw:
        first = np.load(io.BytesIO(raw_sample["flow.000001.npy"]), allow_pickle=False)
        assert first.dtype == np.float16 and first.shape == (2, 64, 96)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["flow_preset"] == "quality"
    assert "flow_backend" not in run_json and "device" not in run_json
    # another backend request does not make a rerun refused (what ran is in the metadata)
    assert _run_flow(run_cli, flow_set, out, *(["--flow-raw"] if raw else []),
                     "--flow-batch-size", "3") == 0


def test_run_refuses_tsn_preset_on_opencv(run_cli, flow_set, tmp_path, capsys):
    code = _run_flow(run_cli, flow_set, tmp_path / "out", "--flow-preset", "tsn")
    assert code == 2 and "torch backend" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_shard_does_not_depend_on_batch_size(run_cli, flow_set, tmp_path):
    """Members go per frame (rgb N, flow N) whatever the batching: equal bytes."""
    shards = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}"
        assert _run_flow(run_cli, flow_set, out, "--flow-batch-size", batch) == 0
        shards.append((out / "shard-000000.tar").read_bytes())
    assert shards[0] == shards[1]
    with tarfile.open(tmp_path / "b4" / "shard-000000.tar") as tar:
        names = [m.name.split(".", 1)[1] for m in tar.getmembers()]
    assert names[:4] == ["cls", "rgb.000001.jpg", "flow_x.000001.jpg", "flow_y.000001.jpg"]
    assert names[-3:] == ["rgb.000010.jpg", "mfcc.npy", "json"]
