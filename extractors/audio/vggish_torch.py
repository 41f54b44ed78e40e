"""The VGGish network in PyTorch, in the state_dict layout of the widely used PyTorch port.

Layers as the reference (tensorflow/models audioset/vggish, ``vggish_slim``): four conv
blocks (3x3 convs, stride 1, SAME padding, ReLU; 2x2 max pools) over a [96, 64] log-mel
example, then fc1 (two 4096 layers with ReLU) and fc2 (128, *no* activation: the reference
and TF-Hub return fc2 as is; the PyTorch port's final ReLU is deliberately absent). Conv
features are flattened in TensorFlow's (height, width, channel) order so fc1 weights
converted from the TF checkpoint apply unchanged.
"""
from __future__ import annotations

from typing import BinaryIO, Mapping

import numpy as np
import torch
from torch import nn

from actprep.extractors.audio.vggish_input import (
    EMBEDDING_SIZE, EXAMPLE_FRAMES, FLAT_FEATURES, MEL_BANDS, ExampleStream)

_CONVS = ((1, 64), "M", (64, 128), "M", (128, 256), (256, 256), "M", (256, 512), (512, 512), "M")


class VGGish(nn.Module):
    """[n, 96, 64] log-mel examples in, [n, 128] float embeddings (fc2) out."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in _CONVS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(spec[0], spec[1], 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(FLAT_FEATURES, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        # channels-last (NHWC) activations: oneDNN's and cuDNN's fast convolution layout
        # (1.4x the default layout on the CPU, measured)
        x = self.features(examples.unsqueeze(1).contiguous(memory_format=torch.channels_last))
        x = x.permute(0, 2, 3, 1).flatten(1)  # [n, 6, 4, 512]: TF's NHWC flatten order
        return self.embeddings(x)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a VGGish state_dict."""
    return {k: tuple(v.shape) for k, v in VGGish().state_dict().items()}


def check_state_dict(state: Mapping[str, object], source: str) -> dict[str, torch.Tensor]:
    """The state_dict as float32 tensors; ValueError naming ``source`` when keys or shapes
    are not VGGish's."""
    if not isinstance(state, Mapping):
        raise ValueError(f"VGGish weights {source}: expected a state_dict (name -> tensor), "
                         f"got {type(state).__name__}")
    want = expected_shapes()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(map(str, unexpected))}")
    tensors = {}
    for name, shape in want.items():
        if name in state:
            value = torch.as_tensor(np.asarray(state[name]) if not torch.is_tensor(state[name])
                                    else state[name]).float()
            if tuple(value.shape) != shape:
                problems.append(f"{name} has shape {tuple(value.shape)}, expected {shape}")
            tensors[name] = value
    if problems:
        raise ValueError(f"VGGish weights {source}: not the PyTorch-port VGGish layout "
                         f"(features.*, embeddings.*): {'; '.join(problems)}")
    return tensors


def load_state_dict(stream: BinaryIO, source: str) -> dict[str, torch.Tensor]:
    """Reads a ``torch.save``d VGGish state_dict (never unpickling code) and checks it."""
    try:
        state = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"VGGish weights {source}: not a readable PyTorch state_dict file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, Mapping) and "state_dict" in state and "features.0.weight" not in state:
        state = state["state_dict"]
    return check_state_dict(state, source)


class VggishEmbedder:
    """VGGish on one device, set up once (per worker) and applied to many videos."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], device: str = "cpu",
                 batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"VGGish batch size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = VGGish()
        self.model.load_state_dict(check_state_dict(state_dict, "(given state_dict)"))
        self.model.eval().to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed(self, examples: np.ndarray) -> np.ndarray:
        """float32 [n, 128] embeddings of [n, 96, 64] examples, ``batch_size`` at a time."""
        examples = np.asarray(examples, np.float32)
        if examples.ndim != 3 or examples.shape[1:] != (EXAMPLE_FRAMES, MEL_BANDS):
            raise ValueError(f"expected log-mel examples [n, {EXAMPLE_FRAMES}, {MEL_BANDS}], "
                             f"got {examples.shape}")
        out = [self.model(torch.from_numpy(examples[i:i + self.batch_size]).to(self.device))
               .float().cpu().numpy() for i in range(0, len(examples), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, EMBEDDING_SIZE), np.float32)


class VggishStream:
    """Audio chunks in (mono 16 kHz float), ``finish()`` gives float32 [n, 128]: the
    examples of each chunk go through the network as they complete, so only embeddings
    accumulate, whatever the audio's length."""

    def __init__(self, embedder: VggishEmbedder, hop_seconds: float = 0.96):
        self._embedder = embedder
        self._examples = ExampleStream(hop_seconds)
        self._out: list[np.ndarray] = []

    def push(self, chunk: np.ndarray) -> None:
        examples = self._examples.push(chunk)
        if len(examples):
            self._out.append(self._embedder.embed(examples))

    def finish(self) -> np.ndarray:
        if not self._out:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return np.concatenate(self._out)
