"""The noise simulator: exact at zero noise, per-chip weights right, spreads as requested."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy import stats
from torch import nn

from snn2hw.core.layers import LIF, TDBatchNorm
from snn2hw.hwsim import NoiseSpec, QuantSpec, lower, run, sample_chips, simulate
from snn2hw.hwsim.graph import ChipParams, RunNoise
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import SpikingNetwork, build_model, record_spikes
from snn2hw.runs.model import evaluate_model

CONFIGS = {
    "mlp": ModelConfig(arch="mlp", input_shape=(1, 8, 8), hidden=(48, 24)),
    "conv_tdbn": ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(6, 8)),
    "conv_current": ModelConfig(arch="conv", input_shape=(2, 12), channels=(4, 6), carrier="current",
                                fc_hidden=16, pool="max", lam=0.8),
    "conv1d_nobn": ModelConfig(arch="conv", input_shape=(2, 12), channels=(4, 6), tdbn=False,
                               fc_hidden=16, lam=0.8),
    "resnet_soft": ModelConfig(arch="resnet18", input_shape=(3, 12, 12), width=2, reset="soft"),
}


class Recorder:
    def __init__(self):
        self.spikes: dict[str, torch.Tensor] = {}

    def synapse(self, op, x, nlead):
        pass

    def neuron(self, op, s):
        self.spikes[op.name] = s.clone()


def _model(key: str, seed: int = 0) -> SpikingNetwork:
    torch.manual_seed(seed)
    m = build_model(CONFIGS[key]).eval()
    for mod in m.modules():  # non-trivial BN statistics so folding matters
        if isinstance(mod, TDBatchNorm):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 2.0)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


@pytest.mark.parametrize("key", list(CONFIGS))
@pytest.mark.parametrize("temporal", [False, True])
def test_zero_noise_reproduces_reference_spikes_exactly(key, temporal):
    m = _model(key)
    g = torch.Generator().manual_seed(1)
    shape = CONFIGS[key].input_shape
    x = (torch.rand(3, 40, *shape, generator=g) > 0.6).float() if temporal else \
        2.5 * torch.rand(40, *shape, generator=g)
    with torch.inference_mode(), record_spikes(m) as ref:
        ref_out = m.forward_sequence(x)
    net = lower(m)
    rec = Recorder()
    chips = 3
    params = sample_chips(net, NoiseSpec(), chips, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = run(net, x, params, RunNoise(), observer=rec)
    assert set(rec.spikes) == set(ref)
    n_spikes = 0
    for name, r in ref.items():
        for c in range(chips):
            assert torch.equal(rec.spikes[name][:, :, c], r[0]), f"{name} chip {c}"
        n_spikes += int(r[0].sum())
    assert n_spikes > 0
    assert torch.equal(out, ref_out.unsqueeze(2).expand_as(out))


def test_zero_noise_accuracy_equals_model_evaluation():
    m = _model("conv_tdbn")
    x = 2 * torch.rand(64, 1, 8, 8)
    y = m(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10  # some wrong labels so accuracy is not trivially 1
    acc, _ = evaluate_model(m, x, y)
    res = simulate(lower(m), x, y, NoiseSpec(), chips=4, batch_size=17)
    assert res.accuracy == [acc] * 4


@pytest.mark.parametrize("key", ["mlp", "conv1d_nobn"])
def test_per_chip_weights_equal_the_model_with_those_weights(key):
    """The batched (bmm / grouped conv) path = the model run with chip c's weights."""
    m = _model(key)
    net = lower(m)
    params = sample_chips(net, NoiseSpec(mismatch=0.2, mismatch_params=("weights",)), 3,
                          torch.Generator().manual_seed(5))
    x = 2 * torch.rand(30, *CONFIGS[key].input_shape)
    with torch.inference_mode():
        out = run(net, x, params)
    synapses = {op.name: op for op in net.synapses()}
    for c in range(3):
        mc = copy.deepcopy(m)
        for name, mod in mc.named_modules():
            if name in params.weights:
                w, b = params.weights[name]
                mod.weight.data.copy_(w[c])
                mod.bias.data.copy_(b[c])
                assert not torch.equal(w[c], synapses[name].weight)
        with torch.inference_mode():
            ref = mc.forward_sequence(x)
        torch.testing.assert_close(out[:, :, c], ref, atol=1e-4, rtol=1e-4)


def test_mismatch_spread_matches_request():
    """(psi'/psi - 1)/xi is standard normal for weights, thresholds and decays (KS + chi2)."""
    m = _model("mlp")
    net = lower(m)
    xi = 0.1
    p = sample_chips(net, NoiseSpec(mismatch=xi), 200, torch.Generator().manual_seed(123))
    syn = net.synapses()[0]
    neuron = net.neurons()[0]
    samples = {
        "weights": (p.weights[syn.name][0] / syn.weight - 1) / xi,
        "bias": (p.weights[syn.name][1] / syn.bias - 1) / xi,
        "thresholds": (p.v_th[neuron.name] / neuron.v_th - 1) / xi,
        "decays": (p.lam[neuron.name] / neuron.lam - 1) / xi,
    }
    for name, z in samples.items():
        z = z.flatten().double().numpy()
        z = z[:20000]
        assert stats.kstest(z, "norm").pvalue > 0.01, name
        chi2 = float((z ** 2).sum())
        pv = stats.chi2.cdf(chi2, df=len(z))
        assert 0.005 < pv < 0.995, (name, chi2 / len(z))
    # drawn once per chip: different chips differ, the nominal network is untouched
    w = p.weights[syn.name][0]
    assert not torch.equal(w[0], w[1])
    assert torch.equal(net.synapses()[0].weight, syn.weight)


def _single_layer(c0: float, n: int = 1000) -> SpikingNetwork:
    lin = nn.Linear(1, n, bias=False)
    lin.weight.data.fill_(c0)
    layers = [lin, LIF(lam=0.5, v_th=1.0), nn.Linear(n, 2)]
    return SpikingNetwork(ModelConfig(arch="mlp", input_shape=(1,), hidden=(n,), timesteps=3), layers).eval()


def test_thermal_noise_std_is_relative_to_threshold():
    """P(spike at t=0) = P(c0 + sigma V_th eps > V_th) = Phi_sf((V_th - c0)/(sigma V_th))."""
    c0, sigma = 0.9, 0.1
    net = lower(_single_layer(c0))
    rec = Recorder()
    with torch.inference_mode():
        run(net, torch.ones(40, 1), ChipParams(chips=2),
            RunNoise(thermal=sigma, generator=torch.Generator().manual_seed(7)), observer=rec)
    s0 = rec.spikes["layers.1"][0]
    k, n = int(s0.sum()), s0.numel()
    p = stats.norm.sf((1.0 - c0) / sigma)
    assert stats.binomtest(k, n, p).pvalue > 0.001, (k / n, p)
    with torch.inference_mode():  # without noise nobody reaches threshold at t=0
        run(net, torch.ones(4, 1), ChipParams(chips=2), observer=rec)
    assert rec.spikes["layers.1"][0].sum() == 0


def test_spike_loss_and_dead_neurons():
    net = lower(_single_layer(1.5))  # every neuron fires at every other step without noise
    rec = Recorder()
    with torch.inference_mode():
        run(net, torch.ones(20, 1), ChipParams(chips=2), observer=rec)
        base = rec.spikes["layers.1"].mean().item()
        run(net, torch.ones(20, 1), ChipParams(chips=2),
            RunNoise(spike_loss=0.3, generator=torch.Generator().manual_seed(3)), observer=rec)
        lossy = rec.spikes["layers.1"].mean().item()
        params = sample_chips(net, NoiseSpec(dead=0.25), 2, torch.Generator().manual_seed(4))
        run(net, torch.ones(20, 1), params, observer=rec)
    assert base > 0.4
    assert lossy == pytest.approx(0.7 * base, rel=0.03)
    silent = (rec.spikes["layers.1"].sum(dim=(0, 1)) == 0).double().mean().item()
    assert silent == pytest.approx(0.25, abs=0.03)


def test_quantisation_grid_and_saturation():
    m = _model("mlp")
    net = lower(m)
    q = QuantSpec("t", weight_bits=4, state_bits=5, decay_bits=3)
    p = sample_chips(net, NoiseSpec(quant=q), 2, torch.Generator().manual_seed(0))
    for op in net.synapses():
        w = p.weights[op.name][0][0]
        lsb = float(op.weight.abs().max()) / 7
        levels = torch.unique(torch.round(w / lsb))
        assert levels.abs().max() <= 7 and len(levels) <= 15
        assert float((w - op.weight).abs().max()) <= lsb / 2 + 1e-6
    neuron = net.neurons()[0]
    assert float(p.lam[neuron.name].unique()[0]) == 0.5  # 0.5 is on the 3-bit grid
    qf = p.state_q[neuron.name]
    lsb = float(net.synapses()[0].weight.abs().max()) / 7
    u = torch.tensor([1e6, -1e6, 0.26 * lsb, 0.74 * lsb])
    assert torch.allclose(qf(u), torch.tensor([15 * lsb, -15 * lsb, 0.0, lsb]))
    x = 2 * torch.rand(50, 1, 8, 8)
    res = simulate(net, x, m(x).argmax(1), NoiseSpec(quant=q), chips=2)
    assert res.accuracy[0] == res.accuracy[1] and 0.2 < res.accuracy[0] <= 1.0


class CallLog:
    """Every observer call with a copy of what it was shown."""

    def __init__(self):
        self.calls: list[tuple[str, torch.Tensor]] = []

    def synapse(self, op, x, nlead):
        self.calls.append((op.name, x.clone()))

    def neuron(self, op, s):
        self.calls.append((op.name, s.clone()))


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_run_without_outputs_shows_the_observer_the_same_calls(key, monkeypatch):
    """``run(outputs=False)`` (count_energy's run): every synapse and neuron is shown the
    same tensors as in a full run, the last synapse (the readout) is shown its input but
    not applied, and nothing is returned."""
    import snn2hw.hwsim.graph as graph
    net = lower(_model(key))
    x = 2.5 * torch.rand(6, *CONFIGS[key].input_shape, generator=torch.Generator().manual_seed(2))
    applied = []
    apply = graph._apply_synapse
    monkeypatch.setattr(graph, "_apply_synapse", lambda op, *a: applied.append(op.name) or apply(op, *a))
    full, counted = CallLog(), CallLog()
    with torch.inference_mode():
        assert run(net, x, observer=full) is not None
        n_full = len(applied)
        assert run(net, x, observer=counted, outputs=False) is None
    assert [n for n, _ in counted.calls] == [n for n, _ in full.calls]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(counted.calls, full.calls))
    assert applied[:n_full] == applied[n_full:] + [net.ops[-1].name]
