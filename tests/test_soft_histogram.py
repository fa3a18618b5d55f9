"""PDA's soft histogram: the compiled kernel (``_lif_kernel.c``, "soft histogram") and the
torch fallback give the same counts and gradient as a value-by-value hand computation and
as autograd of the scatter version, on values inside, on and beyond the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snn2hw.core import _kernel
from snn2hw.methods.psg import GRID, pda_loss, soft_histogram

from test_methods_psg import GRID as GRID64, _soft_hist_by_hand, _soft_histogram_scatter


def _values(rows: int, m: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """Gaussian values (spread 2.5: a few beyond the grid), every centre and both end
    points, values beyond both ends and just inside/outside them, and a run of equal values
    (one bin hit many times in a row)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, m, generator=gen, dtype=torch.float64) * 2.5
    v[:, :41] = GRID.double()
    v[0, 41:47] = torch.tensor([-9.0, 9.0, -4.05, 4.05, -3.99, 3.99], dtype=torch.float64)
    v[-1, 50:150] = 0.3
    return v.to(dtype)


def _hist_and_grad(fn, v: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = v.clone().requires_grad_()
    hist = fn(x, GRID)
    (hist * up).sum().backward()
    return hist.detach(), x.grad


TOLS = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-6, atol=1e-7)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_histogram_and_gradient_equal_autograd_of_the_scatter_version(backend, dtype, threads):
    """Several rows, M not a multiple of the kernel's blocks (9001 values: three chunks of
    4096 and a tail), 1 and 2 threads (per-thread bins); a random upstream gradient. The
    float32 tolerance is summation order (the kernel sums in float64, bincount in float32)."""
    v = _values(3, 9001, dtype)
    up = torch.randn(3, len(GRID), generator=torch.Generator().manual_seed(2), dtype=dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        hist, grad = _hist_and_grad(soft_histogram, v, up)
    finally:
        torch.set_num_threads(before)
    ref_hist, ref_grad = _hist_and_grad(_soft_histogram_scatter, v, up)
    torch.testing.assert_close(hist, ref_hist, **TOLS[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOLS[dtype])


def test_histogram_equals_the_hand_computation(backend):
    """Linear binning value by value (numpy, float64): pins the bin of each value, its
    fraction (the kernel's width h) and the end bins that collect values beyond the grid."""
    v = _values(2, 700, torch.float64, seed=4)
    hist = soft_histogram(v, torch.from_numpy(GRID64))  # the hand computation's float64 grid
    for r in range(len(v)):
        np.testing.assert_allclose(hist[r].numpy(), _soft_hist_by_hand(v[r].numpy()), rtol=1e-12, atol=1e-15)


def test_gradient_by_hand(backend):
    """d hist / d v for an upstream gradient that is the bin index i: (i+1 - i)/h = 1/h,
    divided by the row's count M, for a value inside the grid or on either end point
    (torch's clamp passes the gradient there); 0 beyond the grid. Pins the gradient's sign
    and scale, the last lower bin (K-2, not K-1, for a value on the top end point) and the
    outside-the-grid rule. The grid's width 0.25 is exact in binary: (4 - -4)/h is 32."""
    centres = torch.arange(-4.0, 4.125, 0.25, dtype=torch.float64)
    v = torch.tensor([[0.13, -2.71, 3.5, -4.0, 4.0, -5.0, 6.0, 4.4]], dtype=torch.float64, requires_grad=True)
    (soft_histogram(v, centres) * torch.arange(len(centres), dtype=torch.float64)).sum().backward()
    want = torch.tensor([[4.0, 4.0, 4.0, 4.0, 4.0, 0.0, 0.0, 0.0]], dtype=torch.float64) / v.shape[1]
    torch.testing.assert_close(v.grad, want, rtol=1e-12, atol=1e-15)


def test_pda_loss_and_gradient_equal_between_kernel_and_torch(kernel_lib, monkeypatch):
    """The whole loss on a (T, B, C, L) membrane tensor, float32 as in training."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_tried", True)
    u = torch.randn(4, 8, 6, 40, generator=torch.Generator().manual_seed(5)) * 1.4 + 0.3
    out = {}
    for name, lib in (("kernel", kernel_lib), ("torch", None)):
        monkeypatch.setattr(_kernel, "_lib", lib)
        x = u.clone().requires_grad_()
        loss = pda_loss([x])
        loss.backward()
        out[name] = (loss.detach(), x.grad)
    torch.testing.assert_close(out["kernel"][0], out["torch"][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(out["kernel"][1], out["torch"][1], rtol=1e-5, atol=1e-9)


def test_a_library_without_the_soft_histogram_falls_back_to_torch(monkeypatch):
    """A kernel built before the soft histogram existed: the torch version runs."""

    class OldLibrary:
        pass

    monkeypatch.setattr(_kernel, "_lib", OldLibrary())
    monkeypatch.setattr(_kernel, "_tried", True)
    v = _values(1, 300, torch.float64)
    assert not _kernel.soft_hist_available(v, len(GRID))
    np.testing.assert_allclose(soft_histogram(v, torch.from_numpy(GRID64))[0].numpy(), _soft_hist_by_hand(v[0].numpy()), rtol=1e-12)


@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_membranes_recorded_for_pda_equal_lif_sequence_bit_for_bit(kernel_lib, monkeypatch, reset, dtype, broadcast):
    """The compiled forward that records u (``_kernel.forward_membrane``, what PDA reads in
    training): spikes and u equal lif_sequence's bit for bit, over 1301 neurons (two full
    chunks of 512 and a tail that is not a whole vector), with u == V_th exactly (no spike),
    and for one frame broadcast over T (a direct-encoded input, time stride 0)."""
    from snn2hw.core.neuron import LIFParams, lif_sequence

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(6)
    if broadcast:
        c = (torch.randn(1, 1301, generator=gen, dtype=dtype) * 0.8 + 0.5).expand(7, 1301)
    else:
        c = torch.randn(7, 1301, generator=gen, dtype=dtype) * 1.2 + 0.6  # many spikes and resets
        c[0, :40] = 1.0  # u == V_th exactly: no spike (strict step)
    assert _kernel.forward_membrane_available(c)
    s, u = _kernel.forward_membrane(c, 0.7, 1.0, reset == "hard")
    s_ref, u_ref = lif_sequence(c, LIFParams(0.7, 1.0, reset), lambda x: (x > 0).to(x.dtype), True)
    assert 0.1 < float(s.mean()) < 0.9
    assert torch.equal(s, s_ref) and torch.equal(u, u_ref)


def _pda_loss_layer_by_layer(membranes: list[torch.Tensor], target: str) -> torch.Tensor:
    """``pda_loss`` as it was before the stacked kernel node and the cached constants: one
    ``_linear_binning`` per layer, ``cat``, and the N(0, 1) target computed per call."""
    from snn2hw.methods.psg import _LinearBinning, _normalised, gaussian_bins, symmetric_kl

    rows = [u.flatten(1) for u in membranes]
    c = GRID.to(rows[0])
    hist = _normalised(torch.cat([_LinearBinning.apply(r, float(c[0]), float(c[1] - c[0]), len(c)) for r in rows]))
    if target == "matched":
        d = [r.detach() for r in rows]
        ref = gaussian_bins(torch.cat([x.mean(1) for x in d]), torch.cat([x.std(1) for x in d]))
    else:
        ref = gaussian_bins(hist.new_zeros(1), hist.new_ones(1))
    terms = symmetric_kl(hist, ref)
    return terms.sum() / (2.0 * len(terms))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("target", ["standard", "matched"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pda_loss_of_stacked_layers_equals_layer_by_layer_bit_for_bit(backend, dtype, target, threads):
    """Three layers of different widths (as the conv net's; the second not a multiple of
    the kernel's chunk) in one kernel node, the constants and the N(0, 1) target cached:
    the loss and every layer's gradient are the per-layer computation's bit for bit, with
    the kernel and with the torch fallback, twice in a row (the caches' second use)."""
    gen = torch.Generator().manual_seed(7)
    us = [torch.randn(4, 6, 5, n, generator=gen, dtype=dtype) * s + m
          for n, s, m in ((40, 1.3, 0.2), (137, 2.2, -0.5), (10, 0.7, 1.0))]
    us[0].view(-1)[:41] = GRID.to(dtype)  # every centre, both end points
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(2):
            out = {}
            for name, fn in (("stacked", pda_loss), ("per layer", _pda_loss_layer_by_layer)):
                xs = [u.clone().requires_grad_() for u in us]
                loss = fn(xs, target)
                (loss * 3.0).backward()
                out[name] = (loss.detach(), [x.grad for x in xs])
            assert torch.equal(out["stacked"][0], out["per layer"][0])
            for got, want in zip(out["stacked"][1], out["per layer"][1]):
                assert torch.equal(got, want)
                assert got.abs().max() > 0
    finally:
        torch.set_num_threads(before)


def test_psg_extra_loss_follows_a_new_model():
    """PSG keeps the LIFs of the model it last saw (named_modules per batch costs time):
    a different model object gets its own LIFs, not the cached ones."""
    from snn2hw.core.layers import LIF
    from snn2hw.methods import make_method
    from snn2hw.models.config import ModelConfig
    from snn2hw.models.network import build_model

    method = make_method("psg", {"pda": True})
    models = [build_model(ModelConfig(hidden=(h,))) for h in (16, 24)]
    for model in models:
        method.setup(model)
        model(torch.rand(8, 64, generator=torch.Generator().manual_seed(3)))
    for model in (*models, models[0]):
        lifs = [m for m in model.modules() if isinstance(m, LIF)]
        torch.testing.assert_close(method.extra_loss(model), pda_loss([m.last_membrane for m in lifs]), rtol=0, atol=0)


def _soft_hist_in_kernel_order(v: np.ndarray, c0: float, h: float, k: int) -> np.ndarray:
    """The kernel's float64 sums (one thread) in its order: per row, chunks of 4096 values;
    in a chunk, 4 lanes (value j in lane j mod 4), each summing its fractions in order;
    the lanes added to the row's totals in lane order, chunk after chunk; then
    counts[i] = (n[i] - sf[i]) + sf[i-1]. Bins and fractions in the values' dtype."""
    out = np.zeros((len(v), k))
    for r, row in enumerate(v):
        raw = (row - row.dtype.type(c0)) / row.dtype.type(h)
        pos = np.minimum(np.maximum(raw, 0), row.dtype.type(k - 1))
        idx = np.minimum(pos.astype(np.int64), k - 2)
        frac = (pos - idx.astype(row.dtype)).astype(np.float64)
        n, sf = np.zeros(k), np.zeros(k)
        for j0 in range(0, len(row), 4096):
            lanes_n, lanes_f = np.zeros((4, k)), np.zeros((4, k))
            for j in range(j0, min(j0 + 4096, len(row))):
                lanes_n[(j - j0) % 4, idx[j]] += 1.0
                lanes_f[(j - j0) % 4, idx[j]] += frac[j]
            for a in range(4):
                n += lanes_n[a]
                sf += lanes_f[a]
        out[r] = (n - sf) + np.concatenate([[0.0], sf[:-1]])
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_histogram_sums_in_its_documented_order(kernel_lib, monkeypatch, dtype):
    """The compiled forward bit for bit against its summation order done by hand: pins the
    order (lanes, chunks) that a faster accumulation must keep so that PDA's numbers do
    not move. float64 values: their fractions' sums round differently in another order."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    v = _values(3, 9003, dtype, seed=8)  # two whole chunks, then blocks of 256 and 43 (3 past a lane group)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = _kernel.soft_hist_forward(v, -4.0, 0.2, 41).double().numpy()
    finally:
        torch.set_num_threads(before)
    want = _soft_hist_in_kernel_order(v.numpy(), -4.0, 0.2, 41)
    want = want.astype(np.float32).astype(np.float64) if dtype == torch.float32 else want
    assert np.array_equal(got, want)
