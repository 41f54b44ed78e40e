"""Which torch device runs: shared by the flow and VGGish extractors."""
from __future__ import annotations

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
