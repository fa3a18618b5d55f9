"""``--qat xylo`` on recurrent and feed-forward CUBA layers: the QAT forward computes, spike for
spike, what our Xylo emulator (= xylosim, tests/test_export_xylo.py) computes on the integers
the exporter writes for the same latent weights; gradients reach every latent weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snn2hw.core.layers import CUBA, RecurrentSpiking
from snn2hw.export.to_nir import model_to_nir
from snn2hw.export.xylo import emulator
from snn2hw.export.xylo.mapping import build_xylo_net
from snn2hw.models.config import ModelConfig
from snn2hw.train.qat import attach_qat, plan_sites

from cuba_models import bursting_cuba_model, qat_spikes

T, RANGE = 12, (-1.0, 1.0)


def _model(arch: str, hidden: tuple[int, ...], seed: int):
    return bursting_cuba_model(arch, hidden, seed, T)


def _is_cuba_layer(model):
    """A recurrent layer, or a CUBA neuron that is not one's own (the mlp's layers)."""
    owned = {id(r.neuron) for r in model.modules() if isinstance(r, RecurrentSpiking)}
    return lambda m: isinstance(m, RecurrentSpiking) or (isinstance(m, CUBA) and id(m) not in owned)


def _qat_spikes(model, x: torch.Tensor) -> list[np.ndarray]:
    """Per CUBA layer, its QAT spike counts (T, N, n)."""
    return qat_spikes(model, x, "xylo", RANGE, _is_cuba_layer(model))


@pytest.mark.parametrize("arch,hidden", [("srnn", (24,)), ("srnn", (16, 12)), ("mlp", (20,))])
def test_qat_forward_equals_the_xylo_emulator_to_the_spike(arch, hidden):
    model = _model(arch, hidden, seed=len(hidden) + hidden[0])
    x = torch.rand(T, 32, 3) * 2.4 - 1.2                        # temporal, both signs, some clipped
    qat = _qat_spikes(model, x)
    graph = model_to_nir(model, temporal=True)
    graph.metadata["input_range"] = list(RANGE)
    plan = build_xylo_net(graph)
    run = emulator.run(plan.spec, plan.events(x.numpy(), T))
    assert not run.saturated                                     # (the QAT step saturates after the sum)
    assert len(qat) == len(plan.layers) == len(hidden)
    for layer, counts in zip(plan.layers, qat):
        chip = run.hidden_spikes[layer.lag:layer.lag + T, :, layer.ids]
        assert chip.mean() > 0.1 and (chip > 1).any()             # active, with bursts: the rules matter
        np.testing.assert_array_equal(counts, chip, err_msg=layer.neuron)
    assert plan.layers[0].lam[0] == 0.875 and plan.layers[0].alpha[0] == 0.75


def test_gradients_reach_input_recurrent_and_bias_weights():
    model = _model("srnn", (10,), seed=3).train()
    handle = attach_qat(model, "xylo", RANGE)
    model(torch.rand(T, 8, 3)).sum().backward()
    handle.detach()
    for name, p in model.named_parameters():
        if not name.endswith("shape_param"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(k not in m.__dict__ for m in model.modules() for k in ("forward", "step", "weight"))


def test_recurrent_layer_is_one_site_with_its_neuron_and_recurrent_weights():
    model = _model("srnn", (6, 5), seed=0)
    sites = plan_sites(model, 1 / 15)
    assert [s.lif is not None for s in sites] == [True, True, False]         # the readout has none
    rec = [m for m in model.modules() if isinstance(m, RecurrentSpiking)]
    assert [s.recurrent for s in sites[:2]] == [r.recurrent for r in rec]
    assert [s.cuba for s in sites[:2]] == [r.neuron for r in rec]


def test_a_bursting_neuron_passes_gradient_through_its_count():
    """Vmem 10 thresholds up: 10 spikes (xylosim's rule), and d count / d current = G / (alpha_eff
    threshold) from the floor's straight-through part, where the surrogate alone gives 0."""
    from snn2hw.core.neuron import cuba_initial_state
    from snn2hw.core.surrogate import Triangle, default_param, spike
    from snn2hw.export.xylo.grid import XyloStep

    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    step = XyloStep(gain=one(50), alpha_eff=one(0.5), dash_syn=one(1), dash_mem=one(15), threshold=one(51))
    c = torch.tensor([10.0], requires_grad=True)    # c G / alpha_eff = 1000 units; Isyn = 500 after its decay
    s, state = step(c, cuba_initial_state(c.detach()), lambda x: spike(x, Triangle(), torch.tensor(default_param(Triangle()))))
    assert s.item() == 9 and state.u.item() * 50 == pytest.approx(500)           # 500 // 51 (from Vmem 0: no leak)
    s.backward()
    assert c.grad.item() == pytest.approx(50 / 0.5 * 0.5 / 51, rel=1e-5)       # dIsyn/dc (after decay) / threshold


def test_analog_sequences_have_an_input_range_event_counts_do_not():
    from snn2hw.data.datasets import DataSplit

    def split(x):
        return DataSplit("s", x, torch.zeros(len(x)), x, torch.zeros(len(x)), 2, temporal=True)

    assert split(torch.tensor([[[-0.5], [2.0]]])).value_range == (-0.5, 2.0)     # mnist1d-seq-like
    assert split(torch.tensor([[[0.0], [3.0]]])).value_range is None             # spike counts
    assert split(torch.tensor([[[0.0], [0.25]]])).value_range == (0.0, 0.25)


def test_export_checks_a_qat_xylo_run_against_its_forward_on_the_grid(tmp_path):
    """A run fine-tuned with --qat xylo is checked against the forward it was trained with:
    spike agreement 1 (the QAT step is the chip's); the plain float forward would not be."""
    import json

    from snn2hw.errors import VerificationError
    from snn2hw.export.api import export_model
    from snn2hw.train.config import RunConfig
    from snn2hw.train.trainer import train

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.2, 1.2, (160, T, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int64) + (x[:, :, 1].sum(1) > 0)
    np.savez(tmp_path / "seq.npz", x=x, y=y, temporal=True)
    cfg = RunConfig(dataset=f"npz:{tmp_path / 'seq.npz'}", epochs=1, batch_size=40, qat="xylo", lr=3e-3,
                    model=ModelConfig(arch="srnn", hidden=(12,), neuron="cuba", alpha=0.5, lam=0.875,
                                      reset="soft", v_th=0.5))
    train(cfg, tmp_path / "run", progress=False)
    try:
        export_model(tmp_path / "run", "xylo", tmp_path / "out", check=True, samples=32, allow_emulator=True)
    except VerificationError:
        pass                                   # the numbers below are what this test is about
    v = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert v["details"]["spike_counts"]["layers_2_neuron_lif"]["reference"] > 0
    assert list(v["spike_agreement"].values()) == [1.0]
    assert v["details"]["reference"] == "trained model on the xylo grid (--qat xylo)"
