"""GSG: the log-linear schedule, a = max(1/beta, 1), and the ISNM / soft-reset options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snn2hw.core.surrogate import GsgTanh
from snn2hw.methods.gsg import gsg_beta

from test_methods_contract import digits, run


def test_schedule_by_hand_reaches_beta_max_at_the_last_epoch():
    # Eq. 7 with 0-based epochs e = 0..7 of 8: beta = 0.5 * 20 ** (e / 7), by hand
    want = [0.5, 0.7671, 1.1768, 1.8053, 2.7696, 4.2489, 6.5184, 10.0]
    assert [gsg_beta(e, 8, 0.5, 10.0) for e in range(8)] == pytest.approx(want, abs=1e-4)
    assert gsg_beta(0, 1, 0.5, 10.0) == 0.5   # a one-epoch run stays at beta_min


def test_soft_nodecay_reset_is_eq_4_by_hand():
    """u[t] = lam u[t-1] + c[t] - V_th s[t-1] (GSG Eq. 4), against the decayed soft reset."""
    from snn2hw.core.neuron import LIFParams, lif_sequence

    c = torch.tensor([[1.5], [0.2], [0.9], [0.0]], dtype=torch.float64)
    lam, v_th = 0.5, 1.0
    s, u = lif_sequence(c, LIFParams(lam, v_th, "soft_nodecay"), record_membrane=True)
    # by hand: u1 = 1.5 (s=1); u2 = 0.75 + 0.2 - 1 = -0.05; u3 = -0.025 + 0.9 = 0.875; u4 = 0.4375
    torch.testing.assert_close(u.flatten(), torch.tensor([1.5, -0.05, 0.875, 0.4375], dtype=torch.float64))
    assert s.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    _, u_soft = lif_sequence(c, LIFParams(lam, v_th, "soft"), record_membrane=True)
    assert float(u_soft[1]) == pytest.approx(0.5 * (1.5 - 1.0) + 0.2)  # 0.45: the decayed reset differs


@pytest.mark.parametrize("beta", [0.2, 0.5, 1.0, 3.0, 10.0])
def test_scale_a_and_the_derivative(beta):
    shape, p = GsgTanh(), torch.tensor(beta, dtype=torch.float64)
    a = max(1 / beta, 1)
    assert float(shape.scale(p)) == pytest.approx(a)
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    expected = a * beta * (1 - torch.tanh(beta * x) ** 2)
    torch.testing.assert_close(shape.grad(x, p), expected)
    # grad is the x-derivative of the primitive, grad_param its beta-derivative
    xg, pg = x.clone().requires_grad_(), p.clone().requires_grad_()
    shape.primitive(xg, pg).sum().backward()
    torch.testing.assert_close(xg.grad, expected)
    torch.testing.assert_close(pg.grad, shape.grad_param(x, p).sum())


def test_history_follows_the_schedule():
    r = run("gsg", epochs=4, method_options={"beta_min": 0.25, "beta_max": 4.0})
    betas = [row["beta/layers.2"] for row in r.history]
    assert betas == pytest.approx([0.25, 0.25 * 16 ** (1 / 3), 0.25 * 16 ** (2 / 3), 4.0], rel=1e-6)
    assert [row["a"] for row in r.history] == pytest.approx([4.0, 1 / betas[1], 1.0, 1.0], rel=1e-6)


@pytest.mark.parametrize("reset", ["hard", "soft", "soft_nodecay"])
def test_isnm_and_resets_train(reset):
    # ISNM: max pooling acts on currents before the neuron (carrier "current")
    r = run("gsg", data=digits(), epochs=5, batch_size=64, timesteps=4, model="conv", pool="max",
            carrier="current", reset=reset)
    assert r.model.config.carrier == "current" and r.model.config.reset == reset
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.summary["test_accuracy"] > 0.85


def test_gsg_with_a_flat_schedule_is_the_fixed_gsg_tanh_baseline():
    """beta_min = beta_max: GSG is sg with the gsg_tanh shape at that beta, run for run."""
    a = run("gsg", epochs=2, method_options={"beta_min": 2.0, "beta_max": 2.0})
    b = run("sg", epochs=2, surrogate="gsg_tanh", surrogate_param=2.0)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_the_eq_4_reset_runs_the_plain_loop_for_every_method():
    """soft_nodecay has no fused BPTT: the layer falls back to the plain loop, with the
    method's own spike (ASGL's dual mode included) and the same numbers as lif_sequence."""
    for method in ("asgl", "psg", "sg"):
        r = run(method, epochs=1, reset="soft_nodecay")
        assert r.model.config.reset == "soft_nodecay" and np.isfinite(r.history[-1]["train_loss"])


def test_fused_soft_nodecay_equals_the_plain_loop_with_gradients():
    from snn2hw.core.fused import fused_lif
    from snn2hw.core.neuron import LIFParams, lif_sequence
    from snn2hw.core.surrogate import Triangle, spike

    gen = torch.Generator().manual_seed(0)
    c1 = (torch.randn(5, 3, 7, generator=gen, dtype=torch.float64) + 0.8).requires_grad_()
    c2 = c1.detach().clone().requires_grad_()
    p = torch.tensor(1.5, dtype=torch.float64)
    s1 = fused_lif(c1, p, 0.5, 1.0, "soft_nodecay", Triangle())
    s2, _ = lif_sequence(c2, LIFParams(0.5, 1.0, "soft_nodecay"), lambda x: spike(x, Triangle(), p))
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    w = torch.randn(s1.shape, generator=gen, dtype=torch.float64)
    (s1 * w).sum().backward()
    (s2 * w).sum().backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=0, atol=0)


def test_gsg_grad_is_one_minus_tanh_squared_without_cancellation():
    """GSG's derivative at beta = 1 (a = 1) is ``1 - tanh^2`` (computed sigmoid-based,
    cheaper than tanh): equal to it in float64, and in float32 accurate where
    ``1 - tanh^2`` in float32 rounds to 0 (|z| around 9)."""
    shape = GsgTanh()
    z = torch.linspace(-12, 12, 2401, dtype=torch.float64)
    torch.testing.assert_close(shape.grad(z, torch.tensor(1.0, dtype=torch.float64)), 1 - torch.tanh(z) ** 2,
                               rtol=1e-12, atol=1e-15)
    z32 = torch.tensor([0.0, 0.3, -2.0, 9.0, -10.0])
    want = (1 - torch.tanh(z32.double()) ** 2).float()
    torch.testing.assert_close(shape.grad(z32, torch.tensor(1.0)), want, rtol=1e-6, atol=0)