"""Synaptic-operation counts against NeuroBench, a brute-force count and hand formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from snn2hw.core.layers import LIF
from snn2hw.errors import ConfigError
from snn2hw.hwsim import PROFILES, count_energy, fan_out, get_profile, lower
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import SpikingNetwork, build_model, record_spikes

FP32 = PROFILES["45nm-fp32"]


def _strided_net(seed: int = 0) -> SpikingNetwork:
    """Convs with stride, padding, dilation, groups and odd sizes, fed by spikes."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 4, 3, stride=2, padding=1), LIF(v_th=0.3),
              nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), groups=2),
              LIF(v_th=0.3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)]
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.abs_()  # positive weights: plenty of spikes; none is exactly 0
    return SpikingNetwork(ModelConfig(arch="conv", input_shape=(2, 9, 11), timesteps=3), layers).eval()


def _brute_fan_out(op) -> torch.Tensor:
    """Per input unit: count (output neuron, kernel tap) pairs reading it, by enumeration."""
    cin, *size = op.in_shape
    cout, cin_g, *ks = op.weight.shape
    f = torch.zeros(op.in_shape, dtype=torch.float64)
    out_sizes = op.out_shape[1:]
    for o in itertools.product(*(range(n) for n in out_sizes)):
        for k in itertools.product(*(range(n) for n in ks)):
            pos = [oi * s - p + ki * d for oi, s, p, ki, d in zip(o, op.stride, op.padding, k, op.dilation)]
            if all(0 <= q < n for q, n in zip(pos, size)):
                for ci in range(cin):  # every input channel reaches the cout/groups outputs of its group
                    f[(ci, *pos)] += cout // op.groups
    return f


def _hand_ann_macs(op) -> int:
    if op.kind == "linear":
        return op.weight.shape[0] * op.weight.shape[1]
    cout, cin_g, *ks = op.weight.shape
    per_dim = 1
    for n, o, s, p, d, k in zip(op.in_shape[1:], op.out_shape[1:], op.stride, op.padding, op.dilation, ks):
        per_dim *= sum(1 for ki in range(k) for oi in range(o) if 0 <= oi * s - p + ki * d < n)
    return cout * cin_g * per_dim


def _spike_input(n: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 2, 9, 11, generator=g) > 0.7).float()  # (B, T, ...) event data


def test_fan_out_equals_brute_force_and_ann_macs_hand_formula():
    net = lower(_strided_net())
    convs = [op for op in net.synapses() if op.kind == "conv2d"]
    assert [op.stride for op in convs] == [(2, 2), (2, 1)]
    for op in convs:
        f = fan_out(op)
        assert torch.equal(f, _brute_fan_out(op)), op.name
        assert f.min() < f.max()  # borders really differ
    rep = count_energy(net, _spike_input(), FP32, temporal=True)
    for row, op in zip(rep["layers"], net.synapses()):
        assert row["ann_mac"] == _hand_ann_macs(op)
        assert row["ann_mac"] <= row["ann_mac_dense"]


def test_ac_count_equals_brute_force_per_spike_fan_out():
    m = _strided_net()
    net = lower(m)
    xb = _spike_input()
    x = xb.transpose(0, 1)
    with torch.inference_mode(), record_spikes(m) as rec:
        m(x)
    sources = [x, rec["layers.1"][0], rec["layers.3"][0].flatten(2)]
    rep = count_energy(net, xb, FP32, temporal=True)
    for row, op, s in zip(rep["layers"], net.synapses(), sources):
        f = _brute_fan_out(op) if op.kind != "linear" else torch.full(op.in_shape, 5.0, dtype=torch.float64)
        expected = 0
        for idx in s.nonzero().tolist():  # one spike at a time
            expected += int(s[tuple(idx)]) * int(f[tuple(idx[2:])])
        assert row["input"] == "spikes" and row["mac"] == 0 and expected > 0
        assert round(row["ac"] * len(xb)) == expected, op.name
        assert row["snn_pj"] == pytest.approx(0.9 * row["ac"])
        assert row["ann_pj"] == pytest.approx(4.6 * row["ann_mac"])


def test_ac_count_equals_neurobench_synaptic_operations():
    pytest.importorskip("neurobench")
    from neurobench.metrics.utils.layers import single_layer_MACs
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel

    m = _strided_net()
    xb = _spike_input()
    nb = TorchModel(m)
    nb.register_hooks()
    with torch.no_grad():
        preds = nb(xb.transpose(0, 1))
    per_layer = [sum(single_layer_MACs(inp[0], h.layer)[0] for inp in h.inputs) for h in nb.connection_hooks]
    metric = SynapticOperations()
    res = metric(nb, preds, (torch.zeros(1),))  # one "sample": NeuroBench divides by it
    rep = count_energy(lower(m), xb, FP32, temporal=True)
    ours = [round(r["ac"] * len(xb)) for r in rep["layers"]]
    assert ours == per_layer and min(ours) > 0
    assert res["Effective_MACs"] == 0
    assert res["Effective_ACs"] == sum(ours) == round(rep["total"]["ac"] * len(xb))


def test_pooled_spikes_count_one_op_per_event():
    """Behind an avg/sum pool every spike is an event routed to the pooled unit's targets."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 6), pool="avg", tdbn=False)
    m = build_model(cfg).eval()
    x = 3 * torch.rand(16, 1, 8, 8)
    with torch.inference_mode(), record_spikes(m) as rec:
        m(x)
    net = lower(m)
    rep = count_energy(net, x, FP32)
    conv2 = net.synapses()[1]
    f = fan_out(conv2)
    s = rec["layers.1"][0]  # (T, B, 4, 8, 8) spikes before the pool
    expected = 0.0
    for t, b, c, i, j in s.nonzero().tolist():
        expected += float(f[c, i // 2, j // 2])
    row = rep["layers"][1]
    assert expected > 0
    assert row["input"] == "spikes" and row["source"] == "layers.1"
    assert row["ac"] * len(x) == pytest.approx(expected, abs=1e-6)


def test_direct_encoding_layer_is_macs_once_per_step():
    cfg = ModelConfig(arch="mlp", input_shape=(64,), hidden=(32,), timesteps=5)
    m = build_model(cfg).eval()
    rep = count_energy(lower(m), torch.rand(10, 64), FP32)
    first, readout = rep["layers"]
    assert first["input"] == "input" and first["ac"] == 0
    assert first["mac"] == 5 * 64 * 32 and first["ann_mac"] == 64 * 32
    assert readout["ann_mac"] == 32 * 10
    tot = rep["total"]
    assert tot["snn_pj"] == pytest.approx(0.9 * tot["ac"] + 4.6 * tot["mac"])
    assert tot["ratio"] == pytest.approx(tot["snn_pj"] / (4.6 * (64 * 32 + 320)))
    rate = rep["neurons"][0]["firing_rate"]
    assert readout["ac"] == pytest.approx(rate * 32 * 5 * 10, rel=1e-9)


def test_profiles_from_file_and_unverified_profile(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("mychip:\n  ac_pj: 2.0\n  mac_pj: 5.0\n  source: bench measurement\n")
    prof = get_profile("mychip", p)
    assert (prof.ac_pj, prof.ann_mac) == (2.0, 5.0)
    assert get_profile("45nm-int8").mac_pj == pytest.approx(0.23)
    with pytest.raises(ConfigError, match="no verified"):
        get_profile("speck")
    (tmp_path / "bad.json").write_text('{"x": {"ac_pj": 1}}')
    with pytest.raises(ConfigError, match="needs ac_pj and mac_pj"):
        get_profile("x", tmp_path / "bad.json")


def test_energy_cli_energy_models_and_neurobench(tmp_path, capsys):
    """``snn2hw energy --json`` carries NeuroBench's metrics under their names; the
    compute model keeps the papers' numbers, lemaire adds memory and neurons."""
    import json

    from snn2hw.cli.main import main
    from snn2hw.train.config import build_config
    from snn2hw.train.trainer import train

    train(build_config({"dataset": "digits", "epochs": 1, "hidden": [16], "seed": 0}), tmp_path, progress=False)
    reps = {}
    for em in ("compute", "lemaire"):
        assert main(["energy", str(tmp_path), "--json", "--samples", "40", "--energy-model", em]) == 0
        reps[em] = json.loads(capsys.readouterr().out)
    c, lem = reps["compute"], reps["lemaire"]
    assert c["total"]["snn_pj"] == pytest.approx(0.9 * c["total"]["ac"] + 4.6 * c["total"]["mac"])
    assert lem["energy_model"]["name"] == "lemaire" and lem["total"]["neuron_pj"] > 0
    assert lem["total"]["ac"] == c["total"]["ac"]  # the same counts, priced differently
    nb = c["neurobench"]
    assert set(nb) == {"Footprint", "ConnectionSparsity", "ParameterCount", "ActivationSparsity",
                       "ActivationSparsityByLayer", "SynapticOperations", "MembraneUpdates", "NeuronOperations"}
    assert set(nb["SynapticOperations"]) == {"Effective_MACs", "Effective_ACs", "Dense"}
    assert nb["ParameterCount"] == 64 * 16 + 16 + 16 * 10 + 10
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(c["total"]["ac"])  # no zero weight
    assert nb["NeuronOperations"]["Neuron Dense Ops"] == 4 * 16 * c["timesteps"]
    assert main(["energy", str(tmp_path), "--samples", "40", "--energy-model", "lemaire"]) == 0
    text = capsys.readouterr().out
    assert "Energy model **lemaire**" in text and "| MembraneUpdates |" in text and "potential" in text


def test_chip_profiles_cite_their_figures_and_unpublished_ones_refuse():
    for name, pj, cite in (("loihi", 23.6, "Davies"), ("truenorth", 2.5, "Akopyan"),
                           ("spinnaker2", 10.0, "Hoeppner")):
        prof = get_profile(name)
        assert prof.ac_pj == pj and cite in prof.source and "SENECA" in prof.source
    for name in ("speck", "xylo"):
        with pytest.raises(ConfigError, match=f"{name!r} has no verified.*--profile-file"):
            get_profile(name)


def _same_version(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` with ``old``'s version counter: then only its identity tells them apart."""
    while new._version < old._version:
        new.mul_(1.0)
    assert new._version == old._version
    return new


def test_a_report_follows_weights_replaced_or_written_in_place():
    """The per-net statics (fan-outs, zero weights) are cached on the weights' identity and
    version; the reference is the same net with an empty cache (``dataclasses.replace``)."""
    import dataclasses

    model = _strided_net()
    net, x = lower(model), _spike_input(8)
    first = count_energy(net, x, FP32, temporal=True)
    conv = net.synapses()[1]
    # replaced: zeros in the kernel, so NeuroBench's effective ACs drop
    keep = torch.ones_like(conv.weight)
    keep[:, :, 0] = 0.0
    conv.weight = _same_version(conv.weight * keep, conv.weight)
    replaced = count_energy(net, x, FP32, temporal=True)
    assert replaced == count_energy(dataclasses.replace(net), x, FP32, temporal=True)
    assert (replaced["neurobench"]["SynapticOperations"]["Effective_ACs"]
            < first["neurobench"]["SynapticOperations"]["Effective_ACs"])
    # written in place: more zeros, the same tensor
    with torch.no_grad():
        conv.weight[:, :, 1] = 0.0
    written = count_energy(net, x, FP32, temporal=True)
    assert written == count_energy(dataclasses.replace(net), x, FP32, temporal=True)
    assert (written["neurobench"]["SynapticOperations"]["Effective_ACs"]
            < replaced["neurobench"]["SynapticOperations"]["Effective_ACs"])
