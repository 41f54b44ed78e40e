"""TV-L1 flow on the CPU with OpenCV's ``cv2.optflow.DualTVL1OpticalFlow`` (opencv-contrib).

The OpenCV object is built once per parameter set and per thread: building it is cheap but not
free, and one instance must not be used by two threads at once (it keeps its work buffers).
"""
from __future__ import annotations

import threading

import numpy as np

from actprep.extractors.flow.params import TVL1Params

_local = threading.local()


def check_supported(params: TVL1Params) -> None:
    """Raises ValueError for parameters OpenCV's CPU class cannot honour."""
    if params.pyramid != "resize":
        raise ValueError(
            f"OpenCV's CPU TV-L1 builds its pyramid by plain resizing; pyramid="
            f"{params.pyramid!r} (e.g. the 'tsn' preset) is not supported there: use the "
            f"torch backend for that preset")


def create_tvl1(params: TVL1Params):
    """A new ``DualTVL1OpticalFlow`` configured with ``params`` (never initial flow)."""
    import cv2

    check_supported(params)
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=params.tau, lambda_=params.lambda_, theta=params.theta, nscales=params.nscales,
        warps=params.warps, epsilon=params.epsilon,
        innnerIterations=params.inner_iterations,  # sic: the binding's spelling
        outerIterations=params.outer_iterations, scaleStep=params.scale_step,
        gamma=params.gamma, medianFiltering=params.median_filtering, useInitialFlow=False)


def _instance(params: TVL1Params):
    """This thread's cached OpenCV object for ``params``."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    if params not in cache:
        cache[params] = create_tvl1(params)
    return cache[params]


def _gray(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"{name}: expected uint8 gray [H, W], got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def opencv_flow(prev: np.ndarray, nxt: np.ndarray, params: TVL1Params) -> np.ndarray:
    """Flow from ``prev`` to ``nxt`` (uint8 gray [H, W]) as float32 [H, W, 2] (u, v in
    pixels: prev(x, y) ~ nxt(x + u, y + v))."""
    prev, nxt = _gray(prev, "prev"), _gray(nxt, "nxt")
    if prev.shape != nxt.shape:
        raise ValueError(f"frames differ in size: {prev.shape} and {nxt.shape}")
    flow = _instance(params).calc(prev, nxt, None)
    return np.asarray(flow, dtype=np.float32)
