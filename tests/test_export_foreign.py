"""Foreign NIR graphs (snnTorch, sinabs) read as their producers meant them, or refused;
``--approximate`` deploys the target's nearest semantics and measures the loss.

References: snnTorch's own ``Leaky`` stepped in a loop, sinabs' own ``from_nir`` network,
the Loihi integer emulator (bit-exact to Lava, docs/targets.md A), hand computations.
"""

from __future__ import annotations

import json
import logging
import warnings

import nir
import numpy as np
import pytest
import torch
from torch import nn

from snn2hw.cli.main import main
from snn2hw.core.neuron import LIFParams, lif_sequence
from snn2hw.errors import ConfigError, ExportError
from snn2hw.export import loihi as loihi_target
from snn2hw.export.api import export_model
from snn2hw.export.base import Samples
from snn2hw.export.from_nir import nir_to_network, node_spikes
from snn2hw.export.loihi import emulator as emu
from snn2hw.export.loihi.mapping import build_loihi_net
from snn2hw.export.speck.constraints import build_plan
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.export.to_nir import model_to_nir


def _graph(nodes: dict, metadata: dict | None = None) -> nir.NIRGraph:
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata=dict(metadata or {}))


def _mlp(w1, b1, neuron1, w2, neuron2, input_shape, metadata=None) -> nir.NIRGraph:
    return _graph({"input": nir.Input(input_type={"input": np.array(input_shape)}),
                   "0": nir.Affine(weight=w1, bias=b1), "1": neuron1,
                   "2": nir.Affine(weight=w2, bias=np.zeros(w2.shape[0], np.float32)), "3": neuron2,
                   "output": nir.Output(output_type={"output": np.array([w2.shape[0]])})}, metadata)


def _leaky(n: int, beta: float = 1.0) -> nir.LIF:
    """What snnTorch 1.0.0's exporter writes for Leaky(beta): tau = dt/(1-beta), r = tau/dt
    (beta = 1: tau = r = inf)."""
    with np.errstate(divide="ignore"):
        tau = np.full(n, 1e-4 / (1 - beta) if beta < 1 else np.inf)
    return nir.LIF(tau=tau, r=tau / 1e-4, v_leak=np.zeros(n), v_threshold=np.ones(n))


# ---- snnTorch ----------------------------------------------------------------------------

def _snntorch_beta1_graph(seed=0, n=8, h=6, k=3, beta=1.0):
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(h, n)).astype(np.float32), (0.1 * rng.normal(size=h)).astype(np.float32)
    w2 = rng.normal(size=(k, h)).astype(np.float32)
    # snnTorch writes the sample's shape with its batch axis: (1, n)
    return _mlp(w1, b1, _leaky(h, beta), w2, _leaky(k, beta), (1, n)), (w1, b1, w2)


@pytest.mark.parametrize("beta", [1.0, 0.9])
def test_snntorch_leaky_reads_with_snntorchs_spike_count(beta):
    snn = pytest.importorskip("snntorch")
    graph, (w1, b1, w2) = _snntorch_beta1_graph(beta=beta)
    with pytest.warns(UserWarning, match="no metadata 'dt'"):
        net = nir_to_network(graph, timesteps=20)
    T, B = 20, 16
    x = torch.rand(B, 8, generator=torch.Generator().manual_seed(1)) * 2
    ours, _ = node_spikes(net, x)
    # snnTorch's own simulation of the same weights: Leaky(beta=1, reset 'zero') stepped in a loop
    lin1, lin2 = nn.Linear(8, 6), nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor(w1)), lin1.bias.copy_(torch.tensor(b1)), lin2.weight.copy_(torch.tensor(w2))
    l1, l2 = snn.Leaky(beta=beta, reset_mechanism="zero"), snn.Leaky(beta=beta, reset_mechanism="zero")
    m1, m2, s1s, s2s = l1.init_leaky(), l2.init_leaky(), [], []
    with torch.no_grad():
        for _ in range(T):
            s1, m1 = l1(lin1(x), m1)
            s2, m2 = l2(lin2(s1), m2)
            s1s.append(s1), s2s.append(s2)
    theirs = torch.stack(s1s), torch.stack(s2s)
    # without a --producer the graph is read by NIR's equations (reset by subtraction): tau = inf is
    # still a neuron without leak and gain 1; reset 'zero' comes with --producer snntorch
    graph.metadata["producer"] = "snntorch"
    ours, _ = node_spikes(nir_to_network(graph, timesteps=T), x)
    assert int(theirs[0].sum()) > 100 and int(theirs[1].sum()) > 20
    assert torch.equal(ours["1"], theirs[0]) and torch.equal(ours["3"], theirs[1])
    assert any("tau = r = inf" in n for n in net.notes) == (beta == 1.0)
    assert any("batch axis" in n for n in net.notes)
    assert net.config.input_shape == (8,)


def test_snntorch_file_with_v_reset_reads_with_snntorchs_spikes(tmp_path):
    """snnTorch 1.0 writes ``v_reset`` (newer NIR), which nir 1.0.4's reader rejects; the file
    is read anyway and ``v_reset`` means a reset to that value, without --producer."""
    snn = pytest.importorskip("snntorch")
    import h5py
    graph, (w1, b1, w2) = _snntorch_beta1_graph()
    path = tmp_path / "snntorch.nir"
    nir.write(path, graph)
    with h5py.File(path, "a") as f:   # the file as snnTorch 1.0 + nir 1.0.8 lays it out
        for name, n in (("1", 6), ("3", 3)):
            f["node/nodes"][name].create_dataset("v_reset", data=np.zeros(n))
    with pytest.raises(TypeError, match="v_reset"):
        nir.read(path)
    from snn2hw.export.api import read_nir
    back = read_nir(path)
    assert np.array_equal(back.nodes["1"].v_reset, np.zeros(6))
    x = torch.rand(16, 8, generator=torch.Generator().manual_seed(2)) * 2
    with pytest.warns(UserWarning, match="no metadata 'dt'"):
        ours, _ = node_spikes(nir_to_network(back, timesteps=12), x)
    lin1 = nn.Linear(8, 6)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor(w1)), lin1.bias.copy_(torch.tensor(b1))
    leaky = snn.Leaky(beta=1.0, reset_mechanism="zero")
    mem, spikes = leaky.init_leaky(), []
    with torch.no_grad():
        for _ in range(12):
            s, mem = leaky(lin1(x), mem)
            spikes.append(s)
    assert torch.equal(ours["1"], torch.stack(spikes)) and ours["1"].sum() > 50


def test_snntorch_leaky_beta1_on_loihi_gives_register_integers():
    full, _ = _snntorch_beta1_graph()   # Loihi runs a readout Affine on the host: end with one
    graph = _graph({k: full.nodes[k] for k in ("input", "0", "1", "2")}
                   | {"output": nir.Output(output_type={"output": np.array([3])})},
                   {"producer": "snntorch", "timesteps": 4})
    net = build_loihi_net(graph)
    for layer in net.layers:   # main wrote -9223372036854775808 here (NaN gain cast to int64)
        assert np.abs(layer.weight).max() <= 256 and layer.weight.any() and layer.v_decay == 0
        assert 0 < layer.vth <= 131071
    assert net.input_shape == (8,)


# ---- refusals ------------------------------------------------------------------------------

def _lif(n, **kw):
    p = dict(tau=np.full(n, 2e-4), r=np.full(n, 2.0), v_leak=np.zeros(n), v_threshold=np.ones(n))
    p.update({k: np.full(n, v) for k, v in kw.items()})
    return nir.LIF(**p)


W1, W2 = np.ones((4, 3), np.float32), np.ones((2, 4), np.float32)


@pytest.mark.parametrize("graph,message", [
    (lambda: _mlp(W1, np.zeros(4), _lif(4, tau=np.nan), W2, _lif(2), (3,)), r"NIR node '1' \(LIF\): tau = nan"),
    (lambda: _mlp(W1, np.zeros(4), _lif(4, v_threshold=0.0), W2, _lif(2), (3,)), r"NIR node '1'.*v_threshold = 0 <= 0"),
    (lambda: _mlp(W1, np.zeros(4), _lif(4), W2, _lif(2, v_threshold=np.inf), (3,)), r"NIR node '3'.*v_threshold = inf"),
    (lambda: _mlp(W1, np.zeros(4), _lif(4, tau=np.inf), W2, _lif(2), (3,)), r"NIR node '1'.*tau = inf with finite r"),
    (lambda: _mlp(W1, np.zeros(4), _lif(4, tau=-1.0), W2, _lif(2), (3,)), r"NIR node '1'.*tau = -1 <= 0"),
    (lambda: _mlp(W1 * np.nan, np.zeros(4), _lif(4), W2, _lif(2), (3,)), r"NIR node '0' \(Affine\): weight = nan"),
    (lambda: _mlp(W1, np.full(4, np.inf), _lif(4), W2, _lif(2), (3,)), r"NIR node '0' \(Affine\): bias = inf"),
    (lambda: _mlp(W1, np.zeros(4), _lif(4), W2, _lif(2), (5, 3)), r"NIR node 'input'.*leading dim 5.*--input-encoding events"),
    (lambda: _mlp(W1, np.zeros(4), nir.IF(r=np.ones(4), v_threshold=np.ones(4), metadata={"lam": float("nan")}),
                  W2, _lif(2), (3,)), r"NIR node '1' \(IF\): node metadata lam = nan"),
])
@pytest.mark.parametrize("target", ["nir", "loihi", "speck"])
@pytest.mark.filterwarnings("ignore:NIR graph has no metadata 'dt'")
def test_values_without_meaning_are_refused_naming_the_node(graph, message, target, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export_model(graph(), target, out, timesteps=3)
    assert not out.exists()


def test_mappers_refuse_non_finite_values_themselves():
    """The integer conversions have their own guard (a graph that skipped the reader)."""
    from snn2hw.export.loihi.mapping import loihi_grid
    from snn2hw.export.speck.discretize import discretize_core
    with pytest.raises(ValueError, match="finite"):
        loihi_grid(np.array([[np.nan, 1.0]]), None, 1.0)
    with pytest.raises(ValueError, match="finite"):
        discretize_core(np.full((1, 1, 1, 1), np.inf), np.zeros(1), 1.0)


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    nir.write(tmp_path / "g.nir", _mlp(W1, np.zeros(4), _lif(4, v_threshold=np.nan), W2, _lif(2), (3,),
                                       {"timesteps": 2, "dt": 1e-4}))
    out = tmp_path / "out"
    assert main(["export", "--from-nir", str(tmp_path / "g.nir"), "--target", "loihi", "--out", str(out),
                 "--producer", "snntorch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("snn2hw export: error: loihi: NIR node '1' (LIF): v_threshold = nan is not a finite "
                   "number; give a finite threshold > 0")
    assert main(["export", str(tmp_path / "run"), "--target", "nir", "--out", str(out), "--producer",
                 "sinabs"]) == 2
    assert "use them with --from-nir" in capsys.readouterr().err
    assert not out.exists()


def test_a_rebuilt_foreign_network_is_not_rewritten_without_its_neuron(tmp_path):
    graph = _sinabs_iaf_graph(4, 2)
    with pytest.raises(ExportError, match=r"^nir: layers.1: a neuron read from a foreign graph"):
        export_model(nir_to_network(graph, timesteps=2), "nir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reading_options_cannot_contradict_an_snn2hw_graph():
    graph = model_to_nir(build_model(ModelConfig(arch="mlp", input_shape=(4,), hidden=(3,), num_classes=2)))
    with pytest.raises(ConfigError, match="drop --producer"):
        export_model(graph, "nir", "/nonexistent/never", producer="sinabs")


# ---- batch axis -------------------------------------------------------------------------------

def _conv_graph(input_shape):
    rng = np.random.default_rng(0)
    conv = nir.Conv2d(input_shape=None, weight=rng.normal(size=(2, 1, 3, 3)).astype(np.float32), stride=1,
                      padding=1, dilation=1, groups=1, bias=np.zeros(2, np.float32))
    return _graph({"input": nir.Input(input_type={"input": np.array(input_shape)}), "0": conv,
                   "1": nir.IF(r=np.ones((2, 8, 8)), v_threshold=np.ones((2, 8, 8))),
                   "2": nir.Flatten(start_dim=0, end_dim=-1, input_type={"input": np.array([2, 8, 8])}),
                   "3": nir.Affine(weight=rng.normal(size=(3, 128)).astype(np.float32), bias=np.zeros(3, np.float32)),
                   "output": nir.Output(output_type={"output": np.array([3])})},
                  {"reset": "zero", "timesteps": 4})


def test_batch_axis_in_input_is_read_without_it():
    with_batch, plain = _conv_graph((1, 1, 8, 8)), _conv_graph((1, 8, 8))
    net = nir_to_network(with_batch)
    assert net.config.input_shape == (1, 8, 8)
    assert any("includes a batch axis" in n for n in net.notes)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    a, out_a = node_spikes(net, x)
    b, out_b = node_spikes(nir_to_network(plain), x)
    assert torch.equal(a["1"], b["1"]) and torch.equal(out_a, out_b) and a["1"].sum() > 0
    assert build_loihi_net(with_batch).info["model_input_shape"] == (1, 8, 8)
    assert build_plan(with_batch).input_shape == (1, 8, 8)
    with pytest.raises(ExportError, match=r"Input shape \(3, 1, 8, 8\) has a leading dim 3.*NIR node '0' "):
        nir_to_network(_conv_graph((3, 1, 8, 8)))


def test_sinabs_time_axis_in_input_with_events_equals_sinabs():
    sl = _sinabs_layers()
    from sinabs import to_nir
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), sl.IAF(), nn.Linear(3, 2), sl.IAF())
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    x = torch.rand(6, 5, 4) * 3                          # (B, T, N): sinabs writes Input (T, N)
    graph = to_nir(net, x)
    assert tuple(graph.nodes["input"].input_type["input"]) == (5, 4)
    with pytest.raises(ExportError, match="--input-encoding events"):
        nir_to_network(graph)
    graph.metadata["input_encoding"] = "temporal"       # what --input-encoding events records
    ours = nir_to_network(graph)
    assert ours.config.input_shape == (4,) and ours.config.timesteps == 5
    for m in net:
        if isinstance(m, sl.IAF):
            m.reset_states()
    with torch.no_grad():
        theirs = net(x)
    spikes, _ = node_spikes(ours, x.transpose(0, 1))
    assert theirs.sum() > 0 and torch.equal(spikes["3"], theirs.transpose(0, 1))


# ---- sinabs --------------------------------------------------------------------------------------

def _sinabs_layers():
    pytest.importorskip("sinabs")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import sinabs.layers as sl
    return sl


def _sinabs_iaf_graph(B, T, N=20, H=16, K=5):
    sl = _sinabs_layers()
    from sinabs import to_nir
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N, H), sl.IAFSqueeze(batch_size=B), nn.Linear(H, K), sl.IAFSqueeze(batch_size=B))
    with torch.no_grad():
        net[0].weight.mul_(3.0)   # inputs > 2 V_th per step: MultiSpike emits several spikes
    return to_nir(net, torch.rand(B * T, N))


def _sinabs_run(graph, x_btn):
    """sinabs' own reading of the graph (``sinabs.from_nir``) on (B, T, N): spikes (T, B, ...)."""
    import sinabs
    import sinabs.layers as sl
    B, T = x_btn.shape[:2]
    net = sinabs.from_nir(graph, batch_size=B)
    rec = {}
    for name, m in net.named_children():
        if isinstance(m, (sl.IAFSqueeze, sl.LIFSqueeze)):
            m.register_forward_hook(lambda mod, i, o, k=name: rec.__setitem__(k, o.reshape(B, T, -1).transpose(0, 1)))
    with torch.no_grad():
        net(x_btn.reshape(B * T, -1))
    return rec


@pytest.mark.parametrize("producer", ["sinabs", None])   # None: auto-detected (IF nodes, r = 1)
def test_sinabs_iaf_net_equals_sinabs_spike_for_spike(producer):
    B, T = 64, 8
    graph = _sinabs_iaf_graph(B, T)
    if producer:
        graph.metadata["producer"] = producer
    ours = nir_to_network(graph, timesteps=T)
    g = torch.Generator().manual_seed(1)
    for x in (torch.rand(B, 1, 20, generator=g).expand(B, T, 20) * 2 - 0.5,      # analog, negative too
              (torch.rand(B, T, 20, generator=g) < 0.3).float()):                  # events
        theirs = _sinabs_run(graph, x)
        spikes, out = node_spikes(ours, x.transpose(0, 1).contiguous())
        assert float(theirs["1"].max()) > 1                                          # MultiSpike happened
        assert torch.equal(spikes["1"], theirs["1"]) and torch.equal(spikes["3"], theirs["3"])
    assert producer or any("read as a sinabs graph" in n for n in ours.notes)


def test_sinabs_detection_is_conservative():
    from snn2hw.export.nir_reading import detect_producer
    graph = _sinabs_iaf_graph(4, 2)
    assert detect_producer(graph) == "sinabs"
    renamed = nir.NIRGraph(nodes={("fc" + k if k[0].isdigit() else k): n for k, n in graph.nodes.items()},
                           edges=[tuple(("fc" + x if x[0].isdigit() else x) for x in e) for e in graph.edges])
    assert detect_producer(renamed) == "nir"
    said = nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata={"dt": 1.0})
    assert detect_producer(said) == "nir"
    assert detect_producer(_tie_graph(">")) == "nir"


def test_sinabs_lif_tau_in_steps():
    """sinabs' LIF: tau in steps (lam = exp(-1/tau) in float32), r written 1 and ignored."""
    sl = _sinabs_layers()
    from sinabs import to_nir
    torch.manual_seed(0)
    B, T = 8, 12
    net = nn.Sequential(nn.Linear(6, 5), sl.LIFSqueeze(tau_mem=3.0, batch_size=B),
                        nn.Linear(5, 2), sl.LIFSqueeze(tau_mem=3.0, batch_size=B))
    graph = to_nir(net, torch.rand(B * T, 6))
    graph.metadata["producer"] = "sinabs"
    ours = nir_to_network(graph, timesteps=T)
    lif = [m for m in ours.modules() if hasattr(m, "multi_spike")][0]
    assert lif.lam == float(torch.exp(torch.tensor(-1 / 3.0)))
    x = torch.rand(B, T, 6) * 4
    theirs = _sinabs_run(graph, x)
    spikes, _ = node_spikes(ours, x.transpose(0, 1).contiguous())
    assert theirs["1"].sum() > 0 and torch.equal(spikes["1"], theirs["1"]) and torch.equal(spikes["3"], theirs["3"])


# ---- spike '>=' and v_reset on the targets ------------------------------------------------------

def _tie_graph(spike, reset="zero", producer=None):
    """IF neurons, V_th = 1, weights 0.5: binary input makes v == V_th exactly (ties)."""
    md = {"spike": spike, "reset": reset, "timesteps": 6, "input_encoding": "temporal", "dt": 1e-4}
    if producer:
        md = {"producer": producer, "timesteps": 6, "input_encoding": "temporal"}
    g = _mlp(np.full((4, 6), 0.5, np.float32), np.zeros(4, np.float32),
             nir.IF(r=np.ones(4), v_threshold=np.ones(4)), np.full((3, 4), 0.5, np.float32),
             nir.IF(r=np.ones(3), v_threshold=np.ones(3)), (6,), md)
    g.nodes["4"] = nir.Affine(weight=np.eye(2, 3, dtype=np.float32), bias=np.zeros(2, np.float32))
    g.edges = [e for e in g.edges if e != ("3", "output")] + [("3", "4"), ("4", "output")]
    g.nodes["output"] = nir.Output(output_type={"output": np.array([2])})
    return g


def _events(n=40, seed=0):
    return (torch.rand(6, n, 6, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def test_spike_geq_is_the_hand_computed_step():
    u = torch.tensor([[0.5], [0.5], [0.5], [0.5]])          # v: 0.5, 1.0 (tie), 0.5, 1.0
    geq, _ = lif_sequence(u, LIFParams(1.0, 1.0, "hard", spike_geq=True))
    strict, _ = lif_sequence(u, LIFParams(1.0, 1.0, "hard"))
    assert geq.flatten().tolist() == [0, 1, 0, 1] and strict.flatten().tolist() == [0, 0, 1, 0]
    multi, _ = lif_sequence(torch.tensor([[2.5], [0.2]]), LIFParams(1.0, 1.0, "soft", multi_spike=True,
                                                                    v_min=-1.0))
    assert multi.flatten().tolist() == [2.0, 0.0]          # floor(2.5), then 0.5 + 0.2 < 1
    hard, _ = lif_sequence(torch.tensor([[1.5], [0.0], [0.0]]), LIFParams(0.5, 1.0, "hard", v_reset=0.4 * 2))
    assert hard.flatten().tolist() == [1.0, 0.0, 0.0]
    _, u_all = lif_sequence(torch.tensor([[1.5], [0.0]]), LIFParams(0.5, 1.0, "hard", v_reset=0.8), record_membrane=True)
    assert u_all.flatten().tolist() == pytest.approx([1.5, 0.4])   # 0.5 * v_reset
    # the clip as sinabs computes it, relu(v - m) + m, which rounds v (max(v, m) would not)
    _, u_all = lif_sequence(torch.tensor([[0.1], [0.0]]), LIFParams(1.0, 1.0, "soft", v_min=-1.0),
                            record_membrane=True)
    sinabs_clip = torch.relu(torch.tensor(0.1) + 1.0) - 1.0
    assert u_all[1, 0] == sinabs_clip and sinabs_clip != torch.tensor(0.1)


def test_spike_geq_on_loihi_emulator_equals_the_graph():
    graph = _tie_graph(">=")
    x = _events()
    ref, _ = node_spikes(nir_to_network(graph), x)
    strict, _ = node_spikes(nir_to_network(_tie_graph(">")), x)
    assert not torch.equal(ref["1"], strict["1"])        # ties matter here
    net = build_loihi_net(graph)
    got = emu.run_samples(net.layers, x.numpy().astype(np.int64))
    for name, s in zip(net.neuron_names, got):
        assert np.array_equal(s, ref[name].numpy())


def test_spike_geq_on_speck_equals_the_graph(tmp_path):
    _sinabs_layers()
    x = _events()
    for spike in (">=", ">"):
        graph = _tie_graph(spike)
        v = export_model(graph, "speck", tmp_path / spike, check=True, samples=Samples(x, torch.zeros(40, dtype=torch.long), 6, True))
        config = json.loads((tmp_path / spike / "speck_config.json").read_text())
        assert [c["threshold_high"] - round(c["scale"]) for c in config["cores"]] == [0 if spike == ">=" else 1] * 2
        assert v.verification.spike_agreement == {"1": 1.0, "3": 1.0}
        assert v.verification.details["float_before_discretisation"]["spike_agreement"] == {"1": 1.0, "3": 1.0}


def test_v_reset_is_refused_on_loihi_unless_approximate():
    graph = _tie_graph(">")
    graph.nodes["1"].metadata = {"v_reset": 0.5}
    with pytest.raises(ExportError, match=r"neuron 1: reset to v_reset = 0.5.*--approximate"):
        build_loihi_net(graph)
    assert build_loihi_net(graph, approximate=True).approximations == [
        "neuron 1: reset to v_reset = 0.5 (not 0) -> one spike per step, reset to 0, no clip (Lava CUBA)"]
    ref, _ = node_spikes(nir_to_network(graph), _events())
    zero, _ = node_spikes(nir_to_network(_tie_graph(">")), _events())
    assert not torch.equal(ref["1"], zero["1"])         # the reset value is honoured by the reference


def test_multispike_is_refused_on_speck_unless_approximate():
    graph = _sinabs_iaf_graph(4, 2)
    graph.metadata["producer"] = "sinabs"
    with pytest.raises(ExportError, match=r"speck: layer 1: several spikes per step.*--approximate"):
        build_plan(graph)
    plan = build_plan(graph, approximate=True)
    assert len(plan.approximations) == 2
    assert [lay.v_min for lay in plan.layers] == [-1.0, -1.0] and all(lay.spike_geq for lay in plan.layers)
    from snn2hw.export.speck import chip_config
    cores = chip_config(plan, 1.0)["cores"]   # sinabs' IF clip at -V_th is the chip's threshold_low
    assert [c["threshold_low"] for c in cores] == [-c["threshold_high"] for c in cores]


# ---- --approximate -------------------------------------------------------------------------------

def test_approximate_soft_reset_on_loihi_reports_the_measured_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(loihi_target, "loihi_python", lambda: None)   # the emulator (bit-exact to Lava)
    model = build_model(ModelConfig(arch="mlp", input_shape=(6,), hidden=(8,), num_classes=3, lam=1.0,
                                    reset="soft", timesteps=8))
    graph = model_to_nir(model)
    x = torch.rand(64, 6, generator=torch.Generator().manual_seed(0))
    samples = Samples(x, torch.zeros(64, dtype=torch.long), 8)
    with pytest.raises(ExportError, match=r"loihi: neuron layers_2: reset by subtraction.*--approximate"):
        export_model(graph, "loihi", tmp_path / "refused", check=True, samples=samples)
    assert not (tmp_path / "refused").exists()
    res = export_model(graph, "loihi", tmp_path / "out", check=True, samples=samples, approximate=True,
                       allow_emulator=True, min_agreement=0.0)   # measure the loss, whatever it is
    v = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert v["details"]["approximations"] == [
        "neuron layers_2: reset by subtraction -> one spike per step, reset to 0, no clip (Lava CUBA)"]
    # the reference stays the soft-reset graph: the emulator's hard reset shows as lost spikes
    soft, _ = node_spikes(model, x)
    model.layers[2].reset = "hard"
    hard, _ = node_spikes(model, x)
    lost = int((soft["layers_2"] != hard["layers_2"]).sum())
    counts = v["details"]["spike_counts"]["layers_2"]
    assert lost > 0 and counts["mismatches"] >= lost // 2 and v["spike_agreement"]["layers_2"] < 1.0
    assert counts["reference"] == int(soft["layers_2"].sum())
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## Approximations (--approximate)" in readme and "reset by subtraction" in readme
    assert res.approximations == v["details"]["approximations"]
