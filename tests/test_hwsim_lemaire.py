"""The Lemaire et al. 2022 energy model: hand-computed terms, and SpikingJelly 2.0's
implementation of it on the same networks (only where .venv-bench exists)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from snn2hw.core.layers import LIF
from snn2hw.errors import ConfigError
from snn2hw.hwsim import PROFILES, count_energy, lower
from snn2hw.hwsim.energy_models import ENERGY_MODELS, LemaireCosts, energy_model
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import SpikingNetwork

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "lemaire_vs_spikingjelly.py"
FP32 = PROFILES["45nm-fp32"]


def _bench_module():
    spec = importlib.util.spec_from_file_location("lemaire_vs_spikingjelly", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sram_cost_interpolates_the_papers_points():
    k = LemaireCosts()
    assert k.memory_pj_per_byte(8 * 1024) == pytest.approx(10 / 4)
    assert k.memory_pj_per_byte(20 * 1024) == pytest.approx(2.5 + 2.5 * 12 / 24)
    assert k.memory_pj_per_byte(4 * 1024) == pytest.approx(1.25)
    assert k.memory_pj_per_byte(1 << 30) == pytest.approx(100 / 4)  # clamped above 1 MB


def test_lemaire_terms_by_hand():
    """One IF layer fed 0/1 events, one readout: every term from the counted events."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 4), LIF(lam=1.0, v_th=0.5, reset="soft"), nn.Linear(4, 3, bias=False)]
    for m in layers[::2]:
        m.weight.data.abs_()
    net = lower(SpikingNetwork(ModelConfig(arch="mlp", input_shape=(6,), timesteps=2), layers).eval())
    x = torch.tensor([[[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]]], dtype=torch.float32)  # (B=1, T=2, 6)
    rep = count_energy(net, x, FP32, temporal=True, energy_model="lemaire")
    k, m1, nrn, m2 = LemaireCosts(), rep["layers"][0]["energy"], rep["neurons"][0]["energy"], rep["layers"][1]["energy"]
    mem = lambda words, size: 4 * words * k.memory_pj_per_byte(4 * size)  # noqa: E731
    e, ac = 5, 5 * 4                     # 5 input events, each reaching 4 neurons
    assert m1["ops"] == pytest.approx((ac + 4 * 2) * k.add_pj)          # + one bias add per neuron per step
    assert m1["addressing"] == pytest.approx(ac * k.add_pj)
    assert m1["inout"] == pytest.approx(mem(e, 1000))
    assert m1["params"] == pytest.approx(mem(ac + 8, 6 * 4 + 4))
    assert m1["potential"] == pytest.approx(2 * mem(ac, 4))
    s = rep["neurons"][0]["spikes_per_sample"]
    assert s > 0
    assert nrn["ops"] == pytest.approx(s * k.add_pj)                    # IF: no leak multiply
    assert nrn["potential"] == pytest.approx(2 * mem(4 * 2, 4)) and nrn["inout"] == pytest.approx(mem(s, 1000))
    assert m2["params"] == pytest.approx(mem(3 * s, 12))                # no bias
    assert rep["total"]["snn_pj"] == pytest.approx(m1["total"] + nrn["total"] + m2["total"])


def test_energy_model_registry_and_refusal():
    assert set(ENERGY_MODELS) >= {"compute", "lemaire"}
    with pytest.raises(ConfigError, match="unknown energy model 'x'; choose one of"):
        energy_model("x", FP32)


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv-bench" / "bin" / "python").exists(),
                    reason="no .venv-bench with SpikingJelly 2.0.0: run benchmarks/setup")
def test_lemaire_equals_spikingjelly():
    """MLPs (direct and event input, LIF and IF): every component equal. Conv: SpikingJelly
    charges k^2 targets per spike (and ceil(k/s)^2 adds), we the real fan-out; the spike
    FIFO and input terms, which do not depend on fan-out, are equal, the rest below theirs."""
    bench = _bench_module()
    for label, net, x, temporal in bench.networks():
        ours, ref = bench.ours(net, x, temporal), bench.reference(bench.spec_of(net, x, temporal))
        assert ours["spikes"] == pytest.approx(ref["spikes"], rel=1e-12), label
        if "conv" not in label:
            for key in (*bench.COMPONENTS, "total"):
                assert ours[key] == pytest.approx(ref[key], rel=1e-9), (label, key)
        else:
            assert ours["inout"] == pytest.approx(ref["inout"], rel=1e-9)
            for key in ("ops", "addressing", "params", "potential"):
                assert ours[key] < ref[key], key
