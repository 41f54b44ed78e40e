"""The colour-wheel legend of ``actprep flow --viz PNG --legend``: the key is coded and
normalised as the picture it explains, on real flow computed by the flow command."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from actprep.commands.flowcli import FlowCliError, flow_images
from actprep.extractors.flow.flo import (flow_to_color, legend_placement, legend_wheel,
                                         max_magnitude_of, read_flo)

# (dx, dy) offsets from the wheel's centre, in image coordinates (y down): right, down-right,
# down, down-left, left, up-left, up, up-right, and two directions between the axes
DIRECTIONS = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1),
              (2, 1), (-1, -3)]


def _coded(vectors: list[tuple[float, float]], max_magnitude: float) -> np.ndarray:
    """The visualisation's colours of flows ``vectors``, in a picture whose largest
    magnitude is ``max_magnitude`` (its default normalisation), as uint8 [N, 3]."""
    flow = np.array([[(max_magnitude, 0.0)] + list(vectors)], np.float32)
    return flow_to_color(flow)[0, 1:]


@pytest.mark.parametrize("max_magnitude", [0.37, 1.0, 12.5])
@pytest.mark.parametrize("radius", [48, 75])
def test_legend_pixels_are_the_colours_of_flows_pointing_that_way(max_magnitude, radius):
    wheel = legend_wheel(radius, max_magnitude)
    assert wheel.shape == (2 * radius + 1, 2 * radius + 1, 3) and wheel.dtype == np.uint8
    for dx, dy in DIRECTIONS:
        steps = radius // max(abs(dx), abs(dy))
        for k in sorted({1, steps // 3, steps // 2, steps}):  # centre to rim
            ox, oy = dx * k, dy * k
            if math.hypot(ox, oy) > radius:
                continue
            pixel = wheel[radius + oy, radius + ox].astype(int)
            flow = (ox * max_magnitude / radius, oy * max_magnitude / radius)
            expected = _coded([flow], max_magnitude)[0].astype(int)
            assert np.abs(pixel - expected).max() <= 1, (dx, dy, k, pixel, expected)
    assert wheel[radius, radius].tolist() == [255, 255, 255]  # no motion: white
    assert wheel[0, 0].tolist() == [255, 255, 255]  # outside the rim: background


def test_legend_hues_at_known_angles():
    """The Middlebury wheel: rightward motion red, the hue turning with the angle, the rim
    fully saturated (one channel near 0), half way half saturated."""
    radius, wheel = 60, legend_wheel(60, 2.0)
    right = wheel[60, 60 + radius].astype(int)
    assert right[0] >= 250 and right[1] <= 10 and right[2] <= 60
    near = 0.97 * radius  # pixels just inside the rim
    rim = [wheel[60 + round(near * math.sin(a)), 60 + round(near * math.cos(a))]
           for a in np.radians(np.arange(0, 360, 30))]
    assert len({tuple(c) for c in rim}) == 12  # each direction its own colour
    assert all(min(c) <= 20 and max(c) >= 240 for c in rim)
    half = wheel[60, 60 + radius // 2].astype(int)
    assert 110 <= half.min() <= 145 and half.max() >= 250  # white mixed half way


def _pair(height: int = 96, width: int = 128, shift=(2, 1)):
    """A blurred noise texture and the same moved by ``shift`` px (content moves right and
    down): a real image pair with a known, uniform flow."""
    rng = np.random.default_rng(7)
    big = cv2.GaussianBlur((rng.random((height + 20, width + 20)) * 255).astype(np.uint8),
                           (0, 0), 2.0)
    dx, dy = shift
    first = big[10:10 + height, 10:10 + width]
    second = big[10 - dy:10 - dy + height, 10 - dx:10 - dx + width]
    return first, second


def test_flow_command_draws_the_legend_of_its_picture(tmp_path):
    first, second = _pair()
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    cv2.imwrite(a, first)
    cv2.imwrite(b, second)
    png, bare = str(tmp_path / "viz.png"), str(tmp_path / "bare.png")
    flow_images(a, b, str(tmp_path / "f.flo"), backend="opencv", preset_name="opencv",
                viz=png, legend=True)
    flow_images(a, b, str(tmp_path / "g.flo"), backend="opencv", preset_name="opencv",
                viz=bare)
    flow = read_flo(str(tmp_path / "f.flo"))
    h, w = flow.shape[:2]
    image = cv2.cvtColor(cv2.imread(png), cv2.COLOR_BGR2RGB)
    plain = cv2.cvtColor(cv2.imread(bare), cv2.COLOR_BGR2RGB)
    # the picture itself is unchanged at the top left; without --legend it is all there is
    assert plain.shape == (h, w, 3)
    assert np.array_equal(image[:h, :w], plain)
    assert np.array_equal(plain, flow_to_color(flow))
    # the key, normalised by the picture's largest magnitude, beside it
    top = max_magnitude_of(flow)
    cx, cy, radius = legend_placement(h, w)
    assert image.shape[1] > cx + radius and image.shape[0] > cy + radius
    assert np.array_equal(image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1],
                          legend_wheel(radius, top))
    # read the picture with the key: where the wheel has the colour of the typical pixel,
    # the offset from the centre is the motion (+2, +1), scaled by radius / the largest
    u, v = np.median(flow[..., 0]), np.median(flow[..., 1])
    assert (u, v) == pytest.approx((2, 1), abs=0.25)
    typical = np.median(plain.reshape(-1, 3), axis=0)
    ox, oy = round(u / top * radius), round(v / top * radius)
    assert np.abs(image[cy + oy, cx + ox].astype(int) - typical).max() <= 12
    wheel = legend_wheel(radius, top).reshape(-1, 3).astype(int)
    nearest = np.argmin(np.abs(wheel - typical).sum(axis=1))
    ny, nx = divmod(int(nearest), 2 * radius + 1)
    found = np.array([nx - radius, ny - radius]) * top / radius
    assert found == pytest.approx((u, v), abs=0.3)


def test_legend_needs_the_picture(tmp_path):
    first, second = _pair(32, 32)
    cv2.imwrite(str(tmp_path / "a.png"), first)
    cv2.imwrite(str(tmp_path / "b.png"), second)
    with pytest.raises(FlowCliError, match="--legend .* --viz"):
        flow_images(str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "f.flo"),
                    backend="opencv", legend=True)


def test_flow_command_draws_the_legend(tmp_path, run_cli):
    """``actprep flow --viz PNG --legend`` through the real CLI: the picture is wider than
    the flow by the wheel."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 80), dtype=np.uint8), (5, 5), 1.5)
    cv2.imwrite(str(tmp_path / "a.png"), texture)
    cv2.imwrite(str(tmp_path / "b.png"), np.roll(texture, (1, 2), axis=(0, 1)))
    png = tmp_path / "viz.png"
    assert run_cli(["flow", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "f.flo",
                    "--backend", "opencv", "--viz", png, "--legend"]) == 0
    picture = cv2.imread(str(png))
    assert picture.shape[0] >= 64 and picture.shape[1] > 80
