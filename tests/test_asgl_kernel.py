"""ASGL's dual-mode LIF in the compiled kernel (``_lif_kernel.c``, "ASGL dual-mode")
against its reference, the plain autograd loop (``lif_sequence`` with the strategy's
``dual_mode_spike``, the layer's ``use_fused = False``): spike values bit for bit from
the same random draws (and the generator left in the same state), gradients of the
currents and of alpha to 1e-6 in float64; and the kernel's mask rule and keyed uniforms (against their torch twin and SplitMix64)."""

from __future__ import annotations

import itertools

import pytest
import torch

from snn2hw.core import _kernel
from snn2hw.core.fused import counter_uniforms
from snn2hw.core.layers import LIF
from snn2hw.methods import make_method

TOL = 1e-6
V_TH = 0.6


@pytest.fixture(scope="module")
def kernel_lib(kernel_lib):
    """conftest's compiled kernel; these tests need it."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    return kernel_lib


@pytest.fixture
def calls(kernel_lib, monkeypatch):
    """Use the kernel and count its ASGL calls (a silent fall-back to torch would pass)."""
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    seen = {"asgl_forward": 0, "asgl_backward": 0}
    for name in seen:
        def spy(*a, _fn=getattr(_kernel, name), _name=name, **k):
            seen[_name] += 1
            return _fn(*a, **k)
        monkeypatch.setattr(_kernel, name, spy)
    return seen


def _asgl_lif(alpha: float, p: float, reset: str, lam: float, dtype) -> LIF:
    lif = LIF(lam=lam, v_th=V_TH, reset=reset).to(dtype)
    method = make_method("asgl", {"alpha_init": alpha, "p": p})
    holder = torch.nn.Sequential(lif)  # named_lifs walks modules
    method.setup(holder)
    return lif.train()


def _currents(alpha: float, dtype, T: int = 6, batch: int = 40, seed: int = 0,
              edges: bool = True) -> torch.Tensor:
    """(T, batch, 2, 7): random steps (many spikes and resets), the first step a grid of
    x = c - V_th across the window +-alpha/2 at the clamped width, with ``edges`` on
    its edges too (where autograd's clamp and AsglRect.grad differ: the fused loop's
    rule is AsglRect's, |x| < alpha/2)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(T, batch, 2, 7, generator=g, dtype=torch.float64) * 0.8 + 0.4
    width = max(alpha, 1e-3)
    c[0].view(-1)[:300] = V_TH + torch.linspace(-1.5, 1.5, 300, dtype=torch.float64) * width
    c[0].view(-1)[300:302] = V_TH + torch.tensor([0.0, 1e-30], dtype=torch.float64) * width
    if edges:
        c[0].view(-1)[302:304] = V_TH + torch.tensor([0.5, -0.5], dtype=torch.float64) * width
    return c.to(dtype).requires_grad_()


def _run(lif: LIF, c: torch.Tensor, fused: bool, seed: int = 7, lib="keep"):
    """Spikes, the next uniforms (generator state), and the gradients of c and alpha;
    ``lib=None`` runs the fused loop's torch version."""
    lif.use_fused = fused
    kept = _kernel._lib
    if lib is None:
        _kernel._lib = None
    try:
        return _run_once(lif, c, seed)
    finally:
        _kernel._lib = kept


def _run_once(lif: LIF, c: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    s = lif(c)
    after = torch.rand(4, dtype=c.dtype)
    go = torch.cos(torch.arange(s.numel(), dtype=c.dtype)).view_as(s)
    gc, ga = torch.autograd.grad(s, (c, lif.shape_param), go)
    return s.detach(), after, gc, ga


CASES = list(itertools.product(["hard", "soft"], [0.5, 1.0], [0.0, 0.3, 1.0], [0.8, 1e-5]))


@pytest.mark.parametrize("reset,lam,p,alpha", CASES)
def test_kernel_equals_the_plain_dual_mode_loop_float64(calls, reset, lam, p, alpha):
    """alpha 1e-5 is clamped to MIN_WIDTH (the grid puts x inside the clamped window)."""
    lif = _asgl_lif(alpha, p, reset, lam, torch.float64)
    for edges, reference in ((False, dict(fused=False)), (True, dict(fused=True, lib=None))):
        c = _currents(alpha, torch.float64, edges=edges)
        s, after, gc, ga = _run(lif, c, fused=True)
        s_ref, after_ref, gc_ref, ga_ref = _run(lif, c, **reference)
        assert torch.equal(s, s_ref)
        assert torch.equal(after, after_ref)  # the same draws, no more, no fewer
        torch.testing.assert_close(gc, gc_ref, rtol=0, atol=TOL)
        torch.testing.assert_close(ga, ga_ref, rtol=0, atol=TOL)
    assert calls == {"asgl_forward": 2, "asgl_backward": 2}
    if 0 < p < 1:  # both kinds of value occur
        assert ((s > 0) & (s < 1)).any() and ((s == 1) & (c.detach() - V_TH < 0.5 * max(alpha, 1e-3))).any()
    if alpha > 1e-3 and reset == "hard":
        assert gc.abs().sum() > 0 and ga.abs() > 0


@pytest.mark.parametrize("dtype,p", list(itertools.product([torch.float32, torch.float64],
                                                           [0.3, 0.5 + 2.0 ** -24, 1 - 2.0 ** -30])))
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_kernel_spikes_bit_identical_to_the_torch_loop(calls, dtype, p, reset):
    """float32 too (torch's roundings of the update, the division and the clip), p on a
    float32 rounding edge and p that rounds to 1 in float32; inference (no_grad) as well."""
    lif = _asgl_lif(0.37, p, reset, 0.9, dtype)
    c = _currents(0.37, dtype, T=8)
    outs = []
    for fused in (True, False):
        lif.use_fused = fused
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append((lif(c), torch.rand(3, dtype=dtype)))
    assert calls["asgl_forward"] == 1
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_is_r_strictly_below_p_with_the_keyed_uniforms(kernel_lib, monkeypatch, dtype):
    """The kernel makes step t's uniforms from keys[t] as ``counter_uniforms`` does (every
    neuron's side of p agrees), and the spike is H(x) where r < p, else H_alpha(x) =
    clip(x/alpha + 1/2, 0, 1) (by hand: x/alpha = 0.1): p set to one neuron's r exactly,
    that neuron gets H_alpha; one ulp above it, H."""
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    n, keys = 3000, torch.tensor([12345, 2 ** 62 + 7], dtype=torch.int64)
    r = torch.stack([counter_uniforms(int(k), n, dtype) for k in keys])
    c = torch.full((2, n), V_TH + 0.05, dtype=dtype)  # x = 0.05 at step 0, alpha = 0.5
    j = int(r[0, :100].argmin())
    for p in (r[0, j], torch.nextafter(r[0, j], torch.tensor(1.0, dtype=dtype))):
        s, x = _kernel.asgl_forward(c, 0.9, V_TH, True, 0.5, float(p), keys, keep_x=True)
        h_alpha = x[0] / 0.5 + 0.5
        assert torch.equal(s[0], torch.where(r[0] < p, 1.0, h_alpha))
        assert (s[0, j] == 1.0) == bool(p > r[0, j])
        assert 0.3 * n < int((s[0] == 1.0).sum()) < 0.7 * n or p < 0.3  # a real mix
    h1, h_alpha1 = (x[1] > 0).to(dtype), (x[1] / 0.5 + 0.5).clamp(0.0, 1.0)  # step 1: its own key
    assert torch.equal(s[1], torch.where(r[1] < p, h1, h_alpha1))


def test_counter_uniforms_are_splitmix64_and_look_uniform():
    """The stream keyed 0 is SplitMix64 seeded with 0 (its published first outputs
    0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f), top 53 / 24 bits; a
    million values: mean 1/2 and variance 1/12 to 3 standard errors, a chi-square over
    100 bins under its 0.999 quantile, and two keys' streams uncorrelated."""
    first = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert counter_uniforms(0, 3, torch.float64).tolist() == [(v >> 11) * 2.0 ** -53 for v in first]
    assert counter_uniforms(0, 3, torch.float32).tolist() == [(v >> 40) * 2.0 ** -24 for v in first]
    n = 1_000_000
    u = counter_uniforms(987654321, n, torch.float64)
    assert u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 3 * (1 / 12 / n) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 3 * (1 / 180 / n) ** 0.5
    counts = torch.histc(u, bins=100, min=0.0, max=1.0)
    chi2 = float(((counts - n / 100) ** 2 / (n / 100)).sum())
    assert chi2 < 148.2  # chi-square, 99 degrees of freedom, 0.999 quantile
    v = counter_uniforms(987654322, n, torch.float64)  # the next key
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 3 / n ** 0.5


def test_non_binary_reset_and_gradient_by_hand(kernel_lib, monkeypatch):
    """Two steps, one neuron, hard reset, p = 0 (s = H_alpha): hand-computed u, s and the
    BPTT of fused.py's docstring (a = lam (1 - s), b = -lam u) and alpha's gradient."""
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    lam, alpha, dt = 0.5, 2.0, torch.float64
    c = torch.tensor([[1.0], [0.25]], dtype=dt)  # x0 = 0.4, s0 = 0.7; u1 = 0.5*1*0.3 + 0.25
    s, x = _kernel.asgl_forward(c, lam, V_TH, True, alpha, 0.0, None, keep_x=True)
    torch.testing.assert_close(s, torch.tensor([[0.7], [(0.4 - V_TH) / 2 + 0.5]], dtype=dt), rtol=0, atol=1e-15)
    go = torch.tensor([[1.0], [3.0]], dtype=dt)
    gu, gp = _kernel.asgl_backward(go, x, s, alpha, lam, V_TH, True, True)
    g, x1 = 1 / alpha, 0.4 - V_TH
    gu1 = 3.0 * g
    gs0 = 1.0 - lam * 1.0 * gu1  # b = -lam u0, u0 = 1
    gu0 = gs0 * g + lam * (1 - 0.7) * gu1
    expected_alpha = 3.0 * -x1 / alpha ** 2 + gs0 * -0.4 / alpha ** 2
    torch.testing.assert_close(gu, torch.tensor([[gu0], [gu1]], dtype=dt), rtol=0, atol=1e-15)
    torch.testing.assert_close(gp.sum(), torch.tensor(expected_alpha, dtype=dt), rtol=0, atol=1e-15)


@pytest.mark.parametrize("reset,lam", list(itertools.product(["hard", "soft"], [0.5, 1.0])))
def test_kernel_backward_rounds_as_the_torch_loop_float32(calls, reset, lam):
    """The kernel's BPTT is the torch loop's (``fused._backward_torch``) to the last bit in
    float32, alpha's summed gradient included: a training run with the kernel is the run
    without it (same seed, same history)."""
    lif = _asgl_lif(0.8, 0.3, reset, lam, torch.float32)
    c = _currents(0.8, torch.float32, T=8, batch=300)
    s, after, gc, ga = _run(lif, c, fused=True)
    s_ref, after_ref, gc_ref, ga_ref = _run(lif, c, fused=True, lib=None)
    assert calls == {"asgl_forward": 1, "asgl_backward": 1}
    assert torch.equal(s, s_ref) and torch.equal(after, after_ref)
    assert torch.equal(gc, gc_ref) and torch.equal(ga, ga_ref)
    assert gc.abs().sum() > 0 and ga.abs() > 0
