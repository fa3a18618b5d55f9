"""``--qat loihi`` on recurrent CUBA layers: the QAT forward computes, spike for spike, what our
Loihi graph emulator (= Lava, tests/test_export_loihi_graph.py) computes on the integers
``graph.build_loihi_graph`` writes for the same latent weights; gradients reach every weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snn2hw.core.layers import RecurrentSpiking
from snn2hw.export.loihi import emulator
from snn2hw.export.loihi.graph import BIAS_CHANNEL, build_loihi_graph
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.train.qat import attach_qat

from cuba_models import qat_spikes

T, RANGE = 12, (-1.0, 1.0)


def _model(hidden: tuple[int, ...], seed: int, alpha: float = 0.7, lam: float = 0.9):
    """A hard-reset CUBA srnn with off-grid decays (alpha 0.7: du = 1229, lam 0.9: dv = 410),
    biases large enough to matter and W_rec the largest weights."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="srnn", input_shape=(4,), hidden=hidden, num_classes=3, timesteps=T,
                                    neuron="cuba", alpha=alpha, lam=lam, reset="hard", v_th=1.0))
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, torch.nn.Linear) and layer.out_features != 3:
                layer.weight.mul_(1.5)
                layer.bias.uniform_(-0.3, 0.5)
            elif isinstance(layer, RecurrentSpiking):
                layer.recurrent.weight.mul_(4.0)              # W_rec sets the gain: its column counts
    return model.eval()


def _qat_spikes(model, x: torch.Tensor) -> list[np.ndarray]:
    return qat_spikes(model, x, "loihi", RANGE, lambda m: isinstance(m, RecurrentSpiking))


def _chip_spikes(model, x: torch.Tensor, alpha: float) -> list[np.ndarray]:
    graph = model_to_nir(model, temporal=True)
    graph.metadata["input_range"] = list(RANGE)               # graded input, 16 levels, as QAT's
    net = build_loihi_graph(graph)
    assert net.input_levels == 16
    assert net.info[BIAS_CHANNEL] == [n.name for n in net.neurons]   # every bias on the always-on channels
    got = emulator.run_graph(net, net.quantise_input(x.numpy()))
    return [got[n.name] for n in net.neurons]


@pytest.mark.parametrize("hidden,alpha", [((24,), 0.7), ((16, 12), 0.7), ((10,), 0.3), ((12,), 0.0)])
def test_qat_forward_equals_the_loihi_graph_emulator_to_the_spike(hidden, alpha):
    model = _model(hidden, seed=len(hidden) + hidden[0], alpha=alpha)
    x = torch.rand(T, 64, 4) * 2.4 - 1.2                        # temporal, both signs, some clipped
    qat, chip = _qat_spikes(model, x), _chip_spikes(model, x, alpha)
    assert len(qat) == len(chip) == len(hidden)
    for got, want in zip(qat, chip):
        assert 0.1 < want.mean() < 0.9                            # active: the rules matter
        np.testing.assert_array_equal(got, want)
    # the float model differs from the chip: the test sees the grid, not just the model
    with torch.no_grad():
        float_out = [None]
        h = next(m for m in model.modules() if isinstance(m, RecurrentSpiking)).register_forward_hook(
            lambda mod, inp, out: float_out.__setitem__(0, out.numpy()))
        model(x)
        h.remove()
    assert (float_out[0] != chip[0]).any()


def test_gradients_reach_input_recurrent_and_bias_weights():
    model = _model((10,), seed=3).train()
    handle = attach_qat(model, "loihi", RANGE)
    model(torch.rand(T, 8, 4)).sum().backward()
    handle.detach()
    for name, p in model.named_parameters():
        if not name.endswith("shape_param"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(k not in m.__dict__ for m in model.modules() for k in ("forward", "step", "weight"))
