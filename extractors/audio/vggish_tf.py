"""VGGish on the TensorFlow side: the official checkpoint, SavedModels, TF-Hub.

- The official model (tensorflow/models research/audioset/vggish, ``vggish_slim``) is a
  TF-Slim checkpoint (``vggish_model.ckpt``); ``checkpoint_to_state_dict`` turns it into
  the PyTorch-port state_dict that ``vggish_torch`` runs, ``write_checkpoint`` goes back.
- ``export_saved_model`` writes a SavedModel with the TF-Hub VGGish interface (float32
  16 kHz waveform in, float32 [n, 128] fc2 embeddings out), preprocessing included, so a
  converted or fine-tuned state_dict can serve the TF-Hub backend.
- ``HubVggish`` runs such a model (a TF-Hub handle or a SavedModel folder) over audio that
  arrives in chunks, with bounded memory.

This module imports TensorFlow; import it only where TensorFlow is wanted.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Mapping

import numpy as np

from actprep.extractors.audio.vggish_input import (
    EMBEDDING_SIZE, EXAMPLE_FRAMES, FFT, FLAT_FEATURES, HOP, LOG_OFFSET, MEL_BANDS, WINDOW,
    mel_matrix)
from actprep.extractors.torch_device import load_triton_before_tensorflow

load_triton_before_tensorflow()
import tensorflow as tf  # noqa: E402 - after triton (see load_triton_before_tensorflow)

EXAMPLE_SAMPLES = EXAMPLE_FRAMES * HOP  # 15360: examples start every 0.96 s of samples

# The one name table, used in both directions: TF-Slim scope in the official checkpoint,
# module prefix in the PyTorch port, TF kernel shape (conv HWIO, dense [in, out]). Each
# layer has ``{scope}/weights`` + ``{scope}/biases`` <-> ``{prefix}.weight`` + ``.bias``.
LAYERS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("vggish/conv1", "features.0", (3, 3, 1, 64)),
    ("vggish/conv2", "features.3", (3, 3, 64, 128)),
    ("vggish/conv3/conv3_1", "features.6", (3, 3, 128, 256)),
    ("vggish/conv3/conv3_2", "features.8", (3, 3, 256, 256)),
    ("vggish/conv4/conv4_1", "features.11", (3, 3, 256, 512)),
    ("vggish/conv4/conv4_2", "features.13", (3, 3, 512, 512)),
    ("vggish/fc1/fc1_1", "embeddings.0", (FLAT_FEATURES, 4096)),
    ("vggish/fc1/fc1_2", "embeddings.2", (4096, 4096)),
    ("vggish/fc2", "embeddings.4", (4096, EMBEDDING_SIZE)),
)
_POOL_AFTER = ("vggish/conv1", "vggish/conv2", "vggish/conv3/conv3_2", "vggish/conv4/conv4_2")


def _tf_to_torch_kernel(kernel: np.ndarray) -> np.ndarray:
    # conv HWIO -> OIHW; dense [in, out] -> [out, in]
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T)


def _torch_to_tf_kernel(weight: np.ndarray) -> np.ndarray:
    # conv OIHW -> HWIO; dense [out, in] -> [in, out]
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T)


def _torch_kernel_shape(tf_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (tf_shape[3], tf_shape[2], tf_shape[0], tf_shape[1]) if len(tf_shape) == 4 \
        else tf_shape[::-1]


def tf_variable_shapes() -> dict[str, tuple[int, ...]]:
    """Official checkpoint variable name -> shape, for every VGGish variable."""
    out = {}
    for scope, _, shape in LAYERS:
        out[f"{scope}/weights"] = shape
        out[f"{scope}/biases"] = (shape[-1],)
    return out


def _as_float32(value: object) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float32)


def state_dict_to_tf_variables(state_dict: Mapping[str, object],
                               source: str = "(given state_dict)") -> dict[str, np.ndarray]:
    """Official TF variable name -> float32 array (TF layout) of a PyTorch-port VGGish
    state_dict (tensors or arrays); ValueError naming ``source`` on missing keys or shapes."""
    out, problems = {}, []
    for scope, prefix, shape in LAYERS:
        for suffix, tf_suffix, want in (("weight", "weights", _torch_kernel_shape(shape)),
                                        ("bias", "biases", (shape[-1],))):
            name = f"{prefix}.{suffix}"
            if name not in state_dict:
                problems.append(f"missing {name} {list(want)}")
                continue
            value = _as_float32(state_dict[name])
            if value.shape != want:
                problems.append(f"{name} has shape {list(value.shape)}, expected {list(want)}")
                continue
            out[f"{scope}/{tf_suffix}"] = _torch_to_tf_kernel(value) if suffix == "weight" \
                else value
    if problems:
        raise ValueError(f"VGGish weights {source}: not the PyTorch-port VGGish layout: "
                         f"{'; '.join(problems)}")
    return out


def tf_variables_to_state_dict(variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch-port state_dict (float32 arrays) of official TF variables (all present, with
    the shapes of ``tf_variable_shapes``; as ``checkpoint_to_state_dict`` checks)."""
    out = {}
    for scope, prefix, _ in LAYERS:
        out[f"{prefix}.weight"] = _tf_to_torch_kernel(_as_float32(variables[f"{scope}/weights"]))
        out[f"{prefix}.bias"] = _as_float32(variables[f"{scope}/biases"])
    return out


def checkpoint_to_state_dict(ckpt_path: str) -> dict[str, np.ndarray]:
    """The PyTorch-port state_dict (float32 arrays) of a VGGish TF checkpoint: the official
    V1 file ``vggish_model.ckpt`` or a V2 prefix (local or any path TF reads). Other
    variables (global_step, optimizer slots) are ignored; a missing VGGish variable or a
    wrong shape is a ValueError naming the checkpoint, the variable and what was expected."""
    try:
        reader = tf.train.load_checkpoint(ckpt_path)
    except Exception as exc:  # NotFoundError, DataLossError, ValueError...
        first = (str(exc).splitlines() or [""])[0][:300]
        raise ValueError(f"VGGish checkpoint {ckpt_path}: not a readable TensorFlow checkpoint "
                         f"({type(exc).__name__}: {first})") from None
    have = reader.get_variable_to_shape_map()
    problems = []
    for name, shape in tf_variable_shapes().items():
        if name not in have:
            problems.append(f"missing variable {name} (expected shape {list(shape)})")
        elif tuple(have[name]) != shape:
            problems.append(f"variable {name} has shape {list(have[name])}, "
                            f"expected {list(shape)}")
    if problems:
        names = sorted(have)
        held = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise ValueError(f"VGGish checkpoint {ckpt_path}: {'; '.join(problems)} "
                         f"(the checkpoint holds: {held or 'nothing'})")
    return tf_variables_to_state_dict({name: reader.get_tensor(name)
                                       for name in tf_variable_shapes()})


def write_variables(variables: Mapping[str, np.ndarray], prefix: str, version: int = 2) -> None:
    """Writes arrays as a TF checkpoint under exactly the given variable names: V2 (``prefix``
    .index + .data-*, what ``tf.train.Checkpoint`` writes) or V1 (one file, the official
    ``vggish_model.ckpt`` format)."""
    names = sorted(variables)
    tensors = [tf.constant(np.asarray(variables[n])) for n in names]
    folder = os.path.dirname(prefix)
    if folder:
        tf.io.gfile.makedirs(folder)
    if version == 2:
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                          shape_and_slices=[""] * len(names), tensors=tensors)
    elif version == 1:
        tf.raw_ops.Save(filename=prefix, tensor_names=names, data=tensors)
    else:
        raise ValueError(f"checkpoint version must be 1 or 2, got {version}")


def write_checkpoint(state_dict: Mapping[str, object], prefix: str, version: int = 2) -> None:
    """Writes a PyTorch-port state_dict as a TF checkpoint with the official variable names
    (readable by ``checkpoint_to_state_dict`` and by ``vggish_slim``'s loader for V1)."""
    write_variables(state_dict_to_tf_variables(state_dict), prefix, version)


class VggishModule(tf.Module):
    """VGGish as TF ops, with the TF-Hub interface: ``module(waveform)``, float32 [N]
    16 kHz mono in, float32 [n, 128] embeddings (fc2, no activation) of the n whole
    non-overlapping 0.96 s examples out. Also ``log_mel_examples(waveform)`` -> [n, 96, 64]
    and ``embed_examples(examples)`` -> [n, 128], for checking each half."""

    def __init__(self, state_dict: Mapping[str, object]):
        super().__init__(name="vggish")
        variables = state_dict_to_tf_variables(state_dict)
        self.convs = [(tf.Variable(variables[f"{scope}/weights"], name=f"{scope}/weights"),
                       tf.Variable(variables[f"{scope}/biases"], name=f"{scope}/biases"),
                       scope in _POOL_AFTER)
                      for scope, _, shape in LAYERS if len(shape) == 4]
        self.dense = [(tf.Variable(variables[f"{scope}/weights"], name=f"{scope}/weights"),
                       tf.Variable(variables[f"{scope}/biases"], name=f"{scope}/biases"))
                      for scope, _, shape in LAYERS if len(shape) == 2]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def log_mel_examples(self, waveform: tf.Tensor) -> tf.Tensor:
        """float32 [n, 96, 64]: the reference preprocessing (float64 as the numpy one)."""
        x = tf.cast(waveform, tf.float64)
        frames = tf.signal.frame(x, WINDOW, HOP, pad_end=False)  # [F, 400]
        n = tf.shape(frames)[0] // EXAMPLE_FRAMES
        frames = frames[:n * EXAMPLE_FRAMES]  # only frames of whole examples
        hann = tf.constant(0.5 - 0.5 * np.cos(2 * np.pi / WINDOW * np.arange(WINDOW)),
                           tf.float64)  # periodic Hann
        spectrum = tf.abs(tf.signal.rfft(frames * hann, fft_length=[FFT]))
        mel = tf.matmul(spectrum, tf.constant(mel_matrix(), tf.float64))
        log_mel = tf.math.log(mel + LOG_OFFSET)
        return tf.cast(tf.reshape(log_mel, [n, EXAMPLE_FRAMES, MEL_BANDS]), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, EXAMPLE_FRAMES, MEL_BANDS],
                                                tf.float32)])
    def embed_examples(self, examples: tf.Tensor) -> tf.Tensor:
        """float32 [n, 128] of log-mel examples [n, 96, 64], as ``vggish_slim``."""
        # no examples: skip the network (TF's CPU conv2d rejects an empty batch)
        return tf.cond(tf.shape(examples)[0] > 0, lambda: self._network(examples),
                       lambda: tf.zeros([0, EMBEDDING_SIZE], tf.float32))

    def _network(self, examples: tf.Tensor) -> tf.Tensor:
        x = tf.reshape(examples, [-1, EXAMPLE_FRAMES, MEL_BANDS, 1])  # NHWC
        for kernel, bias, pool in self.convs:
            x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias))
            if pool:
                x = tf.nn.max_pool2d(x, 2, 2, "SAME")
        x = tf.reshape(x, [-1, FLAT_FEATURES])  # NHWC order, as slim.flatten
        for i, (kernel, bias) in enumerate(self.dense):
            x = tf.matmul(x, kernel) + bias
            if i < len(self.dense) - 1:
                x = tf.nn.relu(x)
        return x

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, waveform: tf.Tensor) -> tf.Tensor:
        return self.embed_examples(self.log_mel_examples(waveform))


def build_module(state_dict: Mapping[str, object]) -> VggishModule:
    """A ``VggishModule`` holding the weights of a PyTorch-port state_dict."""
    return VggishModule(state_dict)


def export_saved_model(state_dict: Mapping[str, object], directory: str) -> None:
    """Writes a SavedModel with the TF-Hub VGGish interface (``hub.load(directory)(wave)``)
    to ``directory`` (local or any path TF writes, e.g. gs://)."""
    tf.saved_model.save(build_module(state_dict), directory)


def _import_hub():
    # tensorflow-hub 0.16 imports pkg_resources, which warns (deprecated; namespace packages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import tensorflow_hub as hub
    return hub


class HubVggish:
    """A VGGish SavedModel with the TF-Hub interface (a TF-Hub URL where there is internet,
    or a local or gs:// SavedModel folder), loaded once and applied to many recordings.
    The model fixes the example hop: non-overlapping 0.96 s examples only."""

    def __init__(self, handle: str, batch_examples: int = 64):
        if batch_examples < 1:
            raise ValueError(f"VGGish batch_examples must be positive, got {batch_examples}")
        self.handle = handle
        self.batch_examples = batch_examples
        hub = _import_hub()  # ImportError when tensorflow-hub is missing: not the handle's fault
        try:
            self.model = hub.load(handle)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:300]
            raise ValueError(f"VGGish TF-Hub model {handle}: cannot load it "
                             f"({type(exc).__name__}: {first})") from None
        if not callable(self.model):
            raise ValueError(f"VGGish TF-Hub model {handle}: not callable as "
                             f"model(waveform) (not a VGGish SavedModel)")

    def embed_waveform(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [n, 128] of a whole mono 16 kHz waveform, in one model call."""
        waveform = np.asarray(waveform, np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"expected mono audio [N], got shape {waveform.shape}")
        out = np.asarray(self.model(tf.constant(waveform)), np.float32)
        if out.ndim != 2 or out.shape[1] != EMBEDDING_SIZE:
            raise ValueError(f"VGGish TF-Hub model {self.handle}: returned shape {out.shape}, "
                             f"expected [n, {EMBEDDING_SIZE}]")
        return out

    def stream(self) -> HubVggishStream:
        """A stream for one recording: ``push(chunk)`` ..., then ``finish()``."""
        return HubVggishStream(self)

    def embed_audio(self, chunks: Iterable[np.ndarray]) -> np.ndarray:
        """float32 [n, 128] of mono 16 kHz float audio arriving in chunks of any size, with
        bounded memory (see ``HubVggishStream``); equals ``embed_waveform`` of the whole."""
        stream = self.stream()
        for chunk in chunks:
            stream.push(chunk)
        return stream.finish()


class HubVggishStream:
    """Mono 16 kHz float chunks in, ``finish()`` gives float32 [n, 128] ([0, 128] under
    0.96 s). The model sees segments of ``batch_examples`` whole examples (k*96 frames:
    (k*96-1)*160 + 400 samples) advancing by k*15360 samples as soon as the audio for them
    has arrived, so only embeddings and under one segment of audio are held."""

    def __init__(self, model: HubVggish):
        self._model = model
        self._step = model.batch_examples * EXAMPLE_SAMPLES
        self._segment = self._step + WINDOW - HOP
        self._pending: list[np.ndarray] = []
        self._size = 0
        self._out: list[np.ndarray] = []

    def push(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected mono audio chunks [N], got shape {chunk.shape}")
        self._pending.append(chunk)
        self._size += len(chunk)
        if self._size < self._segment:
            return
        buf = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        start = 0
        while len(buf) - start >= self._segment:
            self._out.append(self._model.embed_waveform(buf[start:start + self._segment]))
            start += self._step
        self._pending, self._size = [buf[start:]], len(buf) - start

    def finish(self) -> np.ndarray:
        if self._size >= EXAMPLE_SAMPLES + WINDOW - HOP:  # the rest holds whole examples
            self._out.append(self._model.embed_waveform(np.concatenate(self._pending)))
        self._pending, self._size = [], 0
        out, self._out = self._out, []
        return np.concatenate(out) if out else np.zeros((0, EMBEDDING_SIZE), np.float32)
