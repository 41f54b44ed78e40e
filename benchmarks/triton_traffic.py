"""Memory traffic of the hand-written Triton TV-L1 kernels (extractors/flow/tvl1_triton.py),
measured in Triton's interpreter: its load and store builders are wrapped so that every
element address a launch touches is recorded. Per launch, on a small frame:

- compulsory bytes per pixel: the distinct addresses loaded plus the distinct addresses
  stored, times their element size (what a GPU must move at least, each byte once);
- upper bound: every element load and store counted (no cache at all).

A GPU with enough cache moves close to the first; the second bounds the L1/L2 traffic of the
halo recompute (the inner kernel reads its neighbours' inputs again) and of the per-pair
error sums. Rows: one inner iteration (all pairs running, C = 2 and 3), a pair at the first
iteration after it stopped (copies its tile) and later (nothing but the error slot), the
median filter (3x3 and 5x5, C = 2).

Then the warping, which stays eager ATen ops on CUDA (``grid_sample`` and the linearisation
around it, once per warp; the centred gradients once per level): counted on meta tensors
with a dispatch mode, each op's inputs read once and its output written once (views free),
and its full-resolution-equivalent calls per pair for each preset (warps x the pyramid's
pixels over the frame's), the figures to add to a pair's bytes.

    python benchmarks/triton_traffic.py [--height 64] [--width 256] [--batch 1]

Under a minute on a CPU; no GPU needed.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from actprep.extractors.flow import tvl1_torch, tvl1_triton  # noqa: E402
from actprep.extractors.flow.params import preset  # noqa: E402


@dataclass
class Launch:
    """Addresses one kernel launch touched: element size -> addresses, loads and stores."""

    kernel: str
    loads: dict[int, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    stores: dict[int, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))

    def distinct_bytes(self, kind: str) -> int:
        """Bytes at distinct addresses (compulsory traffic)."""
        return sum(size * len(np.unique(np.concatenate(parts)))
                   for size, parts in getattr(self, kind).items())

    def all_bytes(self, kind: str) -> int:
        """Bytes of every access (no cache)."""
        return sum(size * sum(len(p) for p in parts) for size, parts in getattr(self, kind).items())


@contextmanager
def recording() -> Iterator[list[Launch]]:
    """Records the masked-in addresses of every load and store, per kernel launch."""
    builder = type(interpreter.interpreter_builder)
    executor = interpreter.GridExecutor
    real_load, real_store, real_call = (builder.create_masked_load, builder.create_masked_store,
                                        executor.__call__)
    launches: list[Launch] = []

    def record(kind: str, ptrs, mask) -> None:
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        addresses = np.broadcast_to(ptrs.data, mask.data.shape)[mask.data]
        getattr(launches[-1], kind)[size].append(addresses.ravel())

    def load(self, ptrs, mask, *args, **kwargs):
        record("loads", ptrs, mask)
        return real_load(self, ptrs, mask, *args, **kwargs)

    def store(self, ptrs, value, mask, *args, **kwargs):
        record("stores", ptrs, mask)
        return real_store(self, ptrs, value, mask, *args, **kwargs)

    def call(self, *args, **kwargs):
        launches.append(Launch(self.fn.__name__))
        return real_call(self, *args, **kwargs)

    builder.create_masked_load, builder.create_masked_store = load, store
    executor.__call__ = call
    try:
        yield launches
    finally:
        builder.create_masked_load, builder.create_masked_store = real_load, real_store
        executor.__call__ = real_call


def _inner_inputs(b: int, c: int, h: int, w: int) -> list[torch.Tensor]:
    """Random fields and terms of an inner iteration (what the kernels read)."""
    g = torch.Generator().manual_seed(0)
    u, px, py = (torch.randn(b, c, h, w, generator=g) for _ in range(3))
    gx, gy, rho_c = (torch.randn(b, h, w, generator=g) * 20 for _ in range(3))
    gvec = torch.stack([gx, gy] + [torch.full_like(gx, 0.1)] * (c - 2), 1)
    return [u, px, py, gvec, gx * gx + gy * gy, rho_c]


def inner_launches(b: int, c: int, h: int, w: int, eps: float) -> list[Launch]:
    """The launches of a 3-iteration chunk with threshold ``eps`` (0: every pair runs every
    iteration; huge: each pair stops after the first)."""
    scalars = [torch.tensor(v, dtype=torch.float32)
               for v in (eps, *tvl1_torch._step_constants(preset("opencv")))]
    with recording() as launches:
        tvl1_triton.inner_steps(*_inner_inputs(b, c, h, w), torch.ones(b, dtype=torch.bool),
                                torch.tensor(3), *scalars, steps=3)
    return [launch for launch in launches if launch.kernel == "_inner_kernel"]


def median_launch(b: int, h: int, w: int, size: int) -> Launch:
    u = torch.randn(b, 2, h, w, generator=torch.Generator().manual_seed(1))
    with recording() as launches:
        tvl1_triton.median(u, torch.ones(b, dtype=torch.bool), size)
    return launches[0]


def rows(b: int, h: int, w: int) -> list[tuple[str, Callable[[], Launch]]]:
    """(label, the launch to measure) per table row."""
    return [
        ("inner iteration, C=2", lambda: inner_launches(b, 2, h, w, 0.0)[1]),
        ("inner iteration, C=3", lambda: inner_launches(b, 3, h, w, 0.0)[1]),
        ("stopped pair, next iteration (copy), C=2",
         lambda: inner_launches(b, 2, h, w, 1e30)[1]),
        ("stopped pair, later iterations, C=2", lambda: inner_launches(b, 2, h, w, 1e30)[2]),
        ("median 3x3, C=2", lambda: median_launch(b, h, w, 3)),
        ("median 5x5, C=2", lambda: median_launch(b, h, w, 5)),
    ]


class _OpBytes(TorchDispatchMode):
    """Sums the bytes each ATen op reads (its tensor inputs) and writes (its outputs);
    views move nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            moved = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.ops += 1
            self.nbytes += sum(t.numel() * t.element_size() for t in moved)
        return out


def warp_bytes(h: int, w: int, c: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """((bytes/pixel, ops) of one eager warp, the same of one level's set-up) on the CUDA
    path, for flow channels ``c``."""
    meta = {"device": "meta", "dtype": torch.float32}
    i0, i1 = torch.empty(1, h, w, **meta), torch.empty(1, h, w, **meta)
    with _OpBytes() as level:
        i1x, i1y = tvl1_torch._centered_gradient(i1)
        i1_stack = torch.stack((i1, i1x, i1y), 1)
    with _OpBytes() as warp:
        tvl1_torch._warp_terms(i0, i1_stack, torch.empty(1, c, h, w, **meta), 0.1)
    return (warp.nbytes / (h * w), warp.ops), (level.nbytes / (h * w), level.ops)


def warps_per_pair(name: str, h: int = 256, w: int = 340) -> tuple[float, float]:
    """(warps, levels) per pair of preset ``name`` in full-resolution equivalents."""
    params = preset(name)
    levels = tvl1_torch._pyramid(torch.empty(1, h, w, device="meta"), params)
    area = sum(lv.shape[-2] * lv.shape[-1] for lv in levels) / (h * w)
    return params.warps * area, area


def print_warping(h: int, w: int) -> None:
    (per_warp, ops), (per_level, level_ops) = warp_bytes(h, w, 2)
    print(f"\neager warping on CUDA, bytes per pixel: a warp {per_warp:.1f} ({ops} ops), "
          f"a level's set-up {per_level:.1f} ({level_ops} ops)")
    print(f"{'preset':<10}{'warps/pair':>12}{'levels/pair':>13}{'bytes/pixel/pair':>18}")
    for name in ("opencv", "quality", "tsn"):
        warps, levels = warps_per_pair(name)
        print(f"{name:<10}{warps:>12.2f}{levels:>13.2f}"
              f"{warps * per_warp + levels * per_level:>18.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    pixels = args.batch * args.height * args.width
    print(f"bytes per pixel per launch, {args.batch} x {args.height}x{args.width}, tile "
          f"{tvl1_triton.DEFAULT_BLOCK[0]}x{tvl1_triton.DEFAULT_BLOCK[1]}")
    print(f"{'launch':<44}{'compulsory (read + write)':>28}{'no cache (read + write)':>28}")
    for label, measure in rows(args.batch, args.height, args.width):
        launch = measure()
        need = [launch.distinct_bytes(kind) / pixels for kind in ("loads", "stores")]
        every = [launch.all_bytes(kind) / pixels for kind in ("loads", "stores")]
        print(f"{label:<44}{sum(need):>10.1f} ({need[0]:.1f} + {need[1]:.1f}){'':>5}"
              f"{sum(every):>10.1f} ({every[0]:.1f} + {every[1]:.1f})")
    print_warping(args.height, args.width)


if __name__ == "__main__":
    main()
