"""CPNG: the effective-domain indicator k, the binary search and the beta control."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

from snn2hw.core.surrogate import Arctan, Rectangular, Triangle
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.methods import cpng as cpng_mod
from snn2hw.methods import make_method
from snn2hw.methods.base import MethodContext

from test_methods_contract import run

SHAPES = [Triangle(), Rectangular(), Arctan()]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("beta,mu,sigma", [(1.0, 0.0, 1.0), (2.5, 0.7, 0.3), (0.4, -1.0, 2.0), (7.0, 1.1, 0.05)])
def test_k_matches_scipy_normal_cdf(shape, beta, mu, sigma):
    d = {"triangle": 1 / beta, "rectangular": 0.5 / beta, "arctan": 1 / beta}[shape.name]
    ref = norm.cdf(1.0 + d, mu, sigma) - norm.cdf(1.0 - d, mu, sigma)
    got = cpng_mod.k_indicator(beta, mu, sigma, 1.0, shape.half_width)
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("target", [0.05, 0.2, 0.45, 0.9])
@pytest.mark.parametrize("beta0", [1.0, 20.0])
def test_binary_search_hits_the_target_k_in_either_direction(shape, target, beta0):
    mu, sigma = 0.8, 0.6
    k0 = cpng_mod.k_indicator(beta0, mu, sigma, 1.0, shape.half_width)
    beta, reached = cpng_mod.solve_beta(target, beta0, mu, sigma, 1.0, shape.half_width)
    assert reached
    assert cpng_mod.k_indicator(beta, mu, sigma, 1.0, shape.half_width) == pytest.approx(target, abs=1e-4)
    # k falls as beta rises: a target above k0 needs a wider surrogate (smaller beta)
    assert (beta < beta0) if target > k0 else (beta > beta0)


def test_an_unreachable_target_returns_the_bound_and_says_so():
    # sigma ~ 0 at mu = V_th: k = 1 for every beta, so k = 0.2 cannot be reached
    beta, reached = cpng_mod.solve_beta(0.2, 1.0, 1.0, 1e-14, 1.0, Triangle().half_width)
    assert beta == cpng_mod.BETA_MAX and not reached


def _fake_membranes(monkeypatch, schedule):
    """Make the probe return Gaussian membranes (mean, std) per layer, epoch by epoch."""
    calls = iter(schedule)

    def fake(model, x):
        gen = torch.Generator().manual_seed(0)
        return {name: mu + sd * torch.randn(4, 64, 200, generator=gen) for name, (mu, sd) in next(calls).items()}

    monkeypatch.setattr(cpng_mod, "probe_membranes", fake)


def _ctx(model, epoch):
    return MethodContext(model, epoch, 10, torch.zeros(1, 64), torch.zeros(1), lambda s, y: s.sum())


def _two_layers():
    model = build_model(ModelConfig(hidden=(16, 16)))
    a, b = [n for n, m in model.named_modules() if n.startswith("layers.") and type(m).__name__ == "LIF"]
    return model, a, b


def test_a_layer_whose_k_rises_gets_a_larger_beta_and_k_back_at_its_record(monkeypatch):
    model, a, b = _two_layers()
    _fake_membranes(monkeypatch, [
        {a: (0.0, 1.0), b: (0.0, 1.0)},     # epoch 0: records k_rec
        {a: (1.0, 0.5), b: (0.0, 1.0)},     # a concentrates at V_th (k rises); b unchanged
    ])
    method = make_method("cpng")
    method.setup(model)
    rows = [method.on_epoch_end(_ctx(model, e)) for e in range(2)]
    assert rows[0][f"beta/{a}"] == rows[0][f"beta/{b}"] == 1.0
    assert rows[1][f"beta/{a}"] > 1.0
    assert rows[1][f"k/{a}"] == pytest.approx(rows[0][f"k/{a}"], abs=1e-4)   # k_min = k_rec
    assert rows[1][f"beta/{b}"] == 1.0   # same k as recorded: k_min == k_cur, beta stays


def test_a_layer_whose_k_falls_below_k_limit_gets_a_smaller_beta_and_k_limit(monkeypatch):
    """Algorithm 1 read literally (methods.md): k_rec < k_limit -> k_rec = k_limit, and
    k_min != k_cur moves beta, here DOWN. A one-sided rule ("beta never decreases")
    leaves beta at its too-sharp start and fails this test."""
    model, a, b = _two_layers()
    for _, m in cpng_mod.named_lifs(model):
        m.shape_param.fill_(20.0)                 # too sharp: k ~ 0.03 < k_limit
    _fake_membranes(monkeypatch, [
        {a: (0.0, 1.0), b: (0.5, 1.0)},
        {a: (0.0, 1.0), b: (0.5, 1.0)},
    ])
    method = make_method("cpng", {"k_limit": 0.2})
    method.setup(model)
    rows = [method.on_epoch_end(_ctx(model, e)) for e in range(2)]
    for n in (a, b):
        assert rows[0][f"k/{n}"] < 0.2 and rows[0][f"beta/{n}"] == 20.0
        assert rows[1][f"beta/{n}"] < 20.0
        assert rows[1][f"k/{n}"] == pytest.approx(0.2, abs=1e-4)
        # the new beta by hand (triangle, d = 1/beta) on the measured mean and std
        d, mu, sd = 1.0 / rows[1][f"beta/{n}"], rows[1][f"mu/{n}"], rows[1][f"sigma/{n}"]
        assert norm.cdf(1.0 + d, mu, sd) - norm.cdf(1.0 - d, mu, sd) == pytest.approx(0.2, abs=1e-4)
        assert method.k_rec[n] == 0.2


def test_k_rec_follows_algorithm_1_line_by_line():
    m = make_method("cpng", {"k_limit": 0.2})
    m.k_rec = {"l": 0.1}
    assert m.update_k_rec("l", 0.5) == 0.2      # below the floor: raised to k_limit
    assert m.update_k_rec("l", 0.15) == 0.15    # k fell: recorded (even below the floor)
    assert m.update_k_rec("l", 0.3) == 0.2      # record below the floor again: k_limit
    assert m.update_k_rec("l", 0.6) == 0.2      # k rose: record kept, beta must rise to it


def test_state_dict_round_trip():
    m = make_method("cpng", {"k_limit": 0.3})
    m.k_rec = {"layers.2": 0.61}
    n = make_method("cpng", {"k_limit": 0.3})
    n.load_state_dict(m.state_dict())
    assert n.k_rec == {"layers.2": 0.61}


def test_rejects_a_surrogate_without_a_support():
    from snn2hw.errors import ConfigError

    with pytest.raises(ConfigError, match="sigmoid"):
        make_method("cpng").setup(build_model(ModelConfig(surrogate="sigmoid")))


def test_a_too_sharp_start_widens_in_a_real_run_and_differs_from_sg():
    """From beta0 = 20 (k << k_limit) CPNG lowers beta after epoch 0 and k sits at
    k_limit; plain sg from the same start keeps beta = 20 and ends elsewhere."""
    kw = dict(epochs=3, surrogate="triangle", surrogate_param=20.0)
    r = run("cpng", **kw)
    betas = [row["beta/layers.2"] for row in r.history]
    assert betas[0] == 20.0 and betas[1] < 20.0
    assert r.history[1]["k/layers.2"] == pytest.approx(0.2, abs=1e-4)
    base = run("sg", **kw)
    assert base.history[-1]["train_loss"] != r.history[-1]["train_loss"]
