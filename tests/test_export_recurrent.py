"""Recurrent and CUBA networks through NIR: our srnn written as snnTorch writes RLeaky/RSynaptic
(neuron <-> Linear cycle, CubaLIF) and read back spike for spike; snnTorch's own RLeaky/RSynaptic,
stepped in snnTorch, against our reading of the graph its exporter writes (built by hand here:
snnTorch 1.0.0's exporter needs a newer nir, /tmp research report)."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from snn2hw.export.from_nir import nir_to_network, node_spikes
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model

DT = 1e-4
T = 12


def _srnn(neuron: str, reset: str, seed: int = 0, arch: str = "srnn"):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, input_shape=(6,), num_classes=3, hidden=(10, 8), timesteps=T,
                      neuron=neuron, reset=reset)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)   # enough drive that every layer spikes, recurrence included
    return model


def _strip_metadata(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The graph as a reader without our node metadata sees it: NIR's Euler step at dt only."""
    for node in graph.nodes.values():
        if isinstance(node, (nir.LIF, nir.CubaLIF)):
            node.metadata = {"reset": node.metadata["reset"]}
    return graph


@pytest.mark.parametrize("neuron,arch", [("lif", "srnn"), ("cuba", "srnn"), ("cuba", "mlp")])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("metadata", [True, False])
def test_srnn_round_trip_spike_for_spike(neuron, arch, reset, metadata, tmp_path):
    model = _srnn(neuron, reset, arch=arch)
    graph = model_to_nir(model)
    kind = nir.CubaLIF if neuron == "cuba" else nir.LIF
    rec = [(a, b) for a, b in graph.edges if b.endswith("_recurrent")]
    assert sum(isinstance(n, kind) for n in graph.nodes.values()) == 2
    assert len(rec) == (2 if arch == "srnn" else 0) and all((b, a) in graph.edges and isinstance(graph.nodes[a], kind) for a, b in rec)
    path = tmp_path / "g.nir"
    nir.write(path, graph)
    read = nir.read(path)
    net = nir_to_network(read if metadata else _strip_metadata(read))
    x = torch.rand(T, 5, 6)
    ours, y_ours = node_spikes(model, x)
    theirs, y_theirs = node_spikes(net, x)
    assert ours.keys() == theirs.keys() and len(ours) == 2
    for name in ours:
        assert 0.02 < ours[name].mean() < 0.9, name        # the comparison is not vacuous
        assert torch.equal(ours[name], theirs[name]), name
    torch.testing.assert_close(y_theirs, y_ours, rtol=0, atol=1e-6 if metadata else 1e-5)


def _snntorch_graph(fc, rnn, out, beta, alpha=None, thr=1.0) -> nir.NIRGraph:
    """What snnTorch's export_nir writes for Linear -> RLeaky/RSynaptic -> Linear (nirtorch inlines
    the recurrent subgraph into '1_lif' and '1_w_rec'); metadata as ``--producer snntorch`` sets it."""
    n = fc.out_features
    ones = np.ones(n)
    with np.errstate(divide="ignore"):
        tau_mem = DT / np.float64(1 - beta) * ones   # beta = 1: tau = r = inf, as snnTorch writes it
    if alpha is None:
        neuron = nir.LIF(tau=tau_mem, r=tau_mem / DT, v_leak=0 * ones, v_threshold=thr * ones)
    else:
        tau_syn = DT / (1 - alpha) * ones
        neuron = nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / DT, v_leak=0 * ones,
                             v_threshold=thr * ones, w_in=tau_syn / DT)
    aff = lambda lin: nir.Affine(weight=lin.weight.detach().numpy(), bias=lin.bias.detach().numpy())  # noqa: E731
    nodes = {"input": nir.Input(input_type={"input": np.array([fc.in_features])}), "0": aff(fc),
             "1_lif": neuron, "1_w_rec": aff(rnn.recurrent), "2": aff(out),
             "output": nir.Output(output_type={"output": np.array([out.out_features])})}
    edges = [("input", "0"), ("0", "1_lif"), ("1_lif", "1_w_rec"), ("1_w_rec", "1_lif"), ("1_lif", "2"),
             ("2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"producer": "snntorch"})


# snnTorch 1.0.0's equal cases (its reset is not exported; metadata 'reset' says it, as --reset does):
# RLeaky reset to zero with reset_delay=False (snnTorch's importer) is our hard reset at any beta;
# RSynaptic always resets one step late (its reset_delay=False path updates a local copy only),
# u[t] = beta u[t-1] + i[t] - thr s[t-1], which is our soft reset at beta = 1 only.
@pytest.mark.parametrize("synaptic", [False, True])
def test_snntorch_rleaky_rsynaptic_same_spikes(synaptic):
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(1)
    alpha, n = 0.5, 10
    beta, reset = (1.0, "subtract") if synaptic else (0.75, "zero")
    fc, out = torch.nn.Linear(6, n), torch.nn.Linear(n, 3)
    if synaptic:
        rnn = snn.RSynaptic(alpha=alpha, beta=beta, linear_features=n, reset_mechanism=reset)
    else:
        rnn = snn.RLeaky(beta=beta, linear_features=n, reset_mechanism=reset, reset_delay=False)
    with torch.no_grad():
        fc.weight.mul_(3.0)
        rnn.recurrent.weight.mul_(2.0)
    x = torch.rand(T, 4, 6)
    spikes, logits = [], 0
    with torch.no_grad():
        state = rnn.init_rsynaptic() if synaptic else rnn.init_rleaky()
        for t in range(T):
            state = rnn(fc(x[t]), *state)   # (spk, [syn,] mem): the next call's state
            s = state[0]
            spikes.append(s)
            logits = logits + out(s) / T
    spikes = torch.stack(spikes)
    graph = _snntorch_graph(fc, rnn, out, beta, alpha if synaptic else None)
    graph.metadata["reset"] = reset
    net = nir_to_network(graph, timesteps=T)
    ours, y = node_spikes(net, x)
    assert 0.05 < spikes.mean() < 0.9
    assert torch.equal(ours["1_lif"], spikes)
    torch.testing.assert_close(y, logits, rtol=0, atol=1e-5)


def test_cuba_without_finite_time_constant_refused():
    model = _srnn("cuba", "hard")
    model.layers[2].neuron.alpha = 1.0
    with pytest.raises(Exception, match="layer 2.*alpha=1.0.*retrain with alpha, lam < 1"):
        model_to_nir(model)


@pytest.mark.parametrize("neuron,arch", [("lif", "srnn"), ("cuba", "srnn"), ("cuba", "mlp")])
def test_onnx_unrolls_the_recurrence_spike_for_spike(neuron, arch, tmp_path):
    onnx = pytest.importorskip("onnx")
    from snn2hw.export.onnx import ONNXExporter, run_onnx, write_onnx

    model = _srnn(neuron, "soft", arch=arch)
    net = ONNXExporter().check(model_to_nir(model))
    write_onnx(net, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert "Loop" not in ops and "Scan" not in ops
    assert ops.count("Greater") == T * 2          # one spike per recurrent layer per step
    x = torch.rand(9, 6)
    ours, y_ours = node_spikes(model, x)
    spikes, logits = run_onnx(tmp_path / "m.onnx", x, batch_size=4)   # batch != the traced 2
    torch_spikes, torch_logits = node_spikes(net, x)
    assert set(spikes) == set(ours)
    for name in ours:
        assert 0.02 < ours[name].mean() < 0.9, name
        assert torch.equal(spikes[name], torch_spikes[name]), name
        assert torch.equal(spikes[name], ours[name]), name
    torch.testing.assert_close(logits, torch_logits, rtol=0, atol=1e-5)
