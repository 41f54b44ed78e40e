"""Batched TV-L1 optical flow in PyTorch (CPU or CUDA), after OpenCV's CPU ``DualTVL1``.

``tvl1_flow(prev, nxt, params)`` takes float gray batches [B, H, W] (values 0..255) and returns
flows [B, 2, H, W] (u: x displacement, v: y displacement, in pixels) with
prev(x, y) ~ nxt(x + u, y + v), the convention of ``DualTVL1OpticalFlow.calc(prev, next)``.

The scheme follows opencv_contrib ``modules/optflow/src/tvl1flow.cpp`` (Zach, Pock, Bischof
duality-based TV-L1 with Wedel et al.'s median filtering):

- pyramid: bilinear ``resize`` by ``scale_step`` per level (``pyramid="resize"``), or a 5-tap
  Gaussian (pyrDown kernel) blur before each resize (``pyramid="gaussian"``); levels narrower
  or shorter than 16 px are dropped; coarse to fine, the flow is resized bilinearly to the
  finer level and divided by ``scale_step``;
- per level the dual variables are reset; per warp I1 and its centred gradients are warped
  bicubically (constant-0 border), then up to ``outer_iterations`` x ``inner_iterations``
  iterations (median filter of the flow at the start of each outer iteration), stopping when the
  sum of squared updates falls to ``epsilon**2 * H * W`` or below (checked per pair: a pair that
  has stopped is frozen by masks while the rest of the batch goes on, so a batch gives the same
  flows as each pair alone);
- ``gamma != 0`` adds OpenCV's illumination-variation variable ``u3``.

Everything is [B, ...] tensors; there is no per-pair Python loop but OpenCV's calls on the
CPU.

``compiled=True`` runs the inner iterations (per-pair stopping inside) as ``torch.compile``
kernels: on the CPU, C++ kernels in a loop graph (``torch.while_loop``, one call per outer
iteration); on CUDA, Triton kernels of ``inner_unroll`` iterations per call, optionally
replayed as CUDA graphs. Height and width are symbolic, so that one graph serves every
level, frame size and preset. The median filter is OpenCV's ``medianBlur`` on the CPU and a
compiled min/max selection network on CUDA; warping is OpenCV's bicubic ``remap`` on the
CPU (both paths) and ``grid_sample`` elsewhere; the pyramid stays eager.
``kernels="triton"`` runs hand-written Triton kernels (``tvl1_triton``: one launch per inner
iteration, one per median filter) instead, what the engine uses on CUDA.
The eager path (``compiled=False``) is the reference. The Inductor cache lives in
``TORCHINDUCTOR_CACHE_DIR`` (default ``~/.cache/actprep/inductor``) so later processes reuse
the compiled kernels.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from actprep.extractors.flow.params import TVL1Params
from actprep.extractors.torch_device import has_triton

MIN_LEVEL_SIZE = 16  # OpenCV stops adding pyramid levels below 16 px (either side)
_FLT_EPSILON = 1.1920928955078125e-07  # numeric_limits<float>::epsilon()
_PYRDOWN_TAPS = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
DEFAULT_INNER_UNROLL = 5  # inner iterations per compiled call
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "actprep", "inductor")


# ---------------------------------------------------------------------------------------------
# input checks


def _check_inputs(prev: torch.Tensor, nxt: torch.Tensor) -> None:
    """Raise ValueError unless prev and nxt are matching [B, H, W] real tensors on one device."""
    for name, t in (("prev", prev), ("nxt", nxt)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 3:
            raise ValueError(f"{name} must be a [B, H, W] gray batch, got shape {tuple(t.shape)}")
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got {t.dtype}")
    if prev.shape != nxt.shape:
        raise ValueError(f"prev and nxt shapes differ: {tuple(prev.shape)} vs {tuple(nxt.shape)}")
    if prev.device != nxt.device:
        raise ValueError(f"prev and nxt are on different devices: {prev.device} vs {nxt.device}")
    b, h, w = prev.shape
    if b < 1 or h < 3 or w < 3:
        raise ValueError(f"need at least one pair of at least 3x3 pixels, got {tuple(prev.shape)}")


# ---------------------------------------------------------------------------------------------
# resizing and pyramids


def _linear_taps(src: int, dst: int, scale: float, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices i0, i1 and weight f of OpenCV INTER_LINEAR along one axis.

    ``scale`` is the source step per destination pixel; source coordinates are
    (d + 0.5) * scale - 0.5, clamped to the image (replicated border)."""
    d = torch.arange(dst, dtype=torch.float64)  # on the host: float64 is not everywhere
    s = ((d + 0.5) * scale - 0.5).clamp(0.0, src - 1.0)
    i0 = s.floor().long()
    f = (s - i0).float()
    i1 = (i0 + 1).clamp(max=src - 1)
    return i0.to(device), i1.to(device), f.to(device)


def _resize_linear(x: torch.Tensor, size: tuple[int, int],
                   scale: tuple[float, float] | None = None) -> torch.Tensor:
    """Bilinear resize of [..., H, W] to ``size`` as OpenCV ``resize(INTER_LINEAR)`` does.

    ``scale`` (sy, sx) is the source step per output pixel; default: input/output size ratio
    (OpenCV with an explicit dsize). With fx/fy OpenCV uses 1/fx, 1/fy instead."""
    h, w = x.shape[-2:]
    oh, ow = size
    sy, sx = scale if scale is not None else (h / oh, w / ow)
    y0, y1, fy = _linear_taps(h, oh, sy, x.device)
    x0, x1, fx = _linear_taps(w, ow, sx, x.device)
    rows = x.index_select(-2, y0) * (1 - fy)[:, None] + x.index_select(-2, y1) * fy[:, None]
    return rows.index_select(-1, x0) * (1 - fx) + rows.index_select(-1, x1) * fx


def _scaled_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """OpenCV's output size for ``resize(src, Size(), factor, factor)`` (round half to even)."""
    return int(round(h * factor)), int(round(w * factor))


def _gaussian_blur5(x: torch.Tensor) -> torch.Tensor:
    """pyrDown's 5-tap [1 4 6 4 1]/16 separable blur of [B, H, W] (reflect-101 border)."""
    k = torch.tensor(_PYRDOWN_TAPS, dtype=x.dtype, device=x.device)
    y = x[:, None]
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode=mode), k.view(1, 1, 1, 5))
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode=mode), k.view(1, 1, 5, 1))
    return y[:, 0]


def _pyramid(img: torch.Tensor, params: TVL1Params) -> list[torch.Tensor]:
    """Levels [finest, ..., coarsest] of a [B, H, W] batch, as OpenCV builds them."""
    levels = [img]
    for _ in range(1, params.nscales):
        src = levels[-1]
        h, w = _scaled_size(src.shape[-2], src.shape[-1], params.scale_step)
        if h < MIN_LEVEL_SIZE or w < MIN_LEVEL_SIZE:
            break
        if params.pyramid == "gaussian":
            src = _gaussian_blur5(src)
        step = 1.0 / params.scale_step
        levels.append(_resize_linear(src, (h, w), (step, step)))
    return levels


# ---------------------------------------------------------------------------------------------
# finite differences


def _centered_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred differences of [B, H, W]; one-sided halves at the borders (OpenCV's)."""
    p = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
    dy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
    return dx, dy


# The stencils' borders: the divergence has no predecessor on the first row and column, the
# forward gradient no successor on the last. They are computed as the border and the rest and
# joined with torch.cat, not with F.pad: Inductor's C++ kernels make a pad a masked load in
# every vector of the loop, and a cat a plain write of each piece into the result.
_FIRST, _AFTER_FIRST = slice(0, 1), slice(1, None)
_BEFORE_LAST, _LAST = slice(None, -1), slice(-1, None)


def _forward_diff_rows(u: torch.Tensor) -> torch.Tensor:
    """u[y + 1] - u[y] along the rows of [..., H, W]; zero on the last row."""
    return torch.cat((u[..., 1:, :] - u[..., :-1, :], torch.zeros_like(u[..., -1:, :])), -2)


def _backward_diff_rows(p: torch.Tensor) -> torch.Tensor:
    """p[y] - p[y - 1] along the rows of [..., H, W], with p[-1] = 0 (the first row is p's)."""
    return torch.cat((p[..., :1, :], p[..., 1:, :] - p[..., :-1, :]), -2)


def _kept(run: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """new, or with ``run`` [B] new for the pairs where it is set and old elsewhere."""
    return new if run is None else _where_active(run, new, old)


# ---------------------------------------------------------------------------------------------
# warping and median filtering


def _warp_bicubic(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img [B, C, H, W] sampled at (x + u, y + v): bicubic (a=-0.75), zero outside, as
    OpenCV 5's ``remap(INTER_CUBIC, BORDER_CONSTANT)`` (it does not round the coordinates to
    1/32 px). On the CPU that ``remap`` itself (both eager and compiled paths, so they agree
    bit for bit); elsewhere ``grid_sample`` (equal to ~1e-5 relative)."""
    mx, my = _sample_coords(img, flow)
    if img.device.type == "cpu":
        return _remap_cubic(img.to(torch.float32).contiguous(), mx, my)
    return _grid_sample_cubic(img, mx, my)


def _sample_coords(img: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sample coordinates (x + u, y + v) [B, H, W] of img [B, C, H, W]."""
    _, _, h, w = img.shape
    xs = torch.arange(w, device=img.device, dtype=img.dtype).view(1, 1, w)
    ys = torch.arange(h, device=img.device, dtype=img.dtype).view(1, h, 1)
    return xs + flow[:, 0], ys + flow[:, 1]


def _grid_sample_cubic(img: torch.Tensor, mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s bicubic sampling of img [B, C, H, W] at the absolute coordinates
    mx, my [B, H, W] (normalised for it, and back inside it: a rounding each way)."""
    h, w = img.shape[-2:]
    grid = torch.stack((mx * (2.0 / max(w - 1, 1)) - 1.0, my * (2.0 / max(h - 1, 1)) - 1.0), -1)
    return F.grid_sample(img, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def _remap_cubic(img: torch.Tensor, mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
    """OpenCV's bicubic ``remap`` of each plane of float32 img [B, C, H, W] at the absolute
    coordinates mx, my [B, H, W]: faster on the CPU than ATen's ``grid_sample``, which keeps
    to one thread at batch 1."""
    out = torch.empty_like(img)
    src, dst = img.numpy(), out.numpy()
    for i in range(img.shape[0]):
        map_x, map_y = mx[i].contiguous().numpy(), my[i].contiguous().numpy()
        for k in range(img.shape[1]):
            cv2.remap(src[i, k], map_x, map_y, cv2.INTER_CUBIC, dst=dst[i, k],
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def _median_blur(u: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of [B, C, H, W] with a size x size window, replicated border
    (OpenCV ``medianBlur`` on float images)."""
    r = size // 2
    b, c, h, w = u.shape
    p = F.pad(u.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    win = p.unfold(2, size, 1).unfold(3, size, 1)  # [BC, 1, H, W, size, size]
    return win.reshape(b, c, h, w, size * size).median(dim=-1).values


# Compare-exchange networks; (a, b) puts the min on wire a and the max on wire b. _COLUMN_SORT
# sorts one window column (wire = row); _MEDIAN_NET then takes the median of a window whose
# columns are sorted (wire = column * size + rank in the column) to wire size * size // 2.
# The 5x5 one is Batcher's odd-even merge sort pruned to what that wire needs given sorted
# columns; the 3x3 one is max of minima, median of medians, min of maxima, then their median.
# tests/test_flow_torch.py checks both on every 0/1 input (the 0-1 principle).
_COLUMN_SORT: dict[int, tuple[tuple[int, int], ...]] = {
    3: ((0, 1), (1, 2), (0, 1)),
    5: ((0, 1), (3, 4), (2, 4), (2, 3), (1, 4), (0, 3), (0, 2), (1, 3), (1, 2)),
}
_MEDIAN_NET: dict[int, tuple[tuple[int, int], ...]] = {
    3: ((0, 3), (3, 6), (5, 8), (2, 5), (1, 4), (4, 7), (1, 4), (4, 6), (2, 4), (4, 6)),
    5: ((4, 5), (14, 15), (5, 7), (8, 10), (9, 11), (12, 14), (5, 6), (9, 10), (13, 14), (0, 4),
        (1, 5), (2, 6), (8, 12), (10, 14), (11, 15), (16, 20), (17, 21), (18, 22), (19, 23),
        (2, 4), (3, 5), (10, 12), (11, 13), (18, 20), (19, 21), (1, 2), (3, 4), (5, 6), (9, 10),
        (11, 12), (13, 14), (17, 18), (19, 20), (21, 22), (0, 8), (1, 9), (2, 10), (3, 11),
        (4, 12), (5, 13), (6, 14), (7, 15), (4, 8), (5, 9), (6, 10), (7, 11), (20, 24), (2, 4),
        (3, 5), (6, 8), (7, 9), (10, 12), (11, 13), (22, 24), (1, 2), (3, 4), (5, 6), (7, 8),
        (9, 10), (11, 12), (13, 14), (21, 22), (23, 24), (0, 16), (1, 17), (2, 18), (3, 19),
        (4, 20), (5, 21), (6, 22), (7, 23), (8, 24), (8, 16), (9, 17), (10, 18), (11, 19),
        (12, 20), (13, 21), (6, 10), (7, 11), (12, 16), (13, 17), (10, 12), (11, 13), (11, 12)),
}


def _exchange(wires: list[torch.Tensor], network: tuple[tuple[int, int], ...]
              ) -> list[torch.Tensor]:
    """Runs a compare-exchange network (min/max only) over a list of same-shape tensors."""
    wires = list(wires)
    for a, b in network:
        wires[a], wires[b] = torch.minimum(wires[a], wires[b]), torch.maximum(wires[a], wires[b])
    return wires


def _replicate_pad(u: torch.Tensor, r: int) -> torch.Tensor:
    """[B, C, H, W] with r replicated pixels on every side."""
    return F.pad(u, (r, r, r, r), mode="replicate")


def _median_of_padded(p: torch.Tensor, size: int) -> torch.Tensor:
    """Median of every size x size window (3 or 5) of a replicate-padded [..., H+2r, W+2r]
    tensor, with min/max only so that it compiles to one vectorised kernel: window columns
    are sorted once per padded column, then the median network runs on the size * size
    shifted views. Unused min/max outputs are left to the compiler. The padding stays
    outside: done in here, its clamped indices keep Inductor's loops scalar."""
    r = size // 2
    h, w = p.shape[-2] - 2 * r, p.shape[-1] - 2 * r
    rows = _exchange([p[..., k:k + h, :] for k in range(size)], _COLUMN_SORT[size])
    wires = [rows[k][..., col:col + w] for col in range(size) for k in range(size)]
    return _exchange(wires, _MEDIAN_NET[size])[size * size // 2]


def _median_opencv(u: torch.Tensor, size: int) -> torch.Tensor:
    """Same as ``_median_blur`` (size 3 or 5, CPU tensors) by OpenCV's ``medianBlur``, a
    vectorised selection per plane that needs no compiling (and, on the CPU, is faster than
    what Inductor makes of the selection network)."""
    planes = u.contiguous().numpy()
    out = [[cv2.medianBlur(plane, size) for plane in pair] for pair in planes]
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _median_network(u: torch.Tensor, size: int) -> torch.Tensor:
    """Same as ``_median_blur`` (size 3 or 5), by the selection network."""
    return _median_of_padded(_replicate_pad(u, size // 2), size)


# ---------------------------------------------------------------------------------------------
# the solver


def _where_active(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """new for the pairs where active [B] is set, old elsewhere."""
    return torch.where(active.view(-1, *([1] * (new.ndim - 1))), new, old)


def _tvl1_step(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, warp_terms: tuple,
               params: TVL1Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner iteration for the whole batch: thresholding (estimateV), divergence, primal
    update (estimateU), forward gradients, dual update. Returns (u, px, py, error [B])."""
    gvec, grad, rho_c = warp_terms
    l_t, taut, theta = _step_constants(params)
    u_new = _primal(u, px, py, gvec, grad, rho_c, l_t, theta)
    px_new, py_new = _dual(u_new, px, py, taut)
    return u_new, px_new, py_new, _squared_update(u_new, u)


def _step_constants(params: TVL1Params) -> tuple[float, float, float]:
    """(lambda * theta, tau / theta, theta): the scalars of an inner iteration."""
    return params.lambda_ * params.theta, params.tau / params.theta, params.theta


def _sqrt_rounded(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root, so eager and compiled iterations agree bit for
    bit: Inductor's kernels round it exactly, ATen's vectorised CPU one can be 1 ulp off."""
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return torch.sqrt(x)
    return torch.sqrt(x.double()).float()


def _primal(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gvec: torch.Tensor,
            grad: torch.Tensor, rho_c: torch.Tensor, l_t: float | torch.Tensor,
            theta: float | torch.Tensor, run: torch.Tensor | None = None) -> torch.Tensor:
    """Thresholding, backward-difference divergence (zero outside the image) and primal
    update: the new u (with ``run`` [B], the old u of the pairs where it is clear). The
    first column and the rest are computed apart (see ``_FIRST``)."""
    dy = _backward_diff_rows(py)

    def part(cols: slice, dx: torch.Tensor) -> torch.Tensor:
        us, gs, g2 = u[..., cols], gvec[..., cols], grad[..., cols]
        rho = rho_c[..., cols] + (gs * us).sum(1)
        thr = l_t * g2
        fi = -rho / g2.clamp_min(_FLT_EPSILON)
        coef = torch.where(rho < -thr, l_t, torch.where(
            rho > thr, -l_t, torch.where(g2 > _FLT_EPSILON, fi, 0.0)))
        v = us + coef[:, None] * gs
        return _kept(run, v + theta * (dx + dy[..., cols]), us)

    return torch.cat((part(_FIRST, px[..., _FIRST]),
                      part(_AFTER_FIRST, px[..., 1:] - px[..., :-1])), -1)


def _squared_update(u_new: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sum of squared updates per pair [B]: the stopping error."""
    return (u_new - u).square().sum((1, 2, 3), dtype=torch.float64)


def _dual(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, taut: float | torch.Tensor,
          run: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward gradient of u (zero on the last row and column) and the dual update: new
    (px, py) (with ``run`` [B], the old ones of the pairs where it is clear). The last
    column and the rest are computed apart (see ``_FIRST``)."""
    uy = _forward_diff_rows(u)

    def part(cols: slice, ux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ps, qs, vy = px[..., cols], py[..., cols], uy[..., cols]
        ng = 1.0 + taut * _sqrt_rounded(ux * ux + vy * vy)
        return _kept(run, (ps + taut * ux) / ng, ps), _kept(run, (qs + taut * vy) / ng, qs)

    body = part(_BEFORE_LAST, u[..., 1:] - u[..., :-1])
    last = part(_LAST, torch.zeros_like(u[..., _LAST]))
    return torch.cat((body[0], last[0]), -1), torch.cat((body[1], last[1]), -1)


def _warp_terms(i0: torch.Tensor, i1_stack: torch.Tensor, u: torch.Tensor,
                gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linearisation of the data term around u: (gradient vector [B, C, H, W] with gamma as
    the third component when used, |grad I1w|^2, constant part of rho)."""
    warped = _warp_bicubic(i1_stack, u[:, :2])
    i1w, i1wx, i1wy = warped.unbind(1)
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u[:, 0] - i1wy * u[:, 1] - i0
    comps = [i1wx, i1wy]
    if u.shape[1] == 3:
        comps.append(torch.full_like(i1wx, gamma))
    return torch.stack(comps, 1), grad, rho_c


@dataclass(frozen=True)
class Fused:
    """How the compiled path runs: ``unroll`` inner iterations per compiled call (None: the
    loop graph, a whole outer iteration per call, for the CPU), and with ``cuda_graphs`` each
    call replays a CUDA graph (``mode="reduce-overhead"``) instead of launching its kernels
    one by one. ``kernels``: ``"inductor"`` (``torch.compile``) or
    ``"triton"`` (the hand-written kernels of ``tvl1_triton``: one launch per inner iteration
    and per median filter; no torch.compile)."""

    unroll: int | None = DEFAULT_INNER_UNROLL
    cuda_graphs: bool = False
    kernels: str = "inductor"

    def fn(self, fn: Callable) -> Callable:
        """The compiled ``fn``; with CUDA graphs, the next call starts a new graph step."""
        compiled = _compiled(fn, self.cuda_graphs)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return compiled

    def kept(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs kept beyond the next call: copied out of the graphs' memory pool, which
        later replays write over (``tvl1_triton.GraphedSteps`` copies its own out)."""
        copy = self.cuda_graphs and self.kernels == "inductor"
        return tuple(t.clone() for t in tensors) if copy else tensors


def _solve_level(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, params: TVL1Params,
                 sync_every: int, fused: Fused | None = None) -> torch.Tensor:
    """TV-L1 at one pyramid level starting from u [B, C, H, W] (C = 2, or 3 with gamma).

    ``fused`` None: eager. The host learns which pairs are still iterating every
    ``sync_every`` inner iterations: with 1 (the CPU, where reading it is free) all-active
    batches skip the masking and the loop stops as soon as every pair has; above 1 (CUDA) the
    queue of kernels is not drained every iteration and the masks alone freeze stopped pairs.
    ``fused``: compiled kernels (see ``_inner_compiled``), read back after each call.
    The flows are the same."""
    b, h, w = i0.shape
    # rounded to float32 once, as the compiled calls take it, so both compare the float64
    # error with the same threshold
    scaled_eps = float(np.float32(params.epsilon * params.epsilon * h * w))
    i1x, i1y = _centered_gradient(i1)
    i1_stack = torch.stack((i1, i1x, i1y), 1)
    px = torch.zeros_like(u)
    py = torch.zeros_like(u)
    for _ in range(params.warps):
        terms = _warp_terms(i0, i1_stack, u, params.gamma)
        active = torch.ones(b, dtype=torch.bool, device=u.device)
        for _ in range(params.outer_iterations):
            if not bool(active.any()):
                break
            if params.median_filtering > 1:
                u = _filter_active(u, active, params.median_filtering, fused)
            if fused is None:
                u, px, py, active = _inner_eager(u, px, py, terms, active, scaled_eps, params,
                                                 sync_every)
            else:
                u, px, py, active = _inner_compiled(u, px, py, terms, active, scaled_eps, params,
                                                    fused)
    return u


def _filter_active(u: torch.Tensor, active: torch.Tensor, size: int,
                   fused: Fused | None) -> torch.Tensor:
    """Median filter of the displacement channels of the active pairs (Wedel et al.)."""
    if fused is None or size not in _MEDIAN_NET:
        return _with_median(u, active, _median_blur(u[:, :2], size))
    if fused.kernels == "triton":
        return _triton_kernels().median(u, active, size)
    if u.device.type == "cpu":
        return _with_median(u, active, _median_opencv(u[:, :2], size))
    padded = _replicate_pad(u[:, :2], size // 2)
    _dynamic_hw(padded, u)
    return fused.kept(fused.fn(_MEDIAN_ACTIVE[size])(padded, u, active))[0]


def _with_median(u: torch.Tensor, active: torch.Tensor, med: torch.Tensor) -> torch.Tensor:
    """u with channels 0-1 replaced by ``med`` where ``active`` is set."""
    return torch.cat((_where_active(active, med, u[:, :2]), u[:, 2:]), 1)


def _median3_active(padded: torch.Tensor, u: torch.Tensor, active: torch.Tensor
                    ) -> torch.Tensor:
    """``_with_median`` of the 3x3 network on ``padded`` (what ``torch.compile`` traces)."""
    return _with_median(u, active, _median_of_padded(padded, 3))


def _median5_active(padded: torch.Tensor, u: torch.Tensor, active: torch.Tensor
                    ) -> torch.Tensor:
    """``_with_median`` of the 5x5 network on ``padded`` (what ``torch.compile`` traces)."""
    return _with_median(u, active, _median_of_padded(padded, 5))


# one function (so one compiled graph family) per size: an int that changes between calls of
# one compiled function would be made symbolic by dynamo
_MEDIAN_ACTIVE = {3: _median3_active, 5: _median5_active}


def _inner_eager(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, terms: tuple,
                 active: torch.Tensor, scaled_eps: float, params: TVL1Params, sync_every: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One outer iteration's inner loop, op by op (the reference)."""
    b = u.shape[0]
    for it in range(params.inner_iterations):
        all_active = False
        if sync_every == 1:
            n_active = int(active.sum())  # host sync
            if n_active == 0:
                break
            all_active = n_active == b
        elif it and it % sync_every == 0 and not bool(active.any()):
            break
        u_new, px_new, py_new, error = _tvl1_step(u, px, py, terms, params)
        if all_active:
            u, px, py = u_new, px_new, py_new
        else:
            u = _where_active(active, u_new, u)
            px = _where_active(active, px_new, px)
            py = _where_active(active, py_new, py)
        active = active & (error > scaled_eps)
    return u, px, py, active


def _inner_compiled(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, terms: tuple,
                    active: torch.Tensor, scaled_eps: float, params: TVL1Params, fused: Fused
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One outer iteration's inner loop, compiled: with ``fused.unroll`` None, one call of
    the loop graph (``_inner_loop``); else calls of ``fused.unroll`` iterations each (the
    last one masked past ``inner_iterations``; with ``kernels="triton"``, calls of
    ``tvl1_triton.inner_steps``), stopping between calls once no pair is active. The scalars
    go in as float32 tensors, rounded as the eager path rounds them: as Python floats they
    would be constants of the graph, and a preset or a level with other values would compile
    another one (or, once dynamo sees them change, a graph with symbolic floats, whose
    results differ). They are separate tensors: the loop graph refuses aliased inputs."""
    scalars = [torch.tensor(x, dtype=torch.float32, device=u.device)
               for x in (scaled_eps, *_step_constants(params))]
    if fused.kernels != "triton":
        _dynamic_hw(u, px, py, *terms)
    if fused.unroll is None and fused.kernels == "inductor":
        count = torch.tensor(params.inner_iterations, device=u.device)
        return fused.kept(*fused.fn(_inner_loop)(u, px, py, *terms, active, count, *scalars))
    for done in range(0, params.inner_iterations, fused.unroll):
        left = torch.tensor(params.inner_iterations - done, device=u.device)
        chunk = (_triton_steps(fused.cuda_graphs) if fused.kernels == "triton"
                 else fused.fn(_inner_steps))  # fn marks each CUDA graph step
        u, px, py, active = chunk(u, px, py, *terms, active, left, *scalars, steps=fused.unroll)
        if not bool(active.any()):
            break
    return fused.kept(u, px, py, active)


def _masked_step(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gvec: torch.Tensor,
                 grad: torch.Tensor, rho_c: torch.Tensor, run: torch.Tensor,
                 l_t: torch.Tensor, taut: torch.Tensor, theta: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner iteration of the pairs where ``run`` [B] is set, the others unchanged:
    (u, px, py, stopping error [B])."""
    # error and gradient of the masked new u: the same for the pairs that run (the others'
    # are not used), and the kernels then keep one new u, not two
    u_new = _primal(u, px, py, gvec, grad, rho_c, l_t, theta, run)
    error = _squared_update(u_new, u)
    px_new, py_new = _dual(u_new, px, py, taut, run)
    return u_new, px_new, py_new, error


def _inner_steps(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gvec: torch.Tensor,
                 grad: torch.Tensor, rho_c: torch.Tensor, active: torch.Tensor,
                 left: torch.Tensor, scaled_eps: torch.Tensor, l_t: torch.Tensor,
                 taut: torch.Tensor, theta: torch.Tensor, steps: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` inner iterations of which the first ``left`` count, each pair frozen from
    the iteration where its update falls to ``scaled_eps`` (what ``torch.compile`` traces,
    unrolled: one graph for every level, size and preset)."""
    for k in range(steps):
        counts = left > k
        u, px, py, error = _masked_step(u, px, py, gvec, grad, rho_c, active & counts,
                                        l_t, taut, theta)
        active = torch.where(counts, active & (error > scaled_eps), active)
    return u, px, py, active


def _inner_loop(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gvec: torch.Tensor,
                grad: torch.Tensor, rho_c: torch.Tensor, active: torch.Tensor,
                count: torch.Tensor, scaled_eps: torch.Tensor, l_t: torch.Tensor,
                taut: torch.Tensor, theta: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``count`` inner iterations, each pair frozen from the iteration where its
    update falls to ``scaled_eps``, ending when no pair is active: a ``torch.while_loop``
    whose body is one iteration, so the graph is small (it compiles in half the time of
    ``_inner_steps``'s five) and one call runs a whole outer iteration. Its condition is
    read on the host every iteration: free on the CPU, not on a GPU."""
    from torch._higher_order_ops.while_loop import while_loop

    def going(k, u, px, py, active):
        return (k < count) & active.any()

    def step(k, u, px, py, active):
        u, px, py, error = _masked_step(u, px, py, gvec, grad, rho_c, active, l_t, taut, theta)
        return k + 1, u, px, py, active & (error > scaled_eps)

    start = torch.zeros((), dtype=torch.int64, device=u.device)
    return tuple(while_loop(going, step, (start, u, px, py, active))[1:])


# ---------------------------------------------------------------------------------------------
# compilation


_COMPILED: dict[tuple[Callable, bool], Callable] = {}
_RECOMPILE_LIMIT = 16  # graphs per function: one per batch size


def inductor_cache_dir() -> str:
    """The Inductor cache folder: ``TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``~/.cache/actprep/inductor`` (exported so Inductor and its workers use it)."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.expanduser(DEFAULT_CACHE_DIR)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


@functools.cache
def _cache_loop_graphs() -> bool:
    """Lets Inductor's FX graph cache keep graphs that hold a ``torch.while_loop`` (the CPU
    loop graph), process-wide. Inductor refuses to cache higher-order operators unless they
    are listed in ``unsafe_marked_cacheable_functions``: its key hashes the graph with the
    loop's condition and body subgraphs, so another body is another entry. Without it, every
    process re-lowers the loop graph (a warm start of about three times as long). False if
    this torch has no such setting (an older torch: then the loop graph is lowered again in
    each process, or fails to compile, and the engine falls back as for any compile failure)."""
    try:
        import torch._inductor.config as inductor_config
        from torch._higher_order_ops.while_loop import while_loop_op
    except ImportError:
        return False
    listed = getattr(inductor_config, "unsafe_marked_cacheable_functions", None)
    if listed is None:
        return False
    name = f"{while_loop_op.__module__}.{while_loop_op.__name__}"
    if name not in listed:
        inductor_config.unsafe_marked_cacheable_functions = [*listed, name]
    return True


def _compiled(fn: Callable, cuda_graphs: bool = False) -> Callable:
    """``torch.compile(fn)``, made once per function (and CUDA graph use). Height and width
    are symbolic (see ``_dynamic_hw``), so one graph serves every pyramid level and frame
    size; the rest is static. The first call sets the persistent cache folder."""
    key = (fn, cuda_graphs)
    if key not in _COMPILED:
        inductor_cache_dir()
        _cache_loop_graphs()
        import torch._dynamo

        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, _RECOMPILE_LIMIT)
        _COMPILED[key] = torch.compile(fn, dynamic=None,
                                       mode="reduce-overhead" if cuda_graphs else None)
    return _COMPILED[key]


def _dynamic_hw(*tensors: torch.Tensor) -> None:
    """Marks the last two dimensions (height, width) of each tensor symbolic for the next
    compiled call: frame sizes vary with the videos' aspect ratios, and each pyramid level
    has its own, so static sizes would compile a graph per level and per size."""
    import torch._dynamo

    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, t.ndim - 2)
        torch._dynamo.maybe_mark_dynamic(t, t.ndim - 1)


KERNELS = ("inductor", "triton")


def _triton_kernels():
    """``tvl1_triton``, imported on first use: triton is optional (the CPU path runs without
    it)."""
    from actprep.extractors.flow import tvl1_triton

    return tvl1_triton


@functools.cache
def _triton_steps(cuda_graphs: bool) -> Callable:
    """``tvl1_triton.inner_steps``, replayed from CUDA graphs with ``cuda_graphs`` (one
    ``GraphedSteps``, so one set of graphs, per process)."""
    kernels = _triton_kernels()
    return kernels.GraphedSteps() if cuda_graphs else kernels.inner_steps


def _check_kernels(kernels: str, compiled: bool, device: torch.device) -> None:
    """Raise ValueError unless ``kernels`` can run: "triton" needs the compiled path, triton
    installed, and a CUDA device or Triton's interpreter (``TRITON_INTERPRET=1``, CPU
    tensors)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels != "triton":
        return
    if not compiled:
        raise ValueError("kernels='triton' needs compiled=True")
    interpreted = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on")
    if device.type != "cuda" and not interpreted:
        raise ValueError(f"kernels='triton' needs a CUDA device or TRITON_INTERPRET=1, got "
                         f"tensors on {device.type}")
    if not has_triton():
        raise ValueError("kernels='triton' needs the triton package (pip install triton)")


_OPENCV_USERS = threading.Lock()
_opencv_state = {"users": 0, "threads": 0}


@contextlib.contextmanager
def _opencv_single_threaded(device: torch.device):
    """OpenCV on one thread while a CPU solve runs. Its calls there (``remap``,
    ``medianBlur``) come between torch's parallel regions, whose OpenMP threads keep
    spinning on the cores for a while after each; OpenCV's own thread pool on top of them
    oversubscribes the cores, worst when other processes (decoders) want them too, and one
    thread is faster. Counted, so overlapping solves in several threads restore OpenCV's
    setting once, when the last one ends."""
    if device.type != "cpu":
        yield
        return
    with _OPENCV_USERS:
        if _opencv_state["users"] == 0:
            _opencv_state["threads"] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv_state["users"] += 1
    try:
        yield
    finally:
        with _OPENCV_USERS:
            _opencv_state["users"] -= 1
            if _opencv_state["users"] == 0:
                cv2.setNumThreads(_opencv_state["threads"])


# glibc's mallopt parameters (malloc.h) and what CPU solves set them to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BELOW = 32 << 20  # blocks below this come from the heap, not their own mmap (glibc's most)
_KEEP_FREED = 128 << 20  # freed heap kept for reuse before any is given back to the system


@functools.cache
def _keep_freed_memory() -> bool:
    """Once per process, before the first CPU solve: glibc keeps freed blocks (up to
    ``_KEEP_FREED`` bytes) for reuse instead of handing them back to the system. The loop
    graph allocates its buffers afresh every inner iteration; with glibc's defaults they are
    unmapped or trimmed when freed, and the next iteration faults their pages in again,
    zero-filled, which costs the fused loop a large part of its speed. Process-wide (malloc
    has one setting); True if it took, False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_BELOW)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED))


def _upscale_flow(u: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """Flow of a coarse level resized to the finer ``size``; displacements divided by scale_step
    (the illumination channel, if any, is not scaled)."""
    up = _resize_linear(u, size)
    return torch.cat((up[:, :2] / scale_step, up[:, 2:]), 1)


def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor,
              params: TVL1Params = TVL1Params(), sync_every: int | None = None,
              compiled: bool = False, inner_unroll: int | None = None,
              cuda_graphs: bool = False, kernels: str = "inductor") -> torch.Tensor:
    """Dual TV-L1 optical flow of a batch of gray image pairs.

    prev, nxt: [B, H, W] real tensors (values 0..255) on any device. Returns float32 flows
    [B, 2, H, W] on that device with prev(x, y) ~ nxt(x + u, y + v). ``sync_every``: how
    often the eager path reads the stopping state back on the host (default 1 on the CPU, 10
    elsewhere). ``compiled``: inner iterations and median filter as ``torch.compile`` kernels
    (the first call in a process compiles, or loads from the cache), ``inner_unroll``
    iterations per call (default: on the CPU with Inductor, the loop graph; else 5);
    ``cuda_graphs`` (CUDA, compiled): each call replays a CUDA graph.
    ``kernels`` (compiled): ``"inductor"`` (torch.compile) or ``"triton"`` (the hand-written
    kernels of ``tvl1_triton``; CUDA, or CPU tensors under ``TRITON_INTERPRET=1``). They
    change the speed, not the result (compiled: equal to rounding)."""
    _check_inputs(prev, nxt)
    if sync_every is None:
        sync_every = 1 if prev.device.type == "cpu" else 10
    if sync_every < 1:
        raise ValueError(f"sync_every must be at least 1, got {sync_every}")
    if inner_unroll is None and (prev.device.type != "cpu" or kernels != "inductor"):
        inner_unroll = DEFAULT_INNER_UNROLL
    if inner_unroll is not None and inner_unroll < 1:
        raise ValueError(f"inner_unroll must be at least 1, got {inner_unroll}")
    if cuda_graphs and (not compiled or prev.device.type != "cuda"):
        raise ValueError("cuda_graphs needs compiled=True and tensors on a CUDA device")
    _check_kernels(kernels, compiled, prev.device)
    fused = Fused(inner_unroll, cuda_graphs, kernels) if compiled else None
    if prev.device.type == "cpu":
        _keep_freed_memory()
    with torch.no_grad(), _opencv_single_threaded(prev.device):
        i0s = _pyramid(prev.to(torch.float32), params)
        i1s = _pyramid(nxt.to(torch.float32), params)
        channels = 3 if params.gamma != 0 else 2
        b = prev.shape[0]
        h, w = i0s[-1].shape[-2:]
        u = torch.zeros((b, channels, h, w), dtype=torch.float32, device=prev.device)
        for level in range(len(i0s) - 1, -1, -1):
            u = _solve_level(i0s[level], i1s[level], u, params, sync_every, fused)
            if level > 0:
                u = _upscale_flow(u, tuple(i0s[level - 1].shape[-2:]), params.scale_step)
        return u[:, :2].contiguous()


__all__ = ["tvl1_flow", "inductor_cache_dir", "Fused"]
