"""``actprep flow A B -o OUT``: TV-L1 flow between two image files, for checking settings.
``--viz PNG`` writes the Middlebury colour coding (extractors/flow/flo.py); with
``--legend`` the colour wheel, coded and normalised the same way, is drawn to its right."""
from __future__ import annotations

import os

import numpy as np

from actprep.extractors.flow.engine import FlowEngine, to_gray
from actprep.extractors.flow.flo import write_color_png, write_flo
from actprep.extractors.flow.params import preset

FLOW_EXTENSIONS = (".flo", ".npy")


class FlowCliError(Exception):
    """A user error: unreadable input, mismatched sizes, unsupported output name."""


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of any image OpenCV reads (gray and alpha handled)."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FlowCliError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_flow_file(path: str, flow: np.ndarray) -> None:
    """``.flo`` or ``.npy`` (float32 [H, W, 2]) by the extension of ``path``."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".flo":
        write_flo(path, flow)
    elif ext == ".npy":
        np.save(path, np.asarray(flow, np.float32), allow_pickle=False)
    else:
        raise FlowCliError(f"{path}: output must end in {' or '.join(FLOW_EXTENSIONS)}")


def flow_images(first: str, second: str, output: str, *, backend: str = "auto",
                device: str = "auto", preset_name: str = "quality",
                viz: str | None = None, legend: bool = False) -> str:
    """Computes the flow from ``first`` to ``second``, writes it (and the colour PNG, with
    the colour-wheel key to its right when ``legend``) and returns a one-line report:
    backend, device, mean and max magnitude."""
    if os.path.splitext(output)[1].lower() not in FLOW_EXTENSIONS:  # fail before computing
        raise FlowCliError(f"{output}: output must end in {' or '.join(FLOW_EXTENSIONS)}")
    if legend and not viz:
        raise FlowCliError("--legend draws the key of the --viz picture: give --viz PNG")
    a, b = read_rgb(first), read_rgb(second)
    if a.shape != b.shape:
        raise FlowCliError(f"images differ in size: {first} is {a.shape[1]}x{a.shape[0]}, "
                           f"{second} is {b.shape[1]}x{b.shape[0]}")
    try:
        engine = FlowEngine(backend, device, preset(preset_name), batch_size=1)
    except (ValueError, ImportError) as exc:
        raise FlowCliError(str(exc)) from None
    flow = engine.pair_flow(to_gray(a), to_gray(b))
    write_flow_file(output, flow)
    if viz:
        write_color_png(viz, flow, legend=legend)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    return (f"{output}: {flow.shape[1]}x{flow.shape[0]} flow, backend {engine.backend} "
            f"({engine.device}), preset {preset_name}; magnitude mean "
            f"{magnitude.mean():.3f} px, max {magnitude.max():.3f} px")
