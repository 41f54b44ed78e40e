"""Flow of a frame stream: consecutive pairs through one backend, batched for torch.

``FlowEngine.flows(frames)`` turns F RGB frames into F-1 flows (flow i: frame i to i+1) in
order, streaming: at most ``batch_size`` pairs are held at once whatever the video's length,
and the last partial batch is always computed. Backends:

- ``opencv``: ``cv2.optflow.DualTVL1OpticalFlow`` on the CPU, one pair at a time;
- ``torch``: ``tvl1_torch.tvl1_flow`` on ``batch_size`` pairs per call, on CPU or CUDA.

``auto`` picks torch on CUDA when a GPU is there, else OpenCV on the CPU. torch is imported only
when needed, so the OpenCV path works without it.

Engines of several threads may share one device. A ``slots`` semaphore, shared by them,
bounds how many torch batches are on the device at once, so its memory is bounded by
slots x batch size whatever the number of threads (one batch already keeps a GPU busy).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from actprep.extractors.flow.opencv_backend import check_supported, opencv_flow
from actprep.extractors.flow.params import TVL1Params
from actprep.extractors.torch_device import cuda_available, resolve_device

BACKENDS = ("auto", "torch", "opencv")


def resolve(backend: str, device: str) -> tuple[str, str]:
    """(backend, device) that will actually run for the requested ones.

    auto/auto: torch on CUDA when available, else OpenCV on the CPU. OpenCV runs only on the
    CPU; asking for CUDA without a GPU is an error rather than a silent CPU fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown flow backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "opencv":  # decided without importing torch
        if device == "cuda":
            raise ValueError("the opencv flow backend runs on the CPU only; use "
                             "--flow-backend torch for cuda")
        resolve_device(device, available=False)  # rejects unknown names
        return "opencv", "cpu"
    resolved = resolve_device(device, cuda_available())
    if backend == "torch" or resolved == "cuda":
        return "torch", resolved
    return "opencv", "cpu"


def to_gray(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] to uint8 gray [H, W] (OpenCV's BT.601 weights)."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def pairs(frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive gray pairs (frame i, frame i+1) of RGB ``frames``, streaming."""
    prev = None
    for frame in frames:
        gray = to_gray(frame)
        if prev is not None:
            if gray.shape != prev.shape:
                raise ValueError(f"frame size changed from {prev.shape} to {gray.shape}")
            yield prev, gray
        prev = gray


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items; the last one may be shorter (never dropped)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class FlowEngine:
    """TV-L1 flow of frame streams with one backend, set up once and reused for many videos.

    ``backend`` and ``device`` are the ones resolved from the request: what actually runs.
    """

    def __init__(self, backend: str = "auto", device: str = "auto",
                 params: TVL1Params | None = None, batch_size: int = 8,
                 slots: threading.Semaphore | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.params = params or TVL1Params()
        self.batch_size = int(batch_size)
        self._slots = slots if slots is not None else contextlib.nullcontext()
        self.backend, self.device = resolve(backend, device)
        if self.backend == "opencv":
            check_supported(self.params)
            self._batch_fn = self._opencv_batch
        else:
            self._batch_fn = self._torch_batch_fn()

    def __repr__(self) -> str:
        return (f"FlowEngine(backend={self.backend!r}, device={self.device!r}, "
                f"batch_size={self.batch_size})")

    def flows(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """float32 [H, W, 2] flows of consecutive uint8 RGB frames: F-1 for F frames."""
        for batch in batched(pairs(frames), self.batch_size):
            yield from self._batch_fn(batch)

    def pair_flow(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow between two uint8 gray frames [H, W] (float32 [H, W, 2])."""
        return self._batch_fn([(prev, nxt)])[0]

    def _opencv_batch(self, batch: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [opencv_flow(a, b, self.params) for a, b in batch]

    def _torch_batch_fn(self) -> Callable[[list], list[np.ndarray]]:
        """The torch backend: stacks a batch, one ``tvl1_flow`` call on the device."""
        import torch

        from actprep.extractors.flow.tvl1_torch import tvl1_flow

        device = torch.device(self.device)
        params = self.params

        def run(batch: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            prev = np.stack([a for a, _ in batch])
            nxt = np.stack([b for _, b in batch])
            with self._slots:  # the device memory this batch needs is taken in here
                out = tvl1_flow(torch.from_numpy(prev).to(device, torch.float32),
                                torch.from_numpy(nxt).to(device, torch.float32), params)
                return list(out.permute(0, 2, 3, 1).cpu().numpy())  # [B, H, W, 2]

        return run
