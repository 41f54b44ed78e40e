"""RGB frames as JPEG bytes."""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_JPEG_QUALITY = 90


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """JPEG of one uint8 RGB frame [H, W, 3]; libjpeg is deterministic, so equal frames
    give equal bytes."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)  # a strided view would make imencode copy slowly
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def encode_gray_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Single-channel JPEG of a uint8 [H, W] image (quantized flow components)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected uint8 [H, W], got {image.dtype} {image.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()
