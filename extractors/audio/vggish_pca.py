"""VGGish postprocessing as the reference ``vggish_postprocess``: PCA with the released
eigenvectors and means, clip to [-2, 2], 8-bit quantization by truncation. The result is the
uint8 format of the AudioSet and YouTube-8M releases."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from actprep.extractors.audio.vggish_input import EMBEDDING_SIZE

EIGEN_VECTORS = "pca_eigen_vectors"
MEANS = "pca_means"
QUANT_MIN, QUANT_MAX = -2.0, 2.0


@dataclass(frozen=True)
class PcaParams:
    eigen_vectors: np.ndarray  # float32 [128, 128], rows are components
    means: np.ndarray          # float32 [128]

    @classmethod
    def from_arrays(cls, eigen_vectors, means, source: str) -> PcaParams:
        vectors = np.asarray(eigen_vectors, np.float32)
        means = np.asarray(means, np.float32)
        if vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.size != EMBEDDING_SIZE:
            raise ValueError(f"VGGish PCA {source}: expected {EIGEN_VECTORS} [128, 128] and "
                             f"{MEANS} [128] (or [128, 1]), got {vectors.shape} and "
                             f"{means.shape}")
        return cls(vectors, means.reshape(EMBEDDING_SIZE))


def postprocess(embeddings: np.ndarray, pca: PcaParams) -> np.ndarray:
    """uint8 [n, 128] from float [n, 128] raw embeddings (float32 math, as the reference)."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or emb.shape[1] != EMBEDDING_SIZE:
        raise ValueError(f"expected embeddings [n, {EMBEDDING_SIZE}], got {emb.shape}")
    projected = (pca.eigen_vectors @ (emb.T - pca.means[:, None])).T
    clipped = np.clip(projected, QUANT_MIN, QUANT_MAX)
    return ((clipped - QUANT_MIN) * (255.0 / (QUANT_MAX - QUANT_MIN))).astype(np.uint8)


def _numpy_globals() -> list:
    """What torch's weights-only unpickler needs for numpy arrays (the port's .pth)."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    names += [getattr(np.dtypes, n) for n in ("Float32DType", "Float64DType")
              if hasattr(np, "dtypes")]
    return names


def load_pca(data: bytes, source: str) -> PcaParams:
    """PCA parameters from the official ``vggish_pca_params.npz`` or the PyTorch port's
    ``.pth`` (a dict with the same two names, tensors or numpy arrays)."""
    arrays = None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if EIGEN_VECTORS in npz.files and MEANS in npz.files:
                arrays = npz[EIGEN_VECTORS], npz[MEANS]
    except (ValueError, OSError, EOFError, AttributeError):
        pass  # not an .npz: try a torch file
    if arrays is not None:
        return PcaParams.from_arrays(*arrays, source=source)
    try:
        import torch
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        raise ValueError(f"VGGish PCA {source}: neither an .npz nor a PyTorch file holding "
                         f"{EIGEN_VECTORS} and {MEANS}") from None
    if not isinstance(state, dict) or EIGEN_VECTORS not in state or MEANS not in state:
        found = ", ".join(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"VGGish PCA {source}: expected {EIGEN_VECTORS} and {MEANS}, "
                         f"found {found}")
    return PcaParams.from_arrays(*(np.asarray(state[k]) for k in (EIGEN_VECTORS, MEANS)),
                                 source=source)
