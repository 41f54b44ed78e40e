"""Per-worker extractor state built from the run options: the flow engine and VGGish.

Built once per worker (``ProcessVideos.setup``) and once by the launcher to check the
options and files before any work. Weights and PCA parameters are read through Beam's
FileSystems, so local paths and gs:// URIs work alike; nothing is ever downloaded.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from actprep.extractors.flow.engine import FlowEngine
from actprep.extractors.flow.params import preset
from actprep.pipelines import storage
from actprep.pipelines.options import RunOptions

NON_OVERLAPPING = 0.96


class AudioStream(Protocol):
    def push(self, chunk: np.ndarray) -> None: ...
    def finish(self) -> np.ndarray: ...


@dataclass
class Vggish:
    """A loaded VGGish backend: ``stream()`` starts the embedding of one audio track."""

    backend: str
    device: str
    model: Any  # VggishEmbedder (torch) or HubVggish (tfhub)
    hop_seconds: float
    pca: Any = None  # PcaParams or None
    weights_sha256: str | None = None

    def stream(self) -> AudioStream:
        if self.backend == "torch":
            from actprep.extractors.audio.vggish_torch import VggishStream
            return VggishStream(self.model, self.hop_seconds)
        return self.model.stream()

    def describe(self) -> dict[str, Any]:
        info = {"backend": self.backend, "device": self.device}
        if self.weights_sha256:
            info["weights_sha256"] = self.weights_sha256
        return info


@dataclass
class Models:
    flow: FlowEngine | None = None
    vggish: Vggish | None = None

    def ran(self) -> dict[str, dict[str, Any]]:
        """What computes each model modality, for the sample metadata."""
        out = {}
        if self.flow is not None:
            out["flow"] = {"backend": self.flow.backend, "device": self.flow.device}
        if self.vggish is not None:
            out["vggish"] = self.vggish.describe()
        return out


@functools.cache
def flow_slots(count: int) -> threading.BoundedSemaphore:
    """The process-wide limit on torch flow batches in flight (``--flow-device-batches``),
    shared by the engines of all the process's threads."""
    return threading.BoundedSemaphore(count)


def make_flow_engine(opts: RunOptions) -> FlowEngine | None:
    """The flow engine (None without the flow modality); it holds backend state, so each
    worker thread builds its own, and they share the device through ``flow_slots``."""
    if "flow" not in opts.modalities:
        return None
    return FlowEngine(opts.flow_backend, opts.device, preset(opts.flow_preset),
                      opts.flow_batch_size, slots=flow_slots(opts.flow_device_batches))


def _read(path: str, what: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: file not found") from None


def make_vggish(opts: RunOptions) -> Vggish | None:
    """VGGish for these options (None without the vggish modality). ValueError or
    FileNotFoundError, naming the file, when a weight file is missing or is not VGGish's."""
    if "vggish" not in opts.modalities:
        return None
    pca = None
    if opts.vggish_pca:
        from actprep.extractors.audio.vggish_pca import load_pca
        pca = load_pca(_read(opts.vggish_pca, "VGGish PCA"), opts.vggish_pca)
    if opts.vggish_backend == "tfhub":
        return _hub_vggish(opts, pca)
    if not opts.vggish_weights:
        raise ValueError("the vggish modality needs --vggish-weights PATH (a PyTorch "
                         "state_dict in the PyTorch-port layout; 'actprep vggish-convert' "
                         "makes one from the official vggish_model.ckpt), or "
                         "--vggish-backend tfhub with --vggish-hub")
    if opts.vggish_hub:
        raise ValueError("--vggish-hub is for --vggish-backend tfhub; the torch backend "
                         "takes --vggish-weights")
    import hashlib

    from actprep.extractors.audio.vggish_torch import VggishEmbedder, load_state_dict
    from actprep.extractors.torch_device import resolve_device

    data = _read(opts.vggish_weights, "VGGish weights")
    state = load_state_dict(io.BytesIO(data), opts.vggish_weights)
    device = resolve_device(opts.device)
    embedder = VggishEmbedder(state, device, opts.vggish_batch_size)
    return Vggish("torch", device, embedder, opts.vggish_hop, pca,
                  hashlib.sha256(data).hexdigest())


def _hub_vggish(opts: RunOptions, pca: Any) -> Vggish:
    if not opts.vggish_hub:
        raise ValueError("--vggish-backend tfhub needs --vggish-hub HANDLE (a SavedModel "
                         "folder, local or gs://, or a tfhub.dev address)")
    if opts.vggish_weights:
        raise ValueError("--vggish-weights is for the torch backend; the tfhub backend "
                         "takes its weights from --vggish-hub")
    if abs(opts.vggish_hop - NON_OVERLAPPING) > 1e-9:
        raise ValueError(f"--vggish-hop {opts.vggish_hop}: the TF-Hub model fixes the hop at "
                         f"{NON_OVERLAPPING} s; use --vggish-backend torch for other hops")
    try:
        from actprep.extractors.audio.vggish_tf import HubVggish
    except ImportError as exc:
        raise ImportError(f"--vggish-backend tfhub needs tensorflow and tensorflow-hub "
                          f"(pip install 'actprep[tfhub]'): {exc}") from None
    model = HubVggish(opts.vggish_hub, batch_examples=opts.vggish_batch_size)
    return Vggish("tfhub", "tensorflow", model, NON_OVERLAPPING, pca)


def load_models(opts: RunOptions) -> Models:
    """Everything the options ask for, loaded and checked."""
    return Models(flow=make_flow_engine(opts), vggish=make_vggish(opts))


def check_models_here(opts: RunOptions) -> list[str]:
    """Loads the models as the local workers will; says what runs where."""
    models = load_models(opts)
    lines = []
    if models.flow is not None:
        compiled = ", compiled" if models.flow.compiled else ""
        lines.append(f"flow: TV-L1 {opts.flow_preset} on {models.flow.backend} "
                     f"({models.flow.device}{compiled})")
    if models.vggish is not None:
        vggish = models.vggish
        lines.append(f"vggish: {vggish.backend} ({vggish.device}), hop "
                     f"{vggish.hop_seconds:g} s{', with PCA' if vggish.pca else ''}")
    return lines


def check_models_remote(opts: RunOptions) -> list[str]:
    """For a job that runs elsewhere (Dataflow): the GPU, and maybe torch, are on the
    workers only, so each worker resolves backend and device in its setup (and fails it,
    naming the problem: ``--device cuda`` without a GPU). Here: what can be checked
    without them, the weight files above all."""
    lines = []
    if "flow" in opts.modalities:
        if opts.flow_backend == "opencv":
            make_flow_engine(opts)  # the CPU backend: checks the preset suits it
        lines.append(f"flow: TV-L1 {opts.flow_preset}, backend {opts.flow_backend} on "
                     f"device {opts.device}, resolved by each worker")
    if "vggish" in opts.modalities:
        here = dataclasses.replace(opts, device="cpu")
        try:
            make_vggish(here)
        except ImportError:  # no torch / TensorFlow on this launcher: the files at least
            for path in (opts.vggish_weights, opts.vggish_pca):
                if path and not storage.exists(path):
                    raise FileNotFoundError(f"{path}: file not found") from None
        lines.append(f"vggish: {opts.vggish_backend} on device {opts.device}, resolved by "
                     f"each worker")
    return lines
