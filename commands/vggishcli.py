"""``actprep vggish-convert``: VGGish weights between the official TensorFlow checkpoint
(``vggish_model.ckpt``), the PyTorch-port state_dict (``.pth``, for ``--vggish-backend
torch``) and a SavedModel with the TF-Hub interface (for ``--vggish-backend tfhub``).

TensorFlow is imported only when a checkpoint is read or a SavedModel written.
"""
from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np

from actprep.pipelines import storage


class VggishConvertError(Exception):
    """A user error: missing or unreadable input, not VGGish's weights, nothing to write."""


def _vggish_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter
    from actprep.extractors.audio import vggish_tf
    return vggish_tf


def read_state_dict(checkpoint: str | None = None, weights: str | None = None) -> dict:
    """The VGGish state_dict of a TF checkpoint (V1 file or V2 prefix) or of a torch
    ``.pth`` (local or gs://)."""
    if checkpoint:
        try:
            return _vggish_tf().checkpoint_to_state_dict(checkpoint)
        except ValueError as exc:
            raise VggishConvertError(str(exc)) from None
    from actprep.extractors.audio.vggish_torch import load_state_dict

    if not storage.exists(weights):
        raise VggishConvertError(f"VGGish weights {weights}: file not found")
    try:
        return load_state_dict(io.BytesIO(storage.read_bytes(weights)), weights)
    except ValueError as exc:
        raise VggishConvertError(str(exc)) from None


def write_pth(state_dict: Mapping[str, object], path: str) -> int:
    """Writes the state_dict as float32 tensors with ``torch.save`` (atomically; local or
    gs://); returns the parameter count."""
    import torch

    from actprep.extractors.audio.vggish_torch import check_state_dict

    tensors = check_state_dict(state_dict, "(converted)")
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buf)
    storage.write_atomic(path, buf.getvalue())
    return sum(int(np.prod(v.shape)) for v in tensors.values())


def convert(checkpoint: str | None, weights: str | None, output: str | None,
            saved_model: str | None) -> list[str]:
    """Reads the weights (exactly one of ``checkpoint``, ``weights``), writes the asked
    outputs (``output`` .pth and/or ``saved_model`` folder) and returns one report line
    per output."""
    if bool(checkpoint) == bool(weights):
        raise VggishConvertError("give exactly one of --checkpoint CKPT and --weights PTH")
    if not output and not saved_model:
        raise VggishConvertError("nothing to write: give -o/--output PTH and/or "
                                 "--saved-model DIR")
    source = checkpoint or weights
    state = read_state_dict(checkpoint, weights)
    lines = []
    if output:
        count = write_pth(state, output)
        lines.append(f"{output}: VGGish PyTorch state_dict ({count / 1e6:.1f}M parameters) "
                     f"from {source}")
    if saved_model:
        _vggish_tf().export_saved_model(state, saved_model)
        lines.append(f"{saved_model}: VGGish SavedModel (TF-Hub interface: float32 16 kHz "
                     f"waveform -> [n, 128]) from {source}")
    return lines
