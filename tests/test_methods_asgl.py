"""ASGL: dual-mode forward, its expectation, eval binarity and alpha's gradient."""

from __future__ import annotations

import pytest
import torch

from snn2hw.core.layers import LIF
from snn2hw.core.surrogate import AsglRect
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.methods import make_method
from snn2hw.methods.asgl import dual_mode_spike, noise_probability

from test_methods_contract import run


def _model(**opts):
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(32, 32)))
    method = make_method("asgl", opts)
    method.setup(model)
    return model, method


def test_eval_output_is_exactly_binary_and_equals_the_plain_snn():
    model, _ = _model(alpha_init=3.0, p=0.3)
    plain = build_model(ModelConfig(hidden=(32, 32)))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("shape_param")}, strict=False)
    x = torch.rand(16, 64)
    model.eval()
    outs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.append(o)) for m in model.modules() if isinstance(m, LIF)]
    y = model(x)
    for h in hooks:
        h.remove()
    assert all(set(torch.unique(o).tolist()) <= {0.0, 1.0} for o in outs)
    torch.testing.assert_close(y, plain.eval()(x), rtol=0, atol=0)


def test_with_p_one_the_training_forward_equals_the_snn():
    model, _ = _model(alpha_init=2.0, p=1.0)
    plain = build_model(ModelConfig(hidden=(32, 32)))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("shape_param")}, strict=False)
    x = torch.rand(16, 64)
    torch.testing.assert_close(model.train()(x), plain.train()(x), rtol=0, atol=0)


def test_training_forward_is_not_binary_for_p_below_one():
    model, _ = _model(alpha_init=2.0, p=0.5)
    outs = []
    lif = next(m for m in model.modules() if isinstance(m, LIF))
    lif.register_forward_hook(lambda mod, i, o: outs.append(o))
    model.train()(torch.rand(16, 64))
    frac = ((outs[0] > 0) & (outs[0] < 1)).float().mean()
    assert frac > 0.05


def test_expectation_over_masks_is_the_mixture():
    x = torch.linspace(-1.5, 1.5, 31)
    alpha, p, n = torch.tensor(1.3), 0.7, 20000
    shape = AsglRect()
    torch.manual_seed(0)
    s = torch.stack([dual_mode_spike(x, alpha, p, shape) for _ in range(n)])
    h_alpha, h = shape.primitive(x, alpha), (x > 0).float()
    expected = (1 - p) * h_alpha + p * h
    # the per-point std of the mean is |H - H_alpha| sqrt(p(1-p)/n) <= 0.0033; 5 sigma
    assert (s.mean(0) - expected).abs().max() < 5 * 0.5 * (p * (1 - p) / n) ** 0.5 + 1e-6
    # masks are independent per element: mixed values in one draw
    assert len(torch.unique(s[0][(x.abs() < 0.6) & (x != 0)])) > 2


def test_alpha_gradient_matches_the_formula():
    x = torch.linspace(-1.2, 1.2, 49, dtype=torch.float64)
    up = torch.cos(3 * x) + 0.2
    for p in (0.0, 0.6, 1.0):
        alpha = torch.tensor(0.93, dtype=torch.float64, requires_grad=True)
        xg = x.clone().requires_grad_()
        torch.manual_seed(1)
        (dual_mode_spike(xg, alpha, p, AsglRect()) * up).sum().backward()
        inside = (x / 0.93 + 0.5 > 0) & (x / 0.93 + 0.5 < 1)
        expected_alpha = (up * torch.where(inside, -x / 0.93 ** 2, torch.zeros_like(x))).sum()
        torch.testing.assert_close(alpha.grad, expected_alpha)
        torch.testing.assert_close(xg.grad, up * inside.double() / 0.93)


def test_noise_schedule_and_its_history():
    assert noise_probability(0.6, 0.8, (3, 7), 0) == 0.6
    assert noise_probability(0.6, 0.8, (3, 7), 3) == pytest.approx(1 - 0.4 * 0.8)
    assert noise_probability(0.6, 0.8, (3, 7), 9) == pytest.approx(1 - 0.4 * 0.8 ** 2)
    r = run("asgl", epochs=3, method_options={"p": 0.5, "zeta": 0.5, "milestones": [1, 2]})
    assert [row["p"] for row in r.history] == pytest.approx([0.5, 0.75, 0.875])
    assert all(k in r.history[-1] for k in ("alpha/layers.2",))


def test_alpha_is_learned_and_state_round_trips():
    # alpha moves under training and the history reports the model's own width (the
    # exact step size is pinned by test_methods_training's one-step SGD test)
    r = run("asgl", epochs=2)
    alpha = float(r.model.layers[2].shape_param.detach())
    assert r.history[-1]["alpha/layers.2"] == alpha and abs(alpha - 1.0) > 1e-3
    m = make_method("asgl", {"p": 0.5})
    m.p = 0.9
    n = make_method("asgl", {"p": 0.5})
    n.load_state_dict(m.state_dict())
    assert n.p == 0.9


@pytest.mark.parametrize("p", [0.0, 0.3, 0.8, 0.5 + 2.0 ** -24, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_value_is_the_dual_mode_spike_bit_for_bit(p, dtype):
    """The fused loop's float-only forward value against ``dual_mode_spike`` from the same
    RNG state: x on the window's edges, at 0, and far out; alpha below MIN_WIDTH too."""
    from snn2hw.methods.asgl import dual_mode_value

    x = torch.cat([torch.linspace(-1.5, 1.5, 3001, dtype=dtype),
                   torch.tensor([0.0, -0.0, 0.5, -0.5, 1e-30, -1e-30, 40.0, -40.0], dtype=dtype)])
    for alpha in (torch.tensor(1.0, dtype=dtype), torch.tensor(0.37, dtype=dtype), torch.tensor(1e-5, dtype=dtype)):
        out = []
        for fn in (dual_mode_spike, dual_mode_value):
            torch.manual_seed(5)
            value = (fn(x, alpha, p, AsglRect()) if fn is dual_mode_spike else fn(x, alpha, p)).detach()
            out.append((value, torch.rand(3)))  # the next draw: both consumed the same numbers
        assert torch.equal(out[0][0], out[1][0])
        assert torch.equal(out[0][1], out[1][1])
