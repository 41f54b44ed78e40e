"""Hand-written Triton kernels for the TV-L1 inner iteration and median filter (``tvl1_torch``).

``tvl1_torch`` compiles its inner iteration and median network with ``torch.compile``; on CUDA
Inductor splits them into several kernels that pass intermediate tensors through memory. The
kernels here move close to the compulsory traffic instead:

- ``inner_steps``: one launch per inner iteration. A program takes one tile of one pair, makes
  the primal update (thresholding, divergence, new u) and the dual update (forward gradient of
  the new u, new px and py), recomputing the new u at the right and lower neighbours from the
  same inputs rather than reading it back, so u, px and py are read once and written once per
  pixel (into the other of two buffers: neighbours read the old values). |grad I1w|^2 is
  recomputed from gvec (bit for bit what ``_warp_terms`` stores), so it is not read. Per-pair
  stopping stays on the device and deterministic: each program writes its tile's sum of
  squared updates, and at the next iteration every program of the pair sums those in a fixed
  order (no float atomics, no host sync).
- ``median``: 3x3 or 5x5 median (``medianBlur``, replicated border) of the displacement
  channels of the active pairs, one launch: each program loads the clamped window of its tile
  and runs ``tvl1_torch``'s min/max selection networks in registers.

Same contracts and results (to float rounding) as ``tvl1_torch._inner_steps`` and
``tvl1_torch._with_median`` of ``_median_blur``. Divisions and the square root are the
correctly rounded ones and launches disable FMA contraction, as the op-by-op reference rounds.
Runs on CUDA, or on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set before
triton is imported), which the tests use.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from actprep.extractors.flow.tvl1_torch import _COLUMN_SORT, _MEDIAN_NET

DEFAULT_BLOCK = (16, 64)  # tile rows x columns of one program
DEFAULT_WARPS = 8  # 4 pixels a thread: the inner kernel keeps many values per pixel
SUM_BLOCK = 128  # partial sums read per step when a program adds up its pair's error
# every launch: no FMA contraction, so products and sums round as the CPU reference rounds
EXACT = {"enable_fp_fusion": False}
MEDIAN_SIZES = tuple(sorted(_MEDIAN_NET))

_FLT_EPSILON = tl.constexpr(1.1920928955078125e-07)  # as tvl1_torch._FLT_EPSILON


# ---------------------------------------------------------------------------------------------
# shared device helpers


@triton.jit
def _tile(tile, tiles_w, H, W, BH: tl.constexpr, BW: tl.constexpr):
    """Row and column indices ([BH, 1], [1, BW]) of tile ``tile`` and its in-frame mask."""
    ys = (tile // tiles_w) * BH + tl.arange(0, BH)[:, None]
    xs = (tile % tiles_w) * BW + tl.arange(0, BW)[None, :]
    return ys, xs, (ys < H) & (xs < W)


@triton.jit
def _pair_error(partial_ptr, row, n_tiles, SUM_BLOCK: tl.constexpr):
    """Sum of the float64 row ``row`` of the [rows, n_tiles] partial sums, in a fixed order
    (the same in every program, so every program of a pair takes the same decision)."""
    acc = tl.zeros([SUM_BLOCK], dtype=tl.float64)
    for start in range(0, n_tiles, SUM_BLOCK):
        idx = start + tl.arange(0, SUM_BLOCK)
        acc += tl.load(partial_ptr + row * n_tiles + idx, mask=idx < n_tiles, other=0.0)
    return tl.sum(acc, axis=0)


# ---------------------------------------------------------------------------------------------
# inner iteration


@triton.jit
def _at(ptrs, off, planes):
    """Pointers to the tile ``off`` of each channel of each [C, H, W] block at ``ptrs``
    (``planes``: each channel's offset): a tuple (per block) of tuples (per channel)."""
    return tl.tuple([tl.tuple([p + q + off for q in planes]) for p in ptrs])


@triton.jit
def _load(tiles, shift, mask):
    """The values at ``shift`` pixels from the pointer tiles ``tiles`` (as ``_at`` makes
    them), 0 where ``mask`` is unset; same nesting."""
    return tl.tuple([tl.tuple([tl.load(q + shift, mask=mask, other=0.0) for q in chans])
                     for chans in tiles])


@triton.jit
def _primal(u, px, px_left, py, py_up, g, rho_c, l_t, theta, C: tl.constexpr):
    """New u (tuple over channels) from the old u, px, py, gvec at a pixel, px left of it and
    py above it (0 outside the image) and rho_c: thresholding, backward-difference divergence
    and primal update as ``tvl1_torch._primal``. |grad I1w|^2 is gx * gx + gy * gy, as
    ``_warp_terms`` computes it."""
    grad = g[0] * g[0] + g[1] * g[1]
    dot = g[0] * u[0]
    for c in tl.static_range(1, C):
        dot = dot + g[c] * u[c]
    rho = rho_c + dot
    thr = l_t * grad
    fi = tl.div_rn(-rho, tl.maximum(grad, _FLT_EPSILON))
    coef = tl.where(rho < -thr, l_t,
                    tl.where(rho > thr, -l_t, tl.where(grad > _FLT_EPSILON, fi, 0.0)))
    # comprehensions in Triton iterate over tuples (not ranges): the channel indices
    return tl.tuple([(u[c] + coef * g[c]) + theta * ((px[c] - px_left[c]) + (py[c] - py_up[c]))
                     for c in ((0, 1, 2) if C == 3 else (0, 1))])


@triton.jit
def _dual(p, q, ux, uy, taut):
    """New (px, py) of one channel from the forward gradient (ux, uy) of the new u."""
    ng = 1.0 + taut * tl.sqrt_rn(ux * ux + uy * uy)
    return tl.div_rn(p + taut * ux, ng), tl.div_rn(q + taut * uy, ng)


@triton.jit
def _step_tile(src, dst, g_ptr, rho_ptr, ys, xs, H, W, mask, l_t, taut, theta,
               C: tl.constexpr):
    """One inner iteration on a tile of one pair: reads u, px, py from the pair's blocks
    ``src`` (pointers), gvec and rho_c from ``g_ptr`` / ``rho_ptr``, writes the new ones to
    ``dst`` and returns the tile's sum of squared updates (squares in float32, summed in
    float64 as ``_squared_update``). The new u at the right and lower neighbours, which the
    forward gradient needs, is recomputed from their inputs (halo) rather than read back."""
    plane = H * W
    off = ys * W + xs
    has_left = mask & (xs > 0)
    has_up = mask & (ys > 0)
    right = mask & (xs + 1 < W)
    down = mask & (ys + 1 < H)
    planes = (0, plane, 2 * plane) if C == 3 else (0, plane)
    fields = _at(src + (g_ptr,), off, planes)  # u, px, py, gvec
    px_at, py_at = fields[1:3]
    rho_at = rho_ptr + off
    u, px, py, g = _load(fields, 0, mask)
    px_left, = _load((px_at,), -1, has_left)
    py_up, = _load((py_at,), -W, has_up)
    new = _primal(u, px, px_left, py, py_up, g, tl.load(rho_at, mask=mask, other=0.0), l_t,
                  theta, C)
    # right neighbour: its left px is px here; lower neighbour: its upper py is py here
    u_r, px_r, py_r, g_r = _load(fields, 1, right)
    py_ur, = _load((py_at,), 1 - W, right & has_up)
    new_r = _primal(u_r, px_r, px, py_r, py_ur, g_r, tl.load(rho_at + 1, mask=right, other=0.0),
                    l_t, theta, C)
    u_d, px_d, py_d, g_d = _load(fields, W, down)
    px_dl, = _load((px_at,), W - 1, down & has_left)
    new_d = _primal(u_d, px_d, px_dl, py_d, py, g_d, tl.load(rho_at + W, mask=down, other=0.0),
                    l_t, theta, C)
    u_out, px_out, py_out = _at(dst, off, planes)
    err = tl.zeros([], dtype=tl.float64)
    for c in tl.static_range(C):
        ux = tl.where(right, new_r[c] - new[c], 0.0)
        uy = tl.where(down, new_d[c] - new[c], 0.0)
        px_new, py_new = _dual(px[c], py[c], ux, uy, taut)
        tl.store(u_out[c], new[c], mask=mask)
        tl.store(px_out[c], px_new, mask=mask)
        tl.store(py_out[c], py_new, mask=mask)
        d = tl.where(mask, new[c] - u[c], 0.0)
        err += tl.sum((d * d).to(tl.float64))
    return err


@triton.jit
def _copy_tile(src, dst, off, plane, mask, C: tl.constexpr):
    """The tile of the blocks ``src`` copied to ``dst`` (a pair that does not run)."""
    for i in tl.static_range(len(src)):
        for c in tl.static_range(C):
            o = off + c * plane
            tl.store(dst[i] + o, tl.load(src[i] + o, mask=mask), mask=mask)


@triton.jit
def _runs(active_ptr, left_ptr, eps_ptr, partial_ptr, b, k, B, n_tiles,
          SUM_BLOCK: tl.constexpr):
    """Whether pair b runs iteration k of the chunk: active on entry, k < left, and (k > 0)
    its error at k - 1 above the threshold. A pair that did not run at k - 1 has error 0 there
    (scaled_eps >= 0), so this is ``_inner_steps``'s rule."""
    run = (tl.load(active_ptr + b) != 0) & (tl.load(left_ptr) > k)
    if k > 0:
        err = _pair_error(partial_ptr, (k - 1) * B + b, n_tiles, SUM_BLOCK)
        run = run & (err > tl.load(eps_ptr).to(tl.float64))
    return run


@triton.jit(do_not_specialize=["k"])
def _inner_kernel(u_ptr, px_ptr, py_ptr, u_out, px_out, py_out, g_ptr, rho_ptr, active_ptr,
                  left_ptr, eps_ptr, lt_ptr, taut_ptr, theta_ptr, partial_ptr, k, B, H, W,
                  tiles_w, n_tiles, C: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                  SUM_BLOCK: tl.constexpr):
    """Inner iteration k on one tile (program axis 0) of one pair (axis 1); writes the tile's
    squared update to partial[k, b, tile] (0 if the pair does not run). A pair that does not
    run copies its tile to the output buffer unless that buffer already holds it (it did not
    run at k - 1 either: the buffer, written at k - 2, is then up to date)."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    ys, xs, mask = _tile(tile, tiles_w, H, W, BH, BW)
    plane = H * W
    base = b.to(tl.int64) * C * plane  # the pair's [C, H, W] blocks; offsets below are int32
    src = (u_ptr + base, px_ptr + base, py_ptr + base)
    dst = (u_out + base, px_out + base, py_out + base)
    slot = partial_ptr + (k * B + b) * n_tiles + tile
    if _runs(active_ptr, left_ptr, eps_ptr, partial_ptr, b, k, B, n_tiles, SUM_BLOCK):
        err = _step_tile(src, dst, g_ptr + base, rho_ptr + b.to(tl.int64) * plane, ys, xs, H,
                         W, mask, tl.load(lt_ptr), tl.load(taut_ptr), tl.load(theta_ptr), C)
        tl.store(slot, err)
    else:
        stale = k < 2
        if k >= 2:
            stale = _runs(active_ptr, left_ptr, eps_ptr, partial_ptr, b, k - 1, B, n_tiles,
                          SUM_BLOCK)
        if stale:
            _copy_tile(src, dst, ys * W + xs, plane, mask, C)
        tl.store(slot, 0.0)


@triton.jit
def _active_kernel(active_ptr, out_ptr, left_ptr, eps_ptr, partial_ptr, steps, B, n_tiles,
                   SUM_BLOCK: tl.constexpr):
    """active after the chunk: active on entry and, if n = min(left, steps) > 0, the error
    at iteration n - 1 above the threshold (``_inner_steps``'s rule)."""
    b = tl.program_id(0)
    act = tl.load(active_ptr + b) != 0
    n = tl.minimum(tl.load(left_ptr), steps)
    if n > 0:
        err = _pair_error(partial_ptr, (n - 1) * B + b, n_tiles, SUM_BLOCK)
        act = act & (err > tl.load(eps_ptr).to(tl.float64))
    tl.store(out_ptr + b, act)


def _tiles(h: int, w: int, block: tuple[int, int]) -> tuple[int, int]:
    """(tiles per row, tiles per frame) of a frame cut into ``block`` tiles."""
    tiles_w = triton.cdiv(w, block[1])
    return tiles_w, triton.cdiv(h, block[0]) * tiles_w


def _check_fields(*tensors: torch.Tensor) -> None:
    """Raise ValueError unless the [B, C, H, W] fields are float32, contiguous and alike."""
    shape = tensors[0].shape
    for t in tensors:
        if t.shape != shape or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"expected contiguous float32 fields of shape {tuple(shape)}, got "
                             f"{t.dtype} {tuple(t.shape)}")
    if len(shape) != 4 or shape[1] not in (2, 3):
        raise ValueError(f"fields must be [B, 2 or 3, H, W], got {tuple(shape)}")


def inner_steps(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gvec: torch.Tensor,
                grad: torch.Tensor, rho_c: torch.Tensor, active: torch.Tensor,
                left: torch.Tensor, scaled_eps: torch.Tensor, l_t: torch.Tensor,
                taut: torch.Tensor, theta: torch.Tensor, steps: int,
                block: tuple[int, int] = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tvl1_torch._inner_steps`` as ``steps`` launches of one kernel and one tiny one
    (active after the chunk), without reading anything back on the host. ``grad`` must be
    gvec[:, 0]^2 + gvec[:, 1]^2 as ``_warp_terms`` makes it: the kernel recomputes it from
    gvec instead of reading it. ``scaled_eps`` >= 0. ``block``: tile (rows, columns), powers
    of two. The inputs are not modified."""
    del grad  # recomputed from gvec, bit for bit
    _check_fields(u, px, py, gvec)
    b, c, h, w = u.shape
    if tuple(rho_c.shape) != (b, h, w) or not rho_c.is_contiguous():
        raise ValueError(f"rho_c must be a contiguous [B, H, W], got {tuple(rho_c.shape)}")
    tiles_w, n_tiles = _tiles(h, w, block)
    partial = torch.empty((steps, b, n_tiles), dtype=torch.float64, device=u.device)
    src = (u, px, py)
    buffers: list[tuple[torch.Tensor, ...] | None] = [None, None]
    for k in range(steps):
        if buffers[k % 2] is None:
            buffers[k % 2] = tuple(torch.empty_like(t) for t in src)
        dst = buffers[k % 2]
        _inner_kernel[(n_tiles, b)](*src, *dst, gvec, rho_c, active, left, scaled_eps, l_t,
                                    taut, theta, partial, k, b, h, w, tiles_w, n_tiles, C=c,
                                    BH=block[0], BW=block[1], SUM_BLOCK=SUM_BLOCK,
                                    num_warps=num_warps, **EXACT)
        src = dst
    active_out = torch.empty_like(active)
    _active_kernel[(b,)](active, active_out, left, scaled_eps, partial, steps, b, n_tiles,
                         SUM_BLOCK=SUM_BLOCK, num_warps=1, **EXACT)
    return (*src, active_out)


class GraphedSteps:
    """``inner_steps`` replayed from CUDA graphs, one graph per argument shapes and
    ``steps``: a chunk's launches cost one replay instead of a Python launch each. The
    arguments are copied into the graph's own tensors and the results copied out (a graph
    reuses its memory at every replay); both happen on the device."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple] = {}

    def __call__(self, *args: torch.Tensor, steps: int) -> tuple[torch.Tensor, ...]:
        key = (steps, *((tuple(t.shape), t.dtype, t.device) for t in args))
        if key not in self._graphs:
            self._graphs[key] = self._capture(args, steps)
        graph, inputs, outputs = self._graphs[key]
        for mine, given in zip(inputs, args):
            mine.copy_(given)
        graph.replay()
        return tuple(t.clone() for t in outputs)

    @staticmethod
    def _capture(args: tuple[torch.Tensor, ...], steps: int) -> tuple:
        """(graph, its input tensors, its output tensors); the kernels are compiled by a run
        on a side stream first, as CUDA graph capture requires."""
        inputs = [t.clone() for t in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            inner_steps(*inputs, steps=steps)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = inner_steps(*inputs, steps=steps)
        return graph, inputs, outputs


# ---------------------------------------------------------------------------------------------
# median filter


@triton.jit
def _exchange(wires, a: tl.constexpr, b: tl.constexpr):
    """A tuple of tensors with the min of wires a and b on wire a and their max on wire b
    (a < b, as in every network of ``tvl1_torch``)."""
    lo = tl.minimum(wires[a], wires[b])
    hi = tl.maximum(wires[a], wires[b])
    return wires[:a] + (lo,) + wires[a + 1:b] + (hi,) + wires[b + 1:]


@triton.jit
def _network(wires, net: tl.constexpr):
    """A compare-exchange network ((a, b), ...) run over a tuple of same-shape tensors, as
    ``tvl1_torch._exchange`` runs it. (The pairs go through ``_exchange``'s constexpr
    parameters: assigned to a local name they would become tensors.)"""
    for i in tl.static_range(len(net)):
        wires = _exchange(wires, net[i][0], net[i][1])
    return wires


@triton.jit
def _sorted_column(ptr, ys, xs, H, W, R: tl.constexpr, COLUMN: tl.constexpr):
    """The 2R+1 values of column xs (clamped) of the window around row ys (clamped rows:
    replicated border), sorted: wire = rank."""
    col = tl.minimum(tl.maximum(xs, 0), W - 1)
    wires = ()
    for dy in tl.static_range(-R, R + 1):
        wires = wires + (tl.load(ptr + tl.minimum(tl.maximum(ys + dy, 0), H - 1) * W + col),)
    return _network(wires, COLUMN)


@triton.jit
def _window_median(ptr, ys, xs, H, W, R: tl.constexpr, COLUMN: tl.constexpr,
                   NET: tl.constexpr):
    """Median of the (2R+1)^2 window around each (ys, xs), replicated border: columns sorted,
    then the median network (wire = column * (2R+1) + rank)."""
    wires = _sorted_column(ptr, ys, xs - R, H, W, R, COLUMN)
    for dx in tl.static_range(-R + 1, R + 1):
        wires = wires + _sorted_column(ptr, ys, xs + dx, H, W, R, COLUMN)
    wires = _network(wires, NET)
    return wires[(2 * R + 1) * (2 * R + 1) // 2]


@triton.jit
def _median_kernel(u_ptr, out_ptr, active_ptr, C, H, W, tiles_w, R: tl.constexpr,
                   COLUMN: tl.constexpr, NET: tl.constexpr, BH: tl.constexpr,
                   BW: tl.constexpr):
    """One tile (program axis 0) of one plane b * C + c (axis 1): the median where c < 2 and
    pair b is active, a copy elsewhere."""
    tile = tl.program_id(0)
    plane_id = tl.program_id(1)
    ys, xs, mask = _tile(tile, tiles_w, H, W, BH, BW)
    base = plane_id.to(tl.int64) * H * W
    pix = ys * W + xs
    if (plane_id % C < 2) & (tl.load(active_ptr + plane_id // C) != 0):
        value = _window_median(u_ptr + base, ys, xs, H, W, R, COLUMN, NET)
    else:
        value = tl.load(u_ptr + base + pix, mask=mask)
    tl.store(out_ptr + base + pix, value, mask=mask)


def median(u: torch.Tensor, active: torch.Tensor, size: int,
           block: tuple[int, int] = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS
           ) -> torch.Tensor:
    """``tvl1_torch._with_median(u, active, _median_blur(u[:, :2], size))`` in one launch:
    u [B, C, H, W] with channels 0-1 of the active pairs median filtered (size 3 or 5,
    replicated border); channel 2 and the other pairs unchanged. A new tensor."""
    if size not in _MEDIAN_NET:
        raise ValueError(f"median size must be one of {MEDIAN_SIZES}, got {size}")
    _check_fields(u)
    b, c, h, w = u.shape
    tiles_w, n_tiles = _tiles(h, w, block)
    out = torch.empty_like(u)
    _median_kernel[(n_tiles, b * c)](u, out, active, c, h, w, tiles_w, R=size // 2,
                                     COLUMN=_COLUMN_SORT[size], NET=_MEDIAN_NET[size],
                                     BH=block[0], BW=block[1], num_warps=num_warps,
                                     **EXACT)
    return out


__all__ = ["inner_steps", "GraphedSteps", "median", "DEFAULT_BLOCK", "DEFAULT_WARPS"]
