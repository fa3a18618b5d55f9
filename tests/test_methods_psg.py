"""PSG: the learnable-gamma surrogate derivatives (checked against the formulas,
computed without autograd) and the PDA loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snn2hw.core.layers import LIF
from snn2hw.core.surrogate import make_surrogate, spike
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.methods import make_method
from snn2hw.methods.psg import pda_loss

from test_methods_contract import digits, run


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# numpy forms of methods.md's derivatives: (do/du, do/dgamma) per shape and variant
FORMULAS = {
    ("psg_arctan", "analytic"): (lambda x, g: 1 / (1 + (g * x) ** 2), lambda x, g: 2 * g * x / (1 + (g * x) ** 2)),
    ("psg_arctan", "printed"): (lambda x, g: 1 / (1 + (g * x) ** 2), lambda x, g: 1 / (1 + (g * x) ** 2)),
    ("psg_softplus", "analytic"): (lambda x, g: _sigmoid(g * x), lambda x, g: np.clip(x * _sigmoid(g * x), -1, 1)),
    ("psg_softplus", "printed"): (lambda x, g: _sigmoid(g * x), lambda x, g: _sigmoid(g * x)),
}


@pytest.mark.parametrize("shape,variant", sorted(FORMULAS))
@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_gradients_match_the_formulas(shape, variant, gamma):
    xs = np.linspace(-3, 3, 61)
    upstream = np.cos(xs) + 0.5 * xs  # a non-constant, asymmetric dL/ds
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(gamma, dtype=torch.float64, requires_grad=True)
    s = spike(x, make_surrogate(shape, gamma).__class__(gamma, variant), g)
    assert torch.equal(s, (x > 0).to(s.dtype))  # forward is H
    (s * torch.tensor(upstream)).sum().backward()
    du, dg = FORMULAS[(shape, variant)]
    np.testing.assert_allclose(x.grad.numpy(), upstream * du(xs, gamma), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(g.grad), np.sum(upstream * dg(xs, gamma)), rtol=1e-10)


def test_analytic_variant_peaks_at_one():
    x = torch.linspace(-20, 20, 400001, dtype=torch.float64)
    for gamma in (0.5, 1.0, 5.0):
        p = torch.tensor(gamma, dtype=torch.float64)
        assert float(make_surrogate("psg_arctan").grad_param(x, p).abs().max()) == pytest.approx(1.0, abs=1e-6)
        assert float(make_surrogate("psg_softplus").grad_param(x, p).abs().max()) == pytest.approx(1.0)


def test_setup_gives_every_spiking_layer_case_1_arctan_and_learnable_gamma():
    """Case 2 (softplus) is for a potential-output layer (Eq. 13), never a hidden FC
    spiking layer: do/du = sigmoid(gamma x) ~ 1 above threshold is no spike surrogate."""
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 8), fc_hidden=8))
    make_method("psg", {"gamma_init": 2.0}).setup(model)
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    assert [m.kind for m in lifs] == ["conv", "conv", "fc"]
    assert [m.surrogate.name for m in lifs] == ["psg_arctan"] * 3
    mlp = build_model(ModelConfig(hidden=(16, 16)))
    make_method("psg").setup(mlp)
    assert {m.surrogate.name for m in mlp.modules() if isinstance(m, LIF)} == {"psg_arctan"}
    params = {id(p) for p in model.parameters()}
    for m in lifs:
        assert isinstance(m.shape_param, torch.nn.Parameter) and id(m.shape_param) in params
        assert float(m.shape_param.detach()) == 2.0
    out = model(torch.rand(5, 1, 8, 8))
    out.sum().backward()
    assert all(m.shape_param.grad is not None and m.shape_param.grad != 0 for m in lifs)


GRID = np.linspace(-4.0, 4.0, 41)


def _soft_hist_by_hand(v: np.ndarray) -> np.ndarray:
    """Linear binning on GRID, one value at a time (methods.md; psg.soft_histogram)."""
    h, k = GRID[1] - GRID[0], len(GRID)
    counts = np.zeros(k)
    for value in v:
        pos = min(max((value - GRID[0]) / h, 0.0), k - 1.0)
        i = min(int(np.floor(pos)), k - 2)
        counts[i] += 1 - (pos - i)
        counts[i + 1] += pos - i
    return counts / counts.sum()


def _pda_by_hand(layers: list[np.ndarray]) -> float:
    """L_PD = 1/(2TN) sum_t sum_n [KL(P||N) + KL(N||P)], N the standard Gaussian as the
    same linear binning sees it (variance 1 + h^2/6), both floored at 1e-8."""
    h = GRID[1] - GRID[0]
    ref = np.exp(-0.5 * GRID ** 2 / (1 + h * h / 6))
    ref /= ref.sum()
    total, terms = 0.0, 0
    for u in layers:
        for t in range(u.shape[0]):
            p, q = np.maximum(_soft_hist_by_hand(u[t].ravel()), 1e-8), np.maximum(ref, 1e-8)
            total += np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))
            terms += 1
    return total / (2 * terms)


def test_pda_loss_equals_the_formula_by_hand():
    """Pins 1/(2TN) (a missing factor 2 doubles it) and the symmetric KL (one-sided
    KL(P||N) alone differs by a factor ~2 on these shifted, narrow distributions)."""
    gen = torch.Generator().manual_seed(3)
    layers = [torch.randn(3, 4, 50, generator=gen, dtype=torch.float64) * 0.5 + 0.7,
              torch.randn(3, 4, 6, 5, generator=gen, dtype=torch.float64) * 1.5 - 0.4]
    got = float(pda_loss(layers))
    want = _pda_by_hand([u.numpy() for u in layers])
    assert got == pytest.approx(want, rel=1e-5)  # psg.GRID is float32


def test_pda_without_recorded_membranes_is_an_error():
    from snn2hw.errors import ConfigError

    model = build_model(ModelConfig(hidden=(16,)))
    method = make_method("psg", {"pda": True})
    method.setup(model)
    with pytest.raises(ConfigError, match="no recorded membrane"):
        method.extra_loss(model)  # no training forward ran: nothing to adjust


def test_pda_is_near_zero_for_gaussian_and_grows_with_shift_and_bimodality():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 128, 256, generator=gen)
    base = float(pda_loss([g]))
    assert base < 5e-3
    shifted = [float(pda_loss([g + d])) for d in (0.5, 1.0, 2.0)]
    assert base < shifted[0] < shifted[1] < shifted[2]
    bimodal = torch.where(torch.rand(g.shape, generator=gen) < 0.5, g * 0.3 - 1.5, g * 0.3 + 1.5)
    assert float(pda_loss([bimodal])) > 10 * base and float(pda_loss([bimodal])) > 0.2
    # "matched" target: any Gaussian is ~0, the bimodal one is not
    assert float(pda_loss([g * 0.4 + 1.0], "matched")) < 5e-3
    assert float(pda_loss([bimodal], "matched")) > 0.1


def test_pda_gradient_pulls_a_shifted_distribution_back():
    u = (torch.randn(2, 64, 128) + 1.5).requires_grad_()
    pda_loss([u]).backward()
    assert float(u.grad.sum()) > 0  # descending the loss lowers u towards the target mean 0


def test_pda_extra_loss_uses_the_training_forward():
    model = build_model(ModelConfig(hidden=(16,)))
    method = make_method("psg", {"pda": True, "beta_pd": 2.0})
    method.setup(model)
    model(torch.rand(8, 64))
    lif = next(m for m in model.modules() if isinstance(m, LIF))
    expected = 2.0 * pda_loss([lif.last_membrane])
    torch.testing.assert_close(method.extra_loss(model), expected)
    assert make_method("psg").extra_loss(model) is None


@pytest.mark.parametrize("dgamma", ["analytic", "printed"])
def test_psg_is_the_arctan_baseline_plus_a_learned_gamma(dgamma):
    """With gamma's learning rate 0, PSG is exactly sg with the psg_arctan shape at the
    same gamma (the paper's baseline); with a learning rate, gamma moves and the run
    differs. A PSG that installed another shape, or left gamma fixed, fails."""
    kw = dict(epochs=2, optimizer="sgd", lr=0.05)
    base = run("sg", surrogate="psg_arctan", surrogate_param=2.0, **kw)
    frozen = run("psg", shape_lr=0.0, method_options={"gamma_init": 2.0, "dgamma": dgamma}, **kw)
    assert [r["train_loss"] for r in frozen.history] == [r["train_loss"] for r in base.history]
    learned = run("psg", shape_lr=0.5, method_options={"gamma_init": 2.0, "dgamma": dgamma}, **kw)
    assert learned.history[-1]["gamma/layers.2"] != pytest.approx(2.0, abs=1e-3)
    assert learned.history[-1]["train_loss"] != base.history[-1]["train_loss"]


def _soft_histogram_scatter(values: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The previous soft_histogram (two scatter_adds, autograd backward): the reference
    for the bincount Function that replaced it."""
    c = centres.to(values)
    k, h = len(c), float(c[1] - c[0])
    pos = ((values - c[0]) / h).clamp(0.0, k - 1.0)
    i0 = pos.detach().floor().clamp_max(k - 2).long()
    f = pos - i0
    counts = values.new_zeros(values.shape[0], k).scatter_add(1, i0, 1.0 - f).scatter_add(1, i0 + 1, f)
    return counts / counts.sum(-1, keepdim=True).clamp_min(1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_soft_histogram_and_its_gradient_equal_the_scatter_version(dtype):
    """Values inside, beyond both ends of the grid and exactly on centres (where the
    clamp's and the floor's edge cases live); a random upstream gradient."""
    from snn2hw.methods.psg import GRID, soft_histogram

    gen = torch.Generator().manual_seed(1)
    v = torch.randn(3, 500, generator=gen, dtype=torch.float64) * 2.5
    v[:, :41] = GRID.double()  # every centre, the end points -4 and 4 included
    v[0, 41:45] = torch.tensor([-9.0, 9.0, -4.05, 4.05], dtype=torch.float64)
    v = v.to(dtype)
    up = torch.randn(3, len(GRID), generator=gen, dtype=dtype)
    outs = []
    for fn in (soft_histogram, _soft_histogram_scatter):
        x = v.clone().requires_grad_()
        hist = fn(x, GRID)
        (hist * up).sum().backward()
        outs.append((hist.detach(), x.grad))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
    torch.testing.assert_close(outs[0][1], outs[1][1], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["analytic", "printed"])
def test_psg_arctan_derivatives_equal_their_expressions_bit_for_bit(dtype, variant):
    """``PsgArctan.grad``/``grad_param`` run in place on one temporary: the same bits as
    the expressions ``1 / (1 + (p x)^2)`` and ``2 p x / (1 + (p x)^2)`` (so the training
    numbers do not move), on values spread over the surrogate's whole range."""
    from snn2hw.core.surrogate import PsgArctan

    x = torch.randn(20000, generator=torch.Generator().manual_seed(7), dtype=dtype) * 3
    p = torch.tensor(1.7, dtype=dtype)
    shape = PsgArctan(1.7, variant)
    assert torch.equal(shape.grad(x, p), 1.0 / (1.0 + (p * x) ** 2))
    want = 2.0 * p * x / (1.0 + (p * x) ** 2) if variant == "analytic" else 1.0 / (1.0 + (p * x) ** 2)
    assert torch.equal(shape.grad_param(x, p), want)
