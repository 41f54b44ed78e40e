"""Flow of a frame stream: consecutive pairs through one backend, batched for torch.

``FlowEngine.flows(frames)`` turns F RGB frames into F-1 flows (flow i: frame i to i+1) in
order, streaming: at most ``batch_size`` pairs are held at once whatever the video's length,
and the last partial batch is always computed. Backends:

- ``opencv``: ``cv2.optflow.DualTVL1OpticalFlow`` on the CPU, one pair at a time;
- ``torch``: ``tvl1_torch.tvl1_flow``, compiled, on CUDA ``batch_size`` pairs per call (the
  last batch of a video padded so that every call has the shape the kernels were made for)
  with the hand-written Triton kernels (``tvl1_triton``; Inductor's where triton is missing
  or they fail to build), on the CPU one pair per call with Inductor's C++ kernels.

``auto`` picks torch, on CUDA when a GPU is there, else on the CPU, where compiled it is
several times faster than OpenCV. Where compiling is impossible (no C++ compiler, a platform
Inductor does not support), found by a warm-up call when the engine is made, ``auto`` falls
back to OpenCV on the CPU and an explicit ``torch`` to its eager path (same flows, slower),
each with one warning. torch is imported only when needed, so the OpenCV path works without it.

Engines of several threads may share one device. A ``slots`` semaphore, shared by them,
bounds how many torch batches are on the device at once, so its memory is bounded by
slots x batch size whatever the number of threads (one batch already keeps a GPU busy). On
the CPU, torch calls take turns, one at a time per process: each uses every core.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import threading
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from actprep.extractors.flow.opencv_backend import check_supported, opencv_flow
from actprep.extractors.flow.params import TVL1Params
from actprep.extractors.torch_device import cuda_available, has_triton, resolve_device

BACKENDS = ("auto", "torch", "opencv")
WARM_UP_SIZE = (72, 96)  # its pyramid spans small and large levels; height != width

log = logging.getLogger(__name__)


def resolve(backend: str, device: str) -> tuple[str, str]:
    """(backend, device) that will actually run for the requested ones.

    auto: torch, on CUDA when available, else on the CPU (``FlowEngine`` falls back to OpenCV
    where torch cannot compile). OpenCV runs only on the CPU; asking for CUDA without a GPU is
    an error rather than a silent CPU fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown flow backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "opencv":  # decided without importing torch
        if device == "cuda":
            raise ValueError("the opencv flow backend runs on the CPU only; use "
                             "--flow-backend torch for cuda")
        resolve_device(device, available=False)  # rejects unknown names
        return "opencv", "cpu"
    return "torch", resolve_device(device, cuda_available())


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
                 slots: threading.Semaphore | None = None, compile: bool = True,
                 per_call: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.params = params or TVL1Params()
        self.batch_size = int(batch_size)
        self._slots = slots if slots is not None else contextlib.nullcontext()
        self.backend, self.device = resolve(backend, device)
        # pairs per tvl1_flow call: the whole batch on a GPU; one on the CPU, where a pair's
        # arrays stay in the caches and a batch would iterate until its slowest pair stops
        self.per_call = per_call or (self.batch_size if self.device == "cuda" else 1)
        self.kernels = "triton" if self.device == "cuda" and has_triton() else "inductor"
        self.compiled = self.backend == "torch" and compile and self._compiles(backend)
        if self.backend == "opencv":
            check_supported(self.params)
            self._batch_fn = self._opencv_batch
        else:
            if self.device == "cpu":
                self._slots = _CPU_TEAM
            self._batch_fn = self._torch_batch_fn()

    def _compiles(self, requested: str) -> bool:
        """Whether the compiled torch TV-L1 runs here; where it does not, one warning, and
        ``auto`` on the CPU falls back to OpenCV (when it can run these parameters)."""
        if self.kernels == "triton":
            problem = compile_problem(self.device, self.params, self.per_call, "triton")
            if problem is None:
                return True
            _warn_once(f"flow: the Triton TV-L1 kernels cannot run here ({problem}); using "
                       f"Inductor's kernels instead")
            self.kernels = "inductor"
        problem = compile_problem(self.device, self.params, self.per_call)
        if problem is None:
            return True
        if requested == "auto" and self.device == "cpu" and opencv_can_run(self.params):
            _warn_once(f"flow: torch.compile cannot run here ({problem}); using OpenCV's "
                       f"TV-L1 on the CPU instead, slower and with slightly other flows")
            self.backend = "opencv"
        else:
            _warn_once(f"flow: torch.compile cannot run here ({problem}); using the "
                       f"uncompiled torch TV-L1, the same solver but slower")
        return False

    def __repr__(self) -> str:
        return (f"FlowEngine(backend={self.backend!r}, device={self.device!r}, "
                f"batch_size={self.batch_size}, per_call={self.per_call}, "
                f"compiled={self.compiled}, kernels={self.kernels!r})")

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
        """The torch backend: ``tvl1_flow`` calls of ``per_call`` stacked pairs on the
        device (compiled: the last call padded with blank pairs to ``per_call``, the shape
        its graphs were made for; a blank pair stops at its first iteration, and per-pair
        stopping keeps the others' flows as they are alone)."""
        import torch

        from actprep.extractors.flow.tvl1_torch import tvl1_flow

        device = torch.device(self.device)
        params, compiled, size = self.params, self.compiled, self.per_call
        kernels = self.kernels if compiled else "inductor"

        def call(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            blank = [np.zeros_like(pairs[0][0])] * (size - len(pairs) if compiled else 0)
            prev = np.stack([a for a, _ in pairs] + blank)
            nxt = np.stack([b for _, b in pairs] + blank)
            out = tvl1_flow(torch.from_numpy(prev).to(device, torch.float32),
                            torch.from_numpy(nxt).to(device, torch.float32), params,
                            compiled=compiled, kernels=kernels)
            return list(out[:len(pairs)].permute(0, 2, 3, 1).cpu().numpy())  # [B, H, W, 2]

        def run(batch: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            with self._slots:  # the device memory this batch needs is taken in here
                return [flow for part in batched(batch, size) for flow in call(part)]

        return run


def opencv_can_run(params: TVL1Params) -> bool:
    """Whether OpenCV's CPU TV-L1 can compute flows with these parameters."""
    try:
        check_supported(params)
    except ValueError:
        return False
    return True


_WARM_UP_LOCK = threading.Lock()
# One torch flow call at a time per process on the CPU, whatever the number of threads: each
# call already runs on every core (one OpenMP team), and teams of several threads at once
# oversubscribe the cores, spinning against each other and against decoding.
_CPU_TEAM = threading.Lock()


@functools.cache
def compile_problem(device: str, params: TVL1Params, batch_size: int,
                    kernels: str = "inductor") -> str | None:
    """None when the compiled torch TV-L1 runs here with ``kernels``, else why not (one
    line). A warm-up call on blank frames: it compiles the graphs that every frame size then
    uses (or loads them from the Inductor cache), once per process, so no video pays for it.
    The Triton kernels' failures to build are the compiler's (triton's exceptions), like
    dynamo's."""
    import torch

    from actprep.extractors.flow.tvl1_torch import tvl1_flow

    with _WARM_UP_LOCK:
        blank = torch.zeros((batch_size, *WARM_UP_SIZE), device=device)
        try:
            tvl1_flow(blank, blank, params, compiled=True, kernels=kernels)
        except Exception as exc:
            if not _compiler_failure(exc) or _machine_fault(exc):
                raise  # a bug, memory, disk: not a reason to change solvers
            text = str(exc).strip().splitlines()
            return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
    return None


def _compiler_failure(exc: BaseException) -> bool:
    """Whether an exception is a compiler's failure: dynamo's (whatever went wrong inside),
    or one of triton's own."""
    from torch._dynamo.exc import TorchDynamoException

    return (isinstance(exc, TorchDynamoException)
            or type(exc).__module__.split(".")[0] == "triton")


def _machine_fault(exc: BaseException) -> bool:
    """Whether a compile error was caused by memory or a storage fault (an errno other than
    a missing or forbidden file, which is how a missing compiler shows)."""
    import torch

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
            return True
        if isinstance(exc, OSError) and exc.errno not in (None, errno.ENOENT, errno.EACCES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@functools.cache
def _warn_once(message: str) -> None:
    """Logs a warning the first time this process meets it."""
    log.warning(message)
