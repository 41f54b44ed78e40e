"""Which torch device runs: shared by the flow and VGGish extractors."""
from __future__ import annotations

import importlib.util

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (False without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str, available: bool | None = None) -> str:
    """"cpu" or "cuda" for a requested device; auto picks cuda when there is one. Asking for
    cuda without a GPU is an error rather than a silent CPU fallback."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    available = cuda_available() if available is None else available
    if device == "cuda" and not available:
        raise ValueError("device 'cuda' requested but no CUDA device is available "
                         "(torch.cuda.is_available() is False or torch is not installed)")
    if device == "auto":
        return "cuda" if available else "cpu"
    return device


def has_triton() -> bool:
    """Whether the triton package is installed (every CUDA build of torch brings it)."""
    return importlib.util.find_spec("triton") is not None


def load_triton_before_tensorflow() -> None:
    """Imports triton, if installed, so that it is loaded before TensorFlow. Each carries
    its own LLVM; with TensorFlow loaded first, loading triton (which ``torch.compile``
    does whenever it is installed, as with every CUDA build of torch) aborts the process
    ("LLVM ERROR: inconsistency in registered CommandLine options"). The other order
    works. Call it before any ``import tensorflow``."""
    if has_triton():
        import triton  # noqa: F401
