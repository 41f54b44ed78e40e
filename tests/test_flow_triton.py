"""The hand-written Triton kernels (extractors/flow/tvl1_triton.py) against tvl1_torch's eager
reference, run by Triton's interpreter on the CPU: the inner iterations (C = 2 and 3, per-pair
stopping inside a chunk, ``left`` < ``steps``, an inactive pair), the median filter (floats
with ties, every 0/1 3x3 window, the selection networks on every 0/1 input) and the whole
solver with ``kernels="triton"``.

TRITON_INTERPRET=1 must be set before triton is imported, and other tests import torch (and
may import triton) first, so the checks run in one subprocess (this file run as a script),
which prints their measurements as JSON; the tests assert on those."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from actprep.extractors.flow import tvl1_torch
from actprep.extractors.flow.params import preset
from actprep.extractors.torch_device import has_triton

needs_triton = pytest.mark.skipif(not has_triton(),
                                  reason="triton not installed")

# small frames with odd sizes, cut into 2 x 2 tiles, partial at the right and lower edges
FRAMES = {2: ((24, 37), (16, 32)), 3: ((40, 52), (32, 32))}  # C: ((H, W), tile)
# C: (inner iterations in the chunk, how many of them count); an even count leaves the result
# in the second buffer, an odd one in the first
STEPS = {2: (5, 4), 3: (4, 4)}
TOLERANCE = 1e-5  # max |difference| of u, px, py after a chunk
SOLVER_TOLERANCE = 1e-3  # px


# --------------------------------------------------------------------------------------------
# the checks (run in the interpreter subprocess)


def _inner_inputs(c: int) -> tuple[list, tuple[int, int]]:
    """Random inner-iteration inputs for 3 pairs (0 and 2 textured, with a flat patch where
    |grad I1w|^2 <= FLT_EPSILON; 1 of lower contrast, with smaller updates, so that it stops
    first) and the tile. The stopping threshold is set later."""
    (h, w), block = FRAMES[c]
    g = torch.Generator().manual_seed(c)
    weak = torch.tensor([1.0, 0.1, 1.0]).view(3, 1, 1)
    u = torch.randn(3, c, h, w, generator=g) * weak[..., None]
    px, py = ((torch.rand(3, c, h, w, generator=g) - 0.5) * 0.8 for _ in range(2))
    gx, gy, rho_c = (torch.randn(3, h, w, generator=g) * 20 * weak for _ in range(3))
    gx[:, :5, :7] = 0.0
    gy[:, :5, :7] = 0.0
    comps = [gx, gy] + ([torch.full_like(gx, 0.05)] if c == 3 else [])
    gvec = torch.stack(comps, 1)
    grad = gx * gx + gy * gy  # as _warp_terms makes it
    scalars = [torch.tensor(v, dtype=torch.float32) for v in tvl1_torch._step_constants(
        preset("opencv"))]
    return [u, px, py, gvec, grad, rho_c, scalars], block


def _errors(fields: list, steps: int) -> torch.Tensor:
    """Each pair's stopping error at each of ``steps`` iterations, never stopping [steps, B]."""
    u, px, py, gvec, grad, rho_c, (l_t, taut, theta) = fields
    b = u.shape[0]
    errs = []
    for _ in range(steps):
        nu, px, py, _ = tvl1_torch._inner_steps(
            u, px, py, gvec, grad, rho_c, torch.ones(b, dtype=torch.bool), torch.tensor(1),
            torch.tensor(-1.0), l_t, taut, theta, steps=1)
        errs.append(tvl1_torch._squared_update(nu, u))
        u = nu
    return torch.stack(errs)


def _threshold(errs: torch.Tensor) -> torch.Tensor:
    """A float32 threshold that stops pair 1 after its second iteration (so it is frozen for
    the rest of the chunk) and never pair 0."""
    eps = torch.tensor(float(np.sqrt(float(errs[0, 1]) * float(errs[1, 1]))),
                       dtype=torch.float32)
    assert float(errs[0, 1]) > float(eps) >= float(errs[1, 1]), errs[:, 1]
    assert float(errs[:, 0].min()) > float(eps), errs[:, 0]
    return eps


def check_inner(c: int) -> dict:
    """tvl1_triton.inner_steps against the eager _inner_steps: pair 1 frozen inside the chunk,
    pair 2 inactive; ``left`` below ``steps`` for C = 2, equal for C = 3."""
    fields, block = _inner_inputs(c)
    u, px, py, gvec, grad, rho_c, (l_t, taut, theta) = fields
    steps, left = STEPS[c]
    eps = _threshold(_errors(fields, steps))
    active = torch.tensor([True, True, False])
    before = [t.clone() for t in (u, px, py, gvec, rho_c, active)]
    args = (u, px, py, gvec, grad, rho_c, active, torch.tensor(left), eps, l_t, taut, theta)
    ref = tvl1_torch._inner_steps(*args, steps=steps)
    got = tvl1_triton.inner_steps(*args, steps=steps, block=block)
    return {"max_diff": max(float((a - r).abs().max()) for a, r in zip(got[:3], ref[:3])),
            "active": got[3].tolist(), "ref_active": ref[3].tolist(),
            # how far each pair moved: pair 2 (inactive) must not
            "moved": [float((ref[0][i] - u[i]).abs().max()) for i in range(3)],
            "inputs_kept": all(torch.equal(a, b) for a, b in zip(
                (u, px, py, gvec, rho_c, active), before))}


def _median_input(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """[2, c, h, w] floats; pair 0 with many ties, infinities and signed zeros."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, c, h, w, generator=g) * 3
    u[0, 0] = u[0, 0].round()
    u[0, 0, ::4, ::3] = float("inf")
    u[0, 1, 1::5, ::2] = -float("inf")
    u[0, 1, ::3] = -0.0
    return u


def _reference_median(u: torch.Tensor, active: torch.Tensor, size: int) -> torch.Tensor:
    return tvl1_torch._with_median(u, active, tvl1_torch._median_blur(u[:, :2], size))


def _zero_one_blocks() -> torch.Tensor:
    """[1, 2, 48, 96] 0/1 image of 3x3 blocks, every 0/1 3x3 pattern once: the 3x3 window of
    each block's centre is the block (channel 1: the complement)."""
    codes = torch.arange(512)
    bits = ((codes[:, None] >> torch.arange(9)) & 1).float().reshape(16, 32, 3, 3)
    img = bits.permute(0, 2, 1, 3).reshape(48, 96)
    return torch.stack((img, 1 - img))[None]


def check_median() -> dict:
    """tvl1_triton.median against the torch median: pair 0 active, pair 1 not; C = 3 (channel
    2 kept) and 2; every 0/1 3x3 window."""
    out = {}
    active = torch.tensor([True, False])
    for size, c in ((3, 3), (5, 3), (5, 2)):
        (h, w), block = FRAMES[c]
        u = _median_input(3, h, w, seed=size)[:, :c].contiguous()
        got = tvl1_triton.median(u, active, size, block=block)
        out[f"size{size}_c{c}"] = torch.equal(got, _reference_median(u, active, size))
    blocks = _zero_one_blocks()
    got = tvl1_triton.median(blocks, torch.tensor([True]), 3)
    ref = _reference_median(blocks, torch.tensor([True]), 3)
    centres = got[0, 0, 1::3, 1::3].flatten()
    ones = ((torch.arange(512)[:, None] >> torch.arange(9)) & 1).sum(1)
    out["zero_one_3x3"] = torch.equal(got, ref) and torch.equal(centres, (ones >= 5).float())
    return out


if os.environ.get("TRITON_INTERPRET") == "1":  # the checks' subprocess (see results())
    import triton
    import triton.language as tl

    from actprep.extractors.flow import tvl1_triton

    @triton.jit
    def _network_kernel(x_ptr, out_ptr, n, WIRES: tl.constexpr, NET: tl.constexpr,
                        BLOCK: tl.constexpr):
        """tvl1_triton._network, as the median kernel runs it, over the columns (wires) of
        an [n, WIRES] matrix."""
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = rows < n
        wires = ()
        for i in tl.static_range(WIRES):
            wires = wires + (tl.load(x_ptr + rows * WIRES + i, mask=mask),)
        wires = tvl1_triton._network(wires, NET)
        for i in tl.static_range(WIRES):
            tl.store(out_ptr + rows * WIRES + i, wires[i], mask=mask)


def _run_network(x: torch.Tensor, net: tuple) -> torch.Tensor:
    """Every row of x [n, wires] through the compare-exchange network ``net``."""
    out = torch.empty_like(x)
    block = 1024
    _network_kernel[(triton.cdiv(len(x), block),)](x, out, len(x), WIRES=x.shape[1], NET=net,
                                                    BLOCK=block)
    return out


def check_networks() -> dict:
    """0-1 principle: the column sort sorts every 0/1 column and the median network picks the
    median of every 0/1 window with sorted columns, hence of every real window."""
    out = {}
    for size in (3, 5):
        codes = torch.arange(2 ** size)
        cols = ((codes[:, None] >> torch.arange(size)) & 1).float()
        got = _run_network(cols, tvl1_triton._COLUMN_SORT[size])
        out[f"columns{size}"] = torch.equal(got, cols.sort(1).values)
        sorted_cols = torch.tensor([[0.0] * (size - z) + [1.0] * z for z in range(size + 1)])
        idx = torch.cartesian_prod(*[torch.arange(size + 1)] * size)
        wins = sorted_cols[idx].reshape(len(idx), size * size)
        got = _run_network(wins, tvl1_triton._MEDIAN_NET[size])
        mid = size * size // 2
        out[f"median{size}"] = torch.equal(got[:, mid], wins.sort(1).values[:, mid])
    return out


def _shifted_texture(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random texture and a copy shifted by (1.3, -0.7) px, [1, H, W] 0..255."""
    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    img = np.clip(128 + (img - img.mean()) * 45 / img.std(), 0, 255).astype(np.float32)
    m = np.float64([[1, 0, 1.3], [0, 1, -0.7]])
    nxt = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return torch.from_numpy(img)[None], torch.from_numpy(nxt)[None]


def check_solver() -> dict:
    """tvl1_flow with the Triton kernels against the eager solver; counts the kernels'
    calls (they must be what ran)."""
    calls = {"inner_steps": 0, "median": 0}
    real = {name: getattr(tvl1_triton, name) for name in calls}

    def counted(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return real[name](*args, **kwargs)
        return call

    prev, nxt = _shifted_texture(40, 52)
    p = preset("opencv").with_(nscales=2, warps=2)
    eager = tvl1_torch.tvl1_flow(prev, nxt, p)
    for name in calls:
        setattr(tvl1_triton, name, counted(name))
    try:
        fused = tvl1_torch.tvl1_flow(prev, nxt, p, compiled=True, kernels="triton")
    finally:
        for name, fn in real.items():
            setattr(tvl1_triton, name, fn)
    return {"max_diff": float((fused - eager).abs().max()), "motion": float(eager.abs().max()),
            **calls}


CHECKS = {"inner2": lambda: check_inner(2), "inner3": lambda: check_inner(3),
          "median": check_median, "networks": check_networks, "solver": check_solver}


# --------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def results() -> dict:
    """Every check, run once in one interpreter subprocess."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("c", [2, 3])
def test_inner_steps_equal_eager(results, c):
    """Equal to rounding; pair 1 stops inside the chunk while pair 0 goes on, pair 2 is
    inactive and keeps its fields; with left < steps the last iterations do not count."""
    r = results[f"inner{c}"]
    assert r["max_diff"] <= TOLERANCE, r
    assert r["active"] == r["ref_active"] == [True, False, False], r
    assert r["moved"][0] > 0.1 and r["moved"][1] > 0 and r["moved"][2] == 0, r
    assert r["inputs_kept"]


@pytest.mark.slow
@needs_triton
def test_median_equals_torch_median(results):
    """Exactly torch.median with replicated borders on the active pairs' channels 0-1,
    channel 2 and the inactive pair unchanged; every 0/1 3x3 window."""
    assert all(results["median"].values()), results["median"]


@pytest.mark.slow
@needs_triton
def test_median_networks_on_all_zero_one_inputs(results):
    assert all(results["networks"].values()), results["networks"]


@pytest.mark.slow
@needs_triton
def test_solver_with_triton_kernels_equals_eager(results):
    r = results["solver"]
    assert r["inner_steps"] > 0 and r["median"] > 0, r  # the Triton kernels ran
    assert r["motion"] > 0.5  # there is motion to get wrong
    assert r["max_diff"] <= SOLVER_TOLERANCE, r


def test_kernels_argument_checked(monkeypatch):
    prev, nxt = torch.zeros(1, 20, 20), torch.zeros(1, 20, 20)
    with pytest.raises(ValueError, match="kernels must be"):
        tvl1_torch.tvl1_flow(prev, nxt, compiled=True, kernels="cuda")
    with pytest.raises(ValueError, match="compiled=True"):
        tvl1_torch.tvl1_flow(prev, nxt, kernels="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        tvl1_torch.tvl1_flow(prev, nxt, compiled=True, kernels="triton")


# --------------------------------------------------------------------------------------------
# the real compiler: PTX and a cubin for an H100/H200 (sm_90), built without a GPU


_POINTERS = {"active_ptr": "*i1", "left_ptr": "*i64", "partial_ptr": "*fp64"}


def _signature(fn) -> dict[str, str]:
    """Triton types of a kernel's parameters: tensors float32 unless named in _POINTERS,
    integers int32, constexprs as declared."""
    sig = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith(("_ptr", "_out")):
            sig[name] = _POINTERS.get(name, "*fp32")
        else:
            sig[name] = "i32"
    return sig


def _sm90_ptx(fn, constexprs: dict) -> str:
    """The PTX of ``fn`` compiled for sm_90 as the solver launches it (ptxas also builds the
    cubin, so register allocation must succeed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from actprep.extractors.flow import tvl1_triton

    src = ASTSource(fn=fn, signature=_signature(fn), constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": tvl1_triton.DEFAULT_WARPS,
                                     **tvl1_triton.EXACT})
    assert kernel.asm["cubin"]
    return kernel.asm["ptx"]


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="needs the compiler")
def test_kernels_compile_for_sm90_with_exact_rounding():
    """Triton's own compiler and ptxas build every kernel for sm_90 (what the interpreter
    cannot show), and the PTX rounds as the CPU reference does: correctly rounded square
    roots and divisions, no approximate ones, no FMA contraction."""
    import re

    from actprep.extractors.flow import tvl1_triton as kernels

    bh, bw = kernels.DEFAULT_BLOCK
    builds = {f"inner C={c}": _sm90_ptx(kernels._inner_kernel, {
        "C": c, "BH": bh, "BW": bw, "SUM_BLOCK": kernels.SUM_BLOCK}) for c in (2, 3)}
    for size in kernels.MEDIAN_SIZES:
        builds[f"median {size}"] = _sm90_ptx(kernels._median_kernel, {
            "R": size // 2, "COLUMN": tvl1_torch._COLUMN_SORT[size],
            "NET": tvl1_torch._MEDIAN_NET[size], "BH": bh, "BW": bw})
    for name, ptx in builds.items():
        assert not re.search(r"\bfma\.", ptx), name
        assert not re.search(r"(sqrt|div|rcp)\.(approx|full)", ptx), name
    for c in (2, 3):
        ptx = builds[f"inner C={c}"]
        assert len(re.findall(r"sqrt\.rn\.f32", ptx)) >= c, c
        assert re.search(r"div\.rn\.f32", ptx) and re.search(r"\.f64", ptx), c


if __name__ == "__main__":
    print(json.dumps({name: check() for name, check in CHECKS.items()}))
