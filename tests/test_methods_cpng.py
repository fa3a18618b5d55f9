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

from test_methods_contract import digits, run

SHAPES = [Triangle(), Rectangular(), Arctan()]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("beta,mu,sigma", [(1.0, 0.0, 1.0), (2.5, 0.7, 0.3), (0.4, -1.0, 2.0), (7.0, 1.1, 0.05)])
def test_k_matches_scipy_normal_cdf(shape, beta, mu, sigma):
    d = {"triangle": 1 / beta, "rectangular": 0.5 / beta, "arctan": 1 / beta}[shape.name]
    ref = norm.cdf(1.0 + d, mu, sigma) - norm.cdf(1.0 - d, mu, sigma)
    got = cpng_mod.k_indicator(beta, mu, sigma, 1.0, shape.half_width)
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("target", [0.05, 0.2, 0.45])
def test_binary_search_hits_the_target_k(shape, target):
    mu, sigma, beta0 = 0.8, 0.6, 1.0
    assert cpng_mod.k_indicator(beta0, mu, sigma, 1.0, shape.half_width) > target
    beta = cpng_mod.solve_beta(target, beta0, mu, sigma, 1.0, shape.half_width)
    assert beta > beta0
    assert cpng_mod.k_indicator(beta, mu, sigma, 1.0, shape.half_width) == pytest.approx(target, abs=1e-4)


def _fake_membranes(monkeypatch, schedule):
    """Make the probe return Gaussian membranes (mean, std) per layer, epoch by epoch."""
    calls = iter(schedule)

    def fake(model, x):
        gen = torch.Generator().manual_seed(0)
        return {name: mu + sd * torch.randn(4, 64, 200, generator=gen) for name, (mu, sd) in next(calls).items()}

    monkeypatch.setattr(cpng_mod, "probe_membranes", fake)


def _ctx(model, epoch):
    return MethodContext(model, epoch, 10, torch.zeros(1, 64), torch.zeros(1), lambda s, y: s.sum())


def test_a_layer_whose_k_rises_gets_a_larger_beta_and_beta_never_falls(monkeypatch):
    model = build_model(ModelConfig(hidden=(16, 16)))
    a, b = [n for n, _ in model.named_modules() if n.startswith("layers.") and type(_).__name__ == "LIF"]
    _fake_membranes(monkeypatch, [
        {a: (0.0, 1.0), b: (0.0, 1.0)},     # epoch 0: records k_rec
        {a: (1.0, 0.5), b: (-3.0, 1.0)},    # a concentrates at V_th (k rises); b drifts away (k falls)
        {a: (1.0, 0.2), b: (0.0, 1.0)},     # a rises again; b back to its start (k == k_rec... >= floor)
        {a: (-2.0, 2.0), b: (-4.0, 1.0)},   # both fall: nothing may decrease
    ])
    method = make_method("cpng")
    method.setup(model)
    rows = [method.on_epoch_end(_ctx(model, e)) for e in range(4)]
    beta = lambda r, n: r[f"beta/{n}"]  # noqa: E731
    assert beta(rows[0], a) == beta(rows[0], b) == 1.0
    assert beta(rows[1], a) > 1.0 and beta(rows[1], b) == 1.0
    # after the raise, k of a is back at its recorded value (the binary search's target)
    assert rows[1][f"k/{a}"] == pytest.approx(rows[0][f"k/{a}"], abs=1e-4)
    # b's k fell below k_limit: its record becomes k_limit; back at N(0,1) its k exceeds it, so beta rises
    assert method.k_rec[b] == pytest.approx(max(0.2, rows[1][f"k/{b}"]))
    assert beta(rows[2], a) > beta(rows[1], a) and beta(rows[2], b) > 1.0
    for n in (a, b):
        seq = [beta(r, n) for r in rows]
        assert seq == sorted(seq), f"beta of {n} decreased: {seq}"


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


def test_beta_is_monotone_in_a_real_run():
    r = run("cpng", epochs=4)
    seq = [row["beta/layers.2"] for row in r.history]
    assert seq == sorted(seq)


def test_trains_digits_mlp_above_90_percent():
    r = run("cpng", data=digits(), epochs=8, batch_size=64, timesteps=4)
    assert r.summary["test_accuracy"] > 0.90
