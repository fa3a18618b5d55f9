"""The recurrent spiking layer and the srnn model: the forward against the
equations written out independently, BPTT through the recurrence (surrogate
gradient against autograd of that reference; gradcheck on a smooth spike), the
hooks the training methods rely on, and the model built from its config."""

from __future__ import annotations

import itertools

import pytest
import torch

from snn2hw.core.layers import CUBA, LIF, RecurrentSpiking
from snn2hw.core.surrogate import Triangle, heaviside, spike
from snn2hw.methods._util import probe_membranes
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model, record_spikes


def reference(c, w_rec, alpha, lam, v_th, reset, spike_fn):
    """The recurrent CUBA/LIF layer's equations, written out (alpha = 0: LIF):
    i = alpha i + c[t] + W_rec s,  u = lam u (1 - s) + i  (hard) | lam (u - V_th s) + i  (soft),
    s = spike(u - V_th); returns spikes and membranes (T, B, H)."""
    i = u = s = torch.zeros_like(c[0])
    spikes, membranes = [], []
    for t in range(c.shape[0]):
        i = alpha * i + (c[t] + s @ w_rec.T)
        u = lam * u * (1 - s) + i if reset == "hard" else lam * (u - v_th * s) + i
        s = spike_fn(u - v_th)
        spikes.append(s), membranes.append(u)
    return torch.stack(spikes), torch.stack(membranes)


def make_layer(neuron: str, width: int, lam: float, reset: str, alpha: float = 0.6, seed: int = 0):
    torch.manual_seed(seed)
    cell = CUBA(alpha, lam, 1.0, reset) if neuron == "cuba" else LIF(lam, 1.0, reset)
    layer = RecurrentSpiking(width, cell).double()
    with torch.no_grad():
        layer.recurrent.weight.mul_(3.0)  # strong recurrence: spikes change the next steps
    return layer, (alpha if neuron == "cuba" else 0.0)


def currents(T=8, B=3, H=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, H, generator=g, dtype=torch.float64) * 0.9 + 0.4).requires_grad_()


CASES = list(itertools.product(["lif", "cuba"], ["hard", "soft"], [0.5, 1.0]))


@pytest.mark.parametrize("neuron,reset,lam", CASES)
def test_forward_matches_the_equations(neuron, reset, lam):
    layer, alpha = make_layer(neuron, 5, lam, reset)
    c = currents().detach()
    lif = layer.neuron if neuron == "lif" else layer.neuron.lif
    lif.record_membrane = True
    s = layer.train()(c)
    s_ref, u_ref = reference(c, layer.recurrent.weight.detach(), alpha, lam, 1.0, reset, heaviside)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(lif.last_membrane, u_ref, rtol=0, atol=1e-12)
    # the recurrence matters here: without W_rec the spikes differ
    s_ff, _ = reference(c, torch.zeros(5, 5, dtype=c.dtype), alpha, lam, 1.0, reset, heaviside)
    assert not torch.equal(s_ff, s_ref) and 0 < s.mean() < 1


@pytest.mark.parametrize("neuron,reset,lam", CASES)
def test_surrogate_bptt_matches_autograd_of_the_reference(neuron, reset, lam):
    layer, alpha = make_layer(neuron, 5, lam, reset)
    shape = Triangle(1.0)
    w = layer.recurrent.weight
    c = currents()
    go = torch.randn(c.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s_ref, _ = reference(c, w, alpha, lam, 1.0, reset, lambda x: spike(x, shape, torch.tensor(1.0)))
    g_ref = torch.autograd.grad(s_ref, (c, w), go)
    g = torch.autograd.grad(layer(c), (c, w), go)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert g_ref[1].abs().sum() > 0  # the recurrent weights do get a gradient


@pytest.mark.parametrize("neuron,reset", list(itertools.product(["lif", "cuba"], ["hard", "soft"])))
def test_gradcheck_with_a_smooth_spike(neuron, reset):
    """With a smooth spike the layer is a differentiable function: its autograd gradient
    (BPTT through recurrence, reset and filter) must equal finite differences."""
    layer, alpha = make_layer(neuron, 3, 0.8, reset)
    lif = layer.neuron if neuron == "lif" else layer.neuron.lif
    lif.spike_strategy = lambda x: torch.sigmoid(3.0 * x)
    c = currents(T=5, B=2, H=3)
    w = layer.recurrent.weight.detach().clone().requires_grad_()

    def run(c, w):
        return torch.func.functional_call(layer, {"recurrent.weight": w}, (c,))

    assert torch.autograd.gradcheck(run, (c, w))
    smooth = lambda x: torch.sigmoid(3.0 * x)  # noqa: E731
    torch.testing.assert_close(run(c, w), reference(c, w, alpha, 0.8, 1.0, reset, smooth)[0],
                               rtol=0, atol=1e-12)


def srnn(**kw):
    cfg = ModelConfig(arch="srnn", input_shape=(1,), num_classes=4, hidden=(6, 5), timesteps=7, **kw)
    return build_model(cfg)


@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_srnn_model_runs_the_layers_in_order(neuron):
    torch.manual_seed(0)
    model = srnn(neuron=neuron, alpha=0.3, lam=0.9).double()
    x = torch.randn(7, 3, 1, dtype=torch.float64) * 2  # temporal input (T, B, 1)
    l = model.layers
    assert [type(m).__name__ for m in l] == ["Flatten", "Linear", "RecurrentSpiking", "Linear",
                                            "RecurrentSpiking", "Linear"]
    assert all(isinstance(m.neuron, CUBA if neuron == "cuba" else LIF) for m in (l[2], l[4]))
    alpha = 0.3 if neuron == "cuba" else 0.0
    h, rec = x, []
    for lin, rnn in ((l[1], l[2]), (l[3], l[4])):
        h, _ = reference(lin(h), rnn.recurrent.weight, alpha, 0.9, 1.0, "hard", heaviside)
        rec.append(h)
    expected = l[5](h).mean(0)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)
    # spike recording and membrane probes see the recurrent layers under their LIF's name
    lifs = [n for n, m in model.named_modules() if isinstance(m, LIF)]
    with torch.no_grad(), record_spikes(model) as spikes:
        model(x)
    assert list(spikes) == lifs and all(torch.equal(spikes[n][0], r) for n, r in zip(lifs, rec))
    membranes = probe_membranes(model, x)
    assert list(membranes) == lifs and membranes[lifs[0]].shape == (7, 3, 6)


def test_cuba_mlp_and_static_input():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", input_shape=(4,), hidden=(8,), neuron="cuba", alpha=0.5))
    assert isinstance(model.layers[2], CUBA)
    out = model(torch.rand(5, 4))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    static = srnn()(torch.rand(3, 1))  # a static sample is direct-encoded over T
    assert static.shape == (3, 4)


def test_config_refuses_unknown_neuron_and_alpha():
    with pytest.raises(ValueError, match="neuron"):
        ModelConfig(neuron="izhikevich")
    with pytest.raises(ValueError, match="alpha"):
        ModelConfig(neuron="cuba", alpha=1.5)


def test_a_run_on_event_data_records_the_data_steps_as_its_timesteps():
    """Export and hwsim unroll config.timesteps: for (B, T, ...) data it must be T, not the default."""
    import torch

    from snn2hw.data.datasets import DataSplit
    from snn2hw.train.config import build_config
    from snn2hw.train.trainer import model_config_for

    x = torch.zeros(10, 7, 3)          # 10 samples of 7 steps x 3 channels
    data = DataSplit("ev", x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long), 2,
                     temporal=True)
    cfg = model_config_for(build_config({"arch": "srnn", "hidden": [4], "timesteps": 4}), data)
    assert cfg.timesteps == 7 and tuple(cfg.input_shape) == (3,)
