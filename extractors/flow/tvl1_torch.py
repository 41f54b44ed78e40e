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

Everything is [B, ...] tensors; there is no per-pair Python loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from actprep.extractors.flow.params import TVL1Params

MIN_LEVEL_SIZE = 16  # OpenCV stops adding pyramid levels below 16 px (either side)
_FLT_EPSILON = 1.1920928955078125e-07  # numeric_limits<float>::epsilon()
_PYRDOWN_TAPS = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


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


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of [B, C, H, W]; zero on the last column / row."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence of the dual field (px, py), zero outside the image."""
    dx = px - F.pad(px[..., :, :-1], (1, 0, 0, 0))
    dy = py - F.pad(py[..., :-1, :], (0, 0, 1, 0))
    return dx + dy


# ---------------------------------------------------------------------------------------------
# warping and median filtering


def _warp_bicubic(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img [B, C, H, W] sampled at (x + u, y + v): bicubic (a=-0.75), zero outside, as
    OpenCV 5's ``remap(INTER_CUBIC, BORDER_CONSTANT)`` (measured: equal to ~1e-5 relative;
    it does not round the coordinates to 1/32 px)."""
    b, _, h, w = img.shape
    xs = torch.arange(w, device=img.device, dtype=img.dtype).view(1, 1, w)
    ys = torch.arange(h, device=img.device, dtype=img.dtype).view(1, h, 1)
    mx = xs + flow[:, 0]
    my = ys + flow[:, 1]
    grid = torch.stack((mx * (2.0 / max(w - 1, 1)) - 1.0, my * (2.0 / max(h - 1, 1)) - 1.0), -1)
    return F.grid_sample(img, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def _median_blur(u: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of [B, C, H, W] with a size x size window, replicated border
    (OpenCV ``medianBlur`` on float images)."""
    r = size // 2
    b, c, h, w = u.shape
    p = F.pad(u.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    win = p.unfold(2, size, 1).unfold(3, size, 1)  # [BC, 1, H, W, size, size]
    return win.reshape(b, c, h, w, size * size).median(dim=-1).values


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
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    rho = rho_c + (gvec * u).sum(1)
    thr = l_t * grad
    fi = -rho / grad.clamp_min(_FLT_EPSILON)
    coef = torch.where(rho < -thr, l_t, torch.where(
        rho > thr, -l_t, torch.where(grad > _FLT_EPSILON, fi, 0.0)))
    v = u + coef[:, None] * gvec
    u_new = v + params.theta * _divergence(px, py)
    error = (u_new - u).square().sum((1, 2, 3))
    ux, uy = _forward_gradient(u_new)
    ng = 1.0 + taut * torch.sqrt(ux * ux + uy * uy)
    px_new = (px + taut * ux) / ng
    py_new = (py + taut * uy) / ng
    return u_new, px_new, py_new, error


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


def _solve_level(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor,
                 params: TVL1Params, sync_every: int) -> torch.Tensor:
    """TV-L1 at one pyramid level starting from u [B, C, H, W] (C = 2, or 3 with gamma).

    The host learns which pairs are still iterating every ``sync_every`` inner iterations:
    with 1 (the CPU, where reading it is free) all-active batches skip the masking and the
    loop stops as soon as every pair has; above 1 (CUDA) the queue of kernels is not drained
    every iteration and the masks alone freeze stopped pairs. The flows are the same."""
    b, h, w = i0.shape
    scaled_eps = params.epsilon * params.epsilon * h * w
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
                med = _median_blur(u[:, :2], params.median_filtering)
                u = torch.cat((_where_active(active, med, u[:, :2]), u[:, 2:]), 1)
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
    return u


def _upscale_flow(u: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """Flow of a coarse level resized to the finer ``size``; displacements divided by scale_step
    (the illumination channel, if any, is not scaled)."""
    up = _resize_linear(u, size)
    return torch.cat((up[:, :2] / scale_step, up[:, 2:]), 1)


def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor,
              params: TVL1Params = TVL1Params(), sync_every: int | None = None) -> torch.Tensor:
    """Dual TV-L1 optical flow of a batch of gray image pairs.

    prev, nxt: [B, H, W] real tensors (values 0..255) on any device. Returns float32 flows
    [B, 2, H, W] on that device with prev(x, y) ~ nxt(x + u, y + v). ``sync_every``: how
    often the stopping state is read back on the host (default 1 on the CPU, 10 elsewhere);
    it changes the speed, not the result."""
    _check_inputs(prev, nxt)
    if sync_every is None:
        sync_every = 1 if prev.device.type == "cpu" else 10
    if sync_every < 1:
        raise ValueError(f"sync_every must be at least 1, got {sync_every}")
    with torch.no_grad():
        i0s = _pyramid(prev.to(torch.float32), params)
        i1s = _pyramid(nxt.to(torch.float32), params)
        channels = 3 if params.gamma != 0 else 2
        b = prev.shape[0]
        h, w = i0s[-1].shape[-2:]
        u = torch.zeros((b, channels, h, w), dtype=torch.float32, device=prev.device)
        for level in range(len(i0s) - 1, -1, -1):
            u = _solve_level(i0s[level], i1s[level], u, params, sync_every)
            if level > 0:
                u = _upscale_flow(u, tuple(i0s[level - 1].shape[-2:]), params.scale_step)
        return u[:, :2].contiguous()


__all__ = ["tvl1_flow"]
