"""GSG: the log-linear schedule, a = max(1/beta, 1), and the ISNM / soft-reset options."""

from __future__ import annotations

import math

import pytest
import torch

from snn2hw.core.surrogate import GsgTanh
from snn2hw.methods.gsg import gsg_beta

from test_methods_contract import digits, run


def test_schedule_endpoints_and_log_linearity():
    assert gsg_beta(0, 50, 0.5, 10.0) == pytest.approx(0.5)
    assert gsg_beta(50, 50, 0.5, 10.0) == pytest.approx(10.0)
    mid = gsg_beta(25, 50, 0.5, 10.0)
    assert mid == pytest.approx(math.sqrt(0.5 * 10.0))  # geometric mean half way
    logs = [math.log(gsg_beta(e, 50, 0.5, 10.0)) for e in range(51)]
    steps = [b - a for a, b in zip(logs, logs[1:])]
    assert max(steps) - min(steps) < 1e-12


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
    assert betas == pytest.approx([gsg_beta(e, 4, 0.25, 4.0) for e in range(4)], rel=1e-6)
    assert [row["a"] for row in r.history] == pytest.approx([max(1 / b, 1) for b in betas], rel=1e-6)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_isnm_and_soft_reset_train(reset):
    # ISNM: max pooling acts on currents before the neuron (carrier "current")
    r = run("gsg", data=digits(), epochs=5, batch_size=64, timesteps=4, model="conv", pool="max",
            carrier="current", reset=reset)
    assert r.model.config.carrier == "current" and r.model.config.reset == reset
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.summary["test_accuracy"] > 0.85


def test_trains_digits_mlp_above_90_percent():
    r = run("gsg", data=digits(), epochs=8, batch_size=64, timesteps=4)
    assert r.summary["test_accuracy"] > 0.90
