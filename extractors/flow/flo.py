"""Middlebury ``.flo`` files and the Middlebury colour-code visualisation of a flow field.

``.flo``: little-endian float32 tag 202021.25 ("PIEH"), int32 width, int32 height, then
height*width*2 float32 (u, v interleaved, row-major). Components above 1e9 mark unknown flow.
The colour code is Baker et al.'s (IJCV 2011): hue is the direction on a 55-colour wheel,
saturation the magnitude normalised by the largest known magnitude (zero flow is white).
``with_legend`` draws the key beside a picture: the colour wheel, coded and normalised as
the picture is (a pixel moving by (dx, dy) has the colour of the wheel at offset (dx, dy)
from its centre; the rim is the largest magnitude, printed under it).
"""
from __future__ import annotations

import numpy as np

FLO_TAG = 202021.25
UNKNOWN_THRESHOLD = 1e9
_MAX_SIDE = 1 << 16  # a sanity limit against reading a wrong file as a huge array
# segments of the wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red
_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)


def write_flo(path: str, flow: np.ndarray) -> None:
    """Writes float [H, W, 2] flow as a Middlebury ``.flo`` file."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected flow [H, W, 2], got {flow.shape}")
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        f.write(np.array([FLO_TAG], "<f4").tobytes())
        f.write(np.array([w, h], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow, "<f4").tobytes())


def read_flo(path: str) -> np.ndarray:
    """Reads a ``.flo`` file as float32 [H, W, 2] (unknown values kept; see ``known``)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or np.frombuffer(data, "<f4", 1)[0] != np.float32(FLO_TAG):
        raise ValueError(f"{path}: not a Middlebury .flo file (bad tag)")
    w, h = (int(v) for v in np.frombuffer(data, "<i4", 2, offset=4))
    if not (0 < w < _MAX_SIDE and 0 < h < _MAX_SIDE):
        raise ValueError(f"{path}: implausible size {w}x{h}")
    if len(data) != 12 + 8 * w * h:
        raise ValueError(f"{path}: {len(data)} bytes, expected {12 + 8 * w * h} for {w}x{h}")
    return np.frombuffer(data, "<f4", 2 * w * h, offset=12).reshape(h, w, 2).astype(np.float32)


def known(flow: np.ndarray) -> np.ndarray:
    """Boolean [H, W]: where both components are known (finite and not above 1e9)."""
    flow = np.asarray(flow)
    return np.all(np.isfinite(flow) & (np.abs(flow) <= UNKNOWN_THRESHOLD), axis=-1)


def color_wheel() -> np.ndarray:
    """The 55 wheel colours as float [55, 3] RGB in 0..255, starting at red."""
    stops = np.array([[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255],
                      [255, 0, 255], [255, 0, 0]], np.float64)
    rows = []
    for i, n in enumerate(_WHEEL_SEGMENTS):
        step = np.floor(255 * np.arange(n) / n)[:, None]  # integer ramps, as the reference
        direction = np.sign(stops[i + 1] - stops[i])
        rows.append(stops[i] + direction * step)
    return np.concatenate(rows)


def max_magnitude_of(flow: np.ndarray) -> float:
    """The largest magnitude of the known pixels of ``flow`` (0 when none): what
    ``flow_to_color`` divides magnitudes by unless told otherwise."""
    flow = np.asarray(flow, np.float64)
    ok = known(flow)
    radius = np.hypot(np.where(ok, flow[..., 0], 0.0), np.where(ok, flow[..., 1], 0.0))
    return float(radius.max()) if radius.size else 0.0


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] visualisation of float [H, W, 2] flow. Magnitudes are divided by
    ``max_magnitude`` (default: the largest known one, ``max_magnitude_of``); unknown
    pixels are black."""
    flow = np.asarray(flow, np.float64)
    ok = known(flow)
    u = np.where(ok, flow[..., 0], 0.0)
    v = np.where(ok, flow[..., 1], 0.0)
    radius = np.hypot(u, v)
    scale = max_magnitude if max_magnitude is not None else max_magnitude_of(flow)
    if scale > 0:
        u, v, radius = u / scale, v / scale, radius / scale
    wheel = color_wheel() / 255.0
    ncols = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # -1..1; +x flow lands on 0 (red)
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int) % ncols
    k1 = (k0 + 1) % ncols
    f = (fk - np.floor(fk))[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]
    r = radius[..., None]
    col = np.where(r <= 1, 1 - r * (1 - col), col * 0.75)  # desaturate small motions
    image = np.rint(255 * col).astype(np.uint8)
    image[~ok] = 0
    return image


LEGEND_MARGIN = 12  # px around the wheel in the legend panel
_LEGEND_TEXT = 44  # px under the wheel for its caption (two lines)


def legend_wheel(radius: int, max_magnitude: float) -> np.ndarray:
    """The key of ``flow_to_color(flow, max_magnitude)``: RGB uint8 [2r+1, 2r+1, 3] whose
    pixel at offset (dx, dy) from the centre has the colour of a flow of (dx, dy) *
    max_magnitude / r, so the rim is ``max_magnitude`` and the centre (no motion) white;
    outside the rim is white. A ``max_magnitude`` of 0 (no motion) draws the wheel of 1 px."""
    scale = max_magnitude if max_magnitude > 0 else 1.0
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    dx, dy = np.meshgrid(offsets, offsets)
    flow = np.stack([dx, dy], axis=-1) * (scale / max(radius, 1))
    wheel = flow_to_color(flow, scale)
    wheel[np.hypot(dx, dy) > radius] = 255
    return wheel


def legend_placement(height: int, width: int) -> tuple[int, int, int]:
    """Where ``with_legend`` draws the wheel for a picture of ``height`` x ``width``: its
    centre (x, y) in the combined image and its radius."""
    radius = int(np.clip(0.3 * height, 48, 128))
    return width + LEGEND_MARGIN + radius, LEGEND_MARGIN + radius, radius


def with_legend(image: np.ndarray, max_magnitude: float) -> np.ndarray:
    """``image`` (a ``flow_to_color`` picture normalised by ``max_magnitude``) with the key
    to its right: ``legend_wheel`` on white, captioned with the rim's magnitude in px.
    The picture's own pixels are unchanged, at the top left."""
    import cv2

    h, w = image.shape[:2]
    cx, cy, radius = legend_placement(h, w)
    side = 2 * radius + 1
    caption = ("rim: max |flow|", f"{max_magnitude:.3g} px" if max_magnitude > 0 else
               "0 px (no motion)")
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_w = max(cv2.getTextSize(text, font, 0.4, 1)[0][0] for text in caption)
    panel_w = max(side + 2 * LEGEND_MARGIN, text_w + LEGEND_MARGIN)
    out = np.full((max(h, side + 2 * LEGEND_MARGIN + _LEGEND_TEXT), w + panel_w, 3), 255,
                  np.uint8)
    out[:h, :w] = image
    out[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1] = legend_wheel(
        radius, max_magnitude)
    for i, text in enumerate(caption):
        cv2.putText(out, text, (w + LEGEND_MARGIN // 2, cy + radius + 18 + 16 * i),
                    font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_color_png(path: str, flow: np.ndarray, legend: bool = False) -> None:
    """Writes the colour visualisation of ``flow`` as a PNG (or any format cv2 writes);
    ``legend``: with the colour-wheel key to its right (``with_legend``)."""
    import cv2

    image = flow_to_color(flow)
    if legend:
        image = with_legend(image, max_magnitude_of(flow))
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
