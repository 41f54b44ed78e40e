"""TV-L1 parameters and the named presets.

Names and defaults follow OpenCV's ``DualTVL1OpticalFlow`` (tvl1flow.cpp); ``pyramid`` says how
coarser levels are made: ``"resize"`` (OpenCV CPU: plain bilinear resize by ``scale_step``) or
``"gaussian"`` (OpenCV 2.4 GPU, the flows of the TSN era: Gaussian ``pyrDown``, factor 0.5).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class TVL1Params:
    tau: float = 0.25  # time step of the numerical scheme
    lambda_: float = 0.15  # weight of the data term (smaller: smoother flow)
    theta: float = 0.3  # tightness of the coupling between u and v
    nscales: int = 5  # pyramid levels
    scale_step: float = 0.8  # size ratio between neighbouring levels
    warps: int = 5  # warpings per level
    epsilon: float = 0.01  # stopping threshold (on the mean squared update)
    inner_iterations: int = 30
    outer_iterations: int = 10
    gamma: float = 0.0  # weight of the illumination-variation term (0: off)
    median_filtering: int = 5  # median filter size applied to the flow (1: off)
    pyramid: str = "resize"  # "resize" or "gaussian"

    def __post_init__(self) -> None:
        if self.pyramid not in ("resize", "gaussian"):
            raise ValueError(f"pyramid must be 'resize' or 'gaussian', got {self.pyramid!r}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")
        if min(self.nscales, self.warps, self.inner_iterations, self.outer_iterations) < 1:
            raise ValueError("nscales, warps and iteration counts must be at least 1")
        if self.median_filtering < 1 or self.median_filtering % 2 == 0:
            raise ValueError(f"median_filtering must be an odd size >= 1, got "
                             f"{self.median_filtering}")
        if self.tau <= 0 or self.lambda_ <= 0 or self.theta <= 0 or self.epsilon <= 0:
            raise ValueError("tau, lambda, theta and epsilon must be positive")

    def as_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "TVL1Params":
        return replace(self, **changes)


PRESETS: dict[str, TVL1Params] = {
    # OpenCV 4/5 DualTVL1OpticalFlow defaults.
    "opencv": TVL1Params(),
    # OpenCV 2.4 GPU behaviour (Gaussian pyramid, factor 0.5, 300 iterations, no median):
    # Middlebury mean EPE 0.372 (torch backend only: OpenCV's CPU class has no such pyramid)
    "tsn": TVL1Params(scale_step=0.5, pyramid="gaussian", inner_iterations=300,
                      outer_iterations=1, median_filtering=1),
    # Middlebury full-size mean EPE 0.366 (torch, CPU; benchmarks/flow_accuracy.py) vs the
    # IPOL reference's 0.375; with lambda 0.15, 5 warps, median 5 it was 0.380. Plain resize
    # pyramid, so OpenCV's CPU class can run it too.
    "quality": TVL1Params(scale_step=0.5, nscales=6, lambda_=0.2, warps=10, median_filtering=3),
}
DEFAULT_PRESET = "quality"


def preset(name: str) -> TVL1Params:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown flow preset {name!r}; choose from {', '.join(PRESETS)}") from None
