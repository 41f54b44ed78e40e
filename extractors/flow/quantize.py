"""TSN-style flow quantization: one component to one 8-bit grayscale image.

``q = round((clip(f, -b, b) + b) * 255 / (2 b))`` and back ``f' = q * 2 b / 255 - b``, with
``b`` the bound (default 20 px). Rounding is to nearest (ties to even), as the C++ extractor
that made the TSN flows does (dense_flow ``cvRound``); mmaction2's Python
``flow_extraction.py`` truncates instead, which biases every value down by half a step. With
rounding the error within the bound is at most ``b / 255`` (0.078 px at b = 20).
"""
from __future__ import annotations

import numpy as np

from actprep.schemas.sample import dequantize_flow

DEFAULT_BOUND = 20.0


def _check(bound: float) -> float:
    if not bound > 0:
        raise ValueError(f"flow bound must be positive, got {bound}")
    return float(bound)


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Any-shaped float flow values to uint8, clipped to +-bound."""
    b = _check(bound)
    scaled = (np.clip(np.asarray(flow, np.float64), -b, b) + b) * (255.0 / (2.0 * b))
    return np.rint(scaled).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 values back to float32 flow in pixels (the readers' formula, in schemas)."""
    return dequantize_flow(q, _check(bound))
