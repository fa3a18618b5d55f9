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


def test_setup_gives_conv_layers_arctan_fc_layers_softplus_and_learnable_gamma():
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 8), fc_hidden=8))
    make_method("psg", {"gamma_init": 2.0}).setup(model)
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    assert [m.surrogate.name for m in lifs] == ["psg_arctan", "psg_arctan", "psg_softplus"]
    params = {id(p) for p in model.parameters()}
    for m in lifs:
        assert isinstance(m.shape_param, torch.nn.Parameter) and id(m.shape_param) in params
        assert float(m.shape_param.detach()) == 2.0
    out = model(torch.rand(5, 1, 8, 8))
    out.sum().backward()
    assert all(m.shape_param.grad is not None and m.shape_param.grad != 0 for m in lifs)


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


@pytest.mark.parametrize("pda", [False, True])
def test_trains_digits_mlp_above_90_percent(pda):
    r = run("psg", data=digits(), epochs=8, batch_size=64, timesteps=4, method_options={"pda": pda})
    assert r.summary["test_accuracy"] > 0.90
