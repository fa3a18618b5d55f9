"""Loihi for graphs netx cannot run: a recurrent CUBA layer and residual blocks as Lava
processes (export/loihi/graph.py), checked spike for spike against Lava's fixed_pt simulator."""

from __future__ import annotations

import copy

import nir
import numpy as np
import pytest
import torch

from snn2hw.environment import loihi_python
from snn2hw.errors import ExportError
from snn2hw.export.from_nir import nir_to_network, node_spikes
from snn2hw.export.loihi import LoihiExporter, emulator as emu
from snn2hw.export.loihi.graph import BIAS_CHANNEL, BIAS_PAYLOADS, build_loihi_graph, write_graph
from snn2hw.export.loihi.graph_verify import graph_readout, run_lava_graph
from snn2hw.export.loihi.mapping import LoihiNet
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models.network import ModelConfig, build_model

META = {"dt": 1e-4, "reset": "zero", "spike": ">", "timesteps": 12, "input_encoding": "temporal"}
T, N = 12, 6


def _affine(rng, o, i, scale, bias=0.0):
    return nir.Affine(weight=rng.normal(0, scale, (o, i)).astype(np.float32),
                      bias=(rng.normal(0, bias, o) if bias else np.zeros(o)).astype(np.float32))


def _cuba(n, lam=0.9, alpha=0.5, reset="zero"):
    one = np.ones(n)
    return nir.CubaLIF(tau_syn=one, tau_mem=one, r=one, v_leak=0 * one, v_threshold=one,
                       metadata={"lam": lam, "alpha": alpha, "v_th": 1.0, "reset": reset})


def _lif(n, lam):
    return nir.LIF(tau=np.ones(n), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
                   metadata={"lam": lam, "v_th": 1.0, "reset": "zero"})


def recurrent_graph(seed=0, lam=0.9, alpha=0.5, n_in=8, n=10, k=3):
    """snnTorch's layout as our to_nir writes a recurrent layer: flat nodes, a cycle through w_rec."""
    rng = np.random.default_rng(seed)
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
             "layers_2_w_in": _affine(rng, n, n_in, 0.9), "layers_2_lif": _cuba(n, lam, alpha),
             "layers_2_w_rec": _affine(rng, n, n, 0.6), "layers_3": _affine(rng, k, n, 1.0, 0.1),
             "output": nir.Output(output_type={"output": np.array([k])})}
    edges = [("input", "layers_2_w_in"), ("layers_2_w_in", "layers_2_lif"), ("layers_2_lif", "layers_2_w_rec"),
             ("layers_2_w_rec", "layers_2_lif"), ("layers_2_lif", "layers_3"), ("layers_3", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(META))


def residual_graph(seed=1, n_in=8, n=10, k=3):
    """stem -> [body: Affine, LIF, Affine] + identity shortcut -> out neuron -> readout."""
    rng = np.random.default_rng(seed)
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
             "layers_0": _affine(rng, n, n_in, 1.0, 0.1), "layers_1": _lif(n, 0.9),
             "layers_2_body_0": _affine(rng, n, n, 0.8, 0.1), "layers_2_body_1": _lif(n, 0.8),
             "layers_2_body_2": _affine(rng, n, n, 0.8), "layers_2_out": _lif(n, 0.9),
             "layers_3": _affine(rng, k, n, 1.0), "output": nir.Output(output_type={"output": np.array([k])})}
    edges = [("input", "layers_0"), ("layers_0", "layers_1"), ("layers_1", "layers_2_body_0"),
             ("layers_2_body_0", "layers_2_body_1"), ("layers_2_body_1", "layers_2_body_2"),
             ("layers_2_body_2", "layers_2_out"), ("layers_1", "layers_2_out"), ("layers_2_out", "layers_3"),
             ("layers_3", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(META))


def conv_residual_graph(seed=3):
    """Conv stem, then a block whose body downsamples (3x3 stride 2) and whose shortcut is a
    strided 1x1 conv, then avg pooling and the readout: convolutions become dense matrices."""
    rng = np.random.default_rng(seed)

    def conv(o, i, k, stride, pad, scale):
        return nir.Conv2d(input_shape=None, weight=rng.normal(0, scale, (o, i, k, k)).astype(np.float32),
                          stride=stride, padding=pad, dilation=1, groups=1, bias=np.zeros(o, np.float32))

    nodes = {"input": nir.Input(input_type={"input": np.array([2, 6, 6])}),
             "layers_0": conv(4, 2, 3, 1, 1, 0.8), "layers_2": _lif((4, 6, 6), 0.9),
             "layers_3_body_0": conv(4, 4, 3, 2, 1, 0.6), "layers_3_body_2": _lif((4, 3, 3), 0.9),
             "layers_3_body_3": conv(4, 4, 3, 1, 1, 0.6), "layers_3_shortcut_0": conv(4, 4, 1, 2, 0, 1.0),
             "layers_3_out": _lif((4, 3, 3), 0.9),
             "layers_4": nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([3, 3]), padding=np.zeros(2)),
             "layers_5": nir.Flatten(input_type={"input": np.array([4, 1, 1])}, start_dim=0),
             "layers_6": _affine(rng, 3, 4, 1.0), "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "layers_0"), ("layers_0", "layers_2"), ("layers_2", "layers_3_body_0"),
             ("layers_3_body_0", "layers_3_body_2"), ("layers_3_body_2", "layers_3_body_3"),
             ("layers_3_body_3", "layers_3_out"), ("layers_2", "layers_3_shortcut_0"),
             ("layers_3_shortcut_0", "layers_3_out"), ("layers_3_out", "layers_4"), ("layers_4", "layers_5"),
             ("layers_5", "layers_6"), ("layers_6", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(META))


def srnn_model(seed=4, hidden=(8, 6), alpha=0.5, lam=0.9, bias=0.4):
    """A seeded snn2hw srnn (CUBA, hard reset) with input biases large enough to matter."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="srnn", input_shape=(5,), hidden=hidden, num_classes=3, neuron="cuba",
                                    alpha=alpha, lam=lam, timesteps=T))
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, torch.nn.Linear) and layer.out_features != 3:
                layer.weight.mul_(2.0)
                layer.bias.uniform_(-bias, bias)
    return model


def srnn_graph(**kw):
    return model_to_nir(srnn_model(**kw), temporal=True)


def _input(net, seed=2):
    """Binary events (T, N, inputs) as the chip receives them (with the bias channel, if any)."""
    x = np.random.default_rng(seed).integers(0, 2, (T, N) + tuple(net.info["model_input_shape"]))
    return net.quantise_input(x)


def _model_input(net, x):
    """The chip's input x without the always-on bias channel: the float model's input."""
    return x[..., :-len(BIAS_PAYLOADS)] if net.info[BIAS_CHANNEL] else x


def float_recurrent(graph, x):
    """The float model (core.neuron's CUBA): i = alpha i + W_in x + W_rec s[t-1]; v = lam v (1 - s) + i."""
    nd = graph.nodes
    meta = nd["layers_2_lif"].metadata
    w_in, w_rec = (np.asarray(nd[k].weight, np.float64) for k in ("layers_2_w_in", "layers_2_w_rec"))
    i = v = s = np.zeros((x.shape[1], w_in.shape[0]))
    out = []
    for t in range(len(x)):
        i = meta["alpha"] * i + x[t] @ w_in.T + s @ w_rec.T
        v = meta["lam"] * v * (1 - s) + i
        s = (v > meta["v_th"]).astype(np.float64)
        out.append(s)
    return np.stack(out)


@pytest.fixture(scope="module")
def lava_runs(tmp_path_factory):
    """Both nets in one Lava subprocess (one import of lava): (net, x, Lava stream spikes, timing)."""
    if loihi_python() is None:
        pytest.skip("the Loihi environment (.venv-loihi) is missing")
    tmp = tmp_path_factory.mktemp("lava")
    nets = [build_loihi_graph(g()) for g in (recurrent_graph, residual_graph, conv_residual_graph, srnn_graph)]
    jobs = [(write_graph(net, tmp / f"g{i}.npz"), net, _input(net)) for i, net in enumerate(nets)]
    results = run_lava_graph(jobs)
    return [(net, x, spikes, timing) for (_, net, x), (spikes, timing) in zip(jobs, results)]


def test_recurrent_cuba_plan():
    net = build_loihi_graph(recurrent_graph(lam=0.9, alpha=0.75))
    (lif,) = net.neurons
    assert (lif.du, lif.dv, lif.depth) == (1024, 410, 1)      # round(4096 (1 - alpha)), round(4096 (1 - lam))
    assert [(e.src, e.dst, e.delay) for e in net.edges] == [("input", "layers_2_lif", 0),
                                                            ("layers_2_lif", "layers_2_lif", 0)]
    assert net.info["recurrent_edges"] == [("layers_2_lif", "layers_2_lif")]


def test_residual_plan_delays_the_shortcut():
    net = build_loihi_graph(residual_graph())
    assert {n.name: n.depth for n in net.neurons} == {"layers_1": 1, "layers_2_body_1": 2, "layers_2_out": 3}
    # body: 2 connections from layers_1; shortcut: 1 connection + 1 step of delay
    assert {(e.src, e.dst): e.delay for e in net.edges}[("layers_1", "layers_2_out")] == 1
    out = next(n for n in net.neurons if n.name == "layers_2_out")
    shortcut = next(e for e in net.edges if e.src == "layers_1" and e.dst == "layers_2_out")
    # identity shortcut: weight G on the diagonal, G the neuron's gain (vThMant = V_th G)
    np.testing.assert_array_equal(shortcut.weight, out.vth * np.eye(10, dtype=np.int64))


@pytest.mark.slow
def test_lava_equals_emulator_spike_for_spike(lava_runs):
    for net, x, lava, timing in lava_runs:
        emulated = emu.run_graph_stream(net, x)
        for name, s in emulated.items():
            assert s.sum() > 0, name                                  # not silent: equality proves something
            np.testing.assert_array_equal(lava[name], s, err_msg=name)
        assert timing[2] < 60


@pytest.mark.slow
def test_emulator_without_the_shortcut_delay_is_not_lava(lava_runs):
    net, x, lava, _ = lava_runs[1]
    wrong = copy.deepcopy(net)
    for e in wrong.edges:
        e.delay = 0
    assert (emu.run_graph_stream(wrong, x)["layers_2_out"] != lava["layers_2_out"]).sum() > 0


@pytest.mark.slow
def test_lava_needs_the_cuba_bias_channel(lava_runs):
    """A trained-style srnn (two recurrent CUBA layers, biases): Lava equals the emulator above;
    without the constant channel's weights (the biases) the emulator is no longer Lava."""
    net, x, lava, _ = lava_runs[3]
    assert net.info[BIAS_CHANNEL] == [n.name for n in net.neurons]
    assert [e.delay for e in net.edges if e.src == "input"] == [0, 1]     # the deeper layer's bias waits
    dropped = copy.deepcopy(net)
    for e in dropped.edges:
        if e.src == "input":
            e.weight[:, -2:] = 0
    wrong = emu.run_graph_stream(dropped, x)
    assert all((wrong[n] != lava[n]).sum() > 0 for n in lava)


def _bias_only(biases):
    """One recurrent CUBA layer driven by its input bias alone (input and recurrent weights 0)."""
    model = srnn_model(hidden=(len(biases),))
    with torch.no_grad():
        model.layers[1].weight.zero_()
        model.layers[1].bias.copy_(torch.tensor(biases))
        model.layers[2].recurrent.weight.zero_()
    return model_to_nir(model, temporal=True)


def test_cuba_bias_reaches_the_current_from_frame_0():
    """Hand computation, lam 0.9, alpha 0.5, V_th 1: i[t] = 2 b (1 - 0.5^(t+1)), v = 0.9 v (1 - s) + i.
    b = 1.2 fires in frame 0 (i = 1.2); b = 0.6 in frame 1 (v = 0.6, 0.54 + 0.9); b = 0.3 in frame 2
    (i = 0.3, 0.45, 0.525; v = 0.3, 0.72, 1.173); b = -0.5 never."""
    g = _bias_only([1.2, 0.6, 0.3, -0.5])
    net = build_loihi_graph(g)
    x = net.quantise_input(np.zeros((T, 1, 5)))
    assert np.all(x[..., -2:] == BIAS_PAYLOADS) and not x[..., :-2].any()
    got = emu.run_graph(net, x)["layers_2_neuron_lif"][:, 0]
    first = [int(np.argmax(got[:, k])) if got[:, k].any() else None for k in range(4)]
    assert first == [0, 1, 2, None]
    ref, _ = node_spikes(nir_to_network(g), torch.zeros(T, 1, 5))
    np.testing.assert_array_equal(got, ref["layers_2_neuron_lif"][:, 0].numpy())


def bias_chain(biases=(0.4, 0.3, 0.3), w=(0.0, 0.5, 0.0)):
    """input -> [Affine(w_k, b_k) -> LIF(lam 1, V_th 1)] x 3 -> readout, one neuron per layer."""
    nodes = {"input": nir.Input(input_type={"input": np.array([1])})}
    edges, prev = [], "input"
    for k, (b, wk) in enumerate(zip(biases, w)):
        nodes[f"layers_{2 * k}"] = nir.Affine(weight=np.full((1, 1), wk, np.float32), bias=np.full(1, b, np.float32))
        nodes[f"layers_{2 * k + 1}"] = _lif(1, 1.0)
        edges += [(prev, f"layers_{2 * k}"), (f"layers_{2 * k}", f"layers_{2 * k + 1}")]
        prev = f"layers_{2 * k + 1}"
    nodes["layers_6"] = nir.Affine(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32))
    nodes["output"] = nir.Output(output_type={"output": np.array([1])})
    edges += [(prev, "layers_6"), ("layers_6", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(META))


def _first_spikes(spikes):
    return {k: int(np.argmax(s[:, 0, 0])) if s[:, 0, 0].any() else None for k, s in spikes.items()}


def test_biases_start_in_the_frame_the_first_input_arrives():
    """Hand computation, lam 1, V_th 1, zero input, the graph path (depths 1, 2, 3):
    layer 1, b 0.4: v = 0.4, 0.8, 1.2 -> first spike in frame 2;
    layer 2, b 0.3 + 0.5 s1: v = 0.3, 0.6, 0.9 + 0.5 -> frame 2 (bias 2 steps early: 1.2 in frame 1);
    layer 3, b 0.3 alone: v = 0.3, 0.6, 0.9, 1.2 -> frame 3 (bias 3 steps early: frame 0).
    Integers: G = vThMant 10237/508/13649 (13-bit bias range), biases 4096/152/4096 as w_lo + 16 w_hi
    on the bias channels, each bias edge delayed depth - 1."""
    g = bias_chain()
    net = build_loihi_graph(g)
    assert net.info[BIAS_CHANNEL] == ["layers_1", "layers_3", "layers_5"]
    assert all(not n.bias.any() for n in net.neurons)                     # Lava's bias_mant unused
    assert [n.vth for n in net.neurons] == [10237, 508, 13649]          # float32 0.3 > 0.3
    bias_edges = {e.dst: (tuple(e.weight[0, -2:]), e.delay) for e in net.edges if e.src == "input"}
    assert bias_edges == {"layers_1": ((32, 254), 0), "layers_3": ((-8, 10), 1), "layers_5": ((32, 254), 2)}
    x = net.quantise_input(np.zeros((T, 1, 1)))
    got = emu.run_graph(net, x)
    assert _first_spikes(got) == {"layers_1": 2, "layers_3": 2, "layers_5": 3}
    ref, _ = node_spikes(nir_to_network(g), torch.zeros(T, 1, 1))
    for k, s in got.items():
        np.testing.assert_array_equal(s, ref[k].numpy().reshape(s.shape), err_msg=k)
    # the rules pinned: Lava's own bias (from step 0) and an edge one step early or late
    from_step_0 = copy.deepcopy(net)
    for e in from_step_0.edges:
        if e.src == "input":
            next(n for n in from_step_0.neurons if n.name == e.dst).bias = e.weight[:, -2:] @ BIAS_PAYLOADS
            e.weight[:, -2:] = 0
    assert _first_spikes(emu.run_graph(from_step_0, x)) == {"layers_1": 1, "layers_3": 1, "layers_5": 0}
    for shift, want in ((-1, 2), (1, 4)):
        moved = copy.deepcopy(net)
        for e in moved.edges:
            if e.src == "input" and e.dst == "layers_5":
                e.delay += shift
        assert _first_spikes(emu.run_graph(moved, x))["layers_5"] == want


def test_emulator_agrees_with_float_models():
    """Reported numbers (quantisation loss only): recurrent CUBA vs core.neuron's recurrence,
    residual vs snn2hw's own from_nir reading of the graph (ResidualBlock)."""
    g = recurrent_graph()
    net = build_loihi_graph(g)
    x = _input(net)
    got = emu.run_graph(net, x)["layers_2_lif"]
    want = float_recurrent(g, x.astype(np.float64))
    rec_agreement = float((got == want).mean())
    print(f"recurrent CUBA {rec_agreement:.4f}")
    assert rec_agreement >= 0.95
    for graph in (residual_graph(), conv_residual_graph()):
        net = build_loihi_graph(graph)
        x = _input(net)
        got = emu.run_graph(net, x)
        shape = (T, N) + tuple(graph.nodes["input"].input_type["input"])
        x_model = _model_input(net, x).reshape(shape).astype(np.float32)
        ref, out = node_spikes(nir_to_network(graph), torch.from_numpy(x_model))
        agreement = {k: float((got[k] == ref[k].numpy().reshape(got[k].shape)).mean()) for k in got}
        classes = float((graph_readout(net, got).argmax(1) == out.numpy().argmax(1)).mean())
        print(f"residual {agreement}, classes {classes}")
        assert min(agreement.values()) >= 0.95 and all(s.any() for s in got.values())


def test_resnet18_maps_every_block():
    net = build_loihi_graph(model_to_nir(build_model(ModelConfig(arch="resnet18", input_shape=(1, 8, 8), width=4))))
    delayed = {(s, d): k for s, d, k in net.info["delayed_edges"]}
    # 8 residual blocks, each shortcut (identity or strided 1x1 conv) one step behind its 2-layer body
    assert len(delayed) == 8 and set(delayed.values()) == {1}
    assert ("layers_4_out", "layers_5_out") in delayed             # the strided conv shortcut


def test_chains_keep_the_netx_path():
    model = build_model(ModelConfig(arch="mlp", input_shape=(1, 4, 4), hidden=(8,)))
    assert isinstance(LoihiExporter().check(model_to_nir(model)), LoihiNet)


def _back_edge():
    g = residual_graph()
    g.nodes["fb"] = _affine(np.random.default_rng(0), 10, 10, 0.5)
    g.edges += [("layers_2_out", "fb"), ("fb", "layers_2_body_1")]
    return g


def _cuba_without_metadata():
    g = recurrent_graph()
    g.nodes["layers_2_lif"].metadata = {}
    return g


def _soft_reset():
    g = recurrent_graph()
    g.nodes["layers_2_lif"].metadata["reset"] = "subtract"
    return g


def _alpha_without_decay():
    g = recurrent_graph()
    g.nodes["layers_2_lif"].metadata["alpha"] = 0.99999
    return g


@pytest.mark.parametrize("graph,message", [
    (_back_edge, r"edge layers_2_out -> layers_2_body_1: .*Fix: recurrence only from a neuron to itself"),
    (_cuba_without_metadata, r"neuron layers_2_lif: CubaLIF without .*Fix"),
    (_soft_reset, r"neuron layers_2_lif: reset by subtraction.*--reset hard"),
    (_alpha_without_decay, r"neuron layers_2_lif: alpha = 0.99999 rounds to no current decay.*Fix"),
])
def test_refusals(graph, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        LoihiExporter().check(graph())
    assert list(tmp_path.iterdir()) == []


def test_exporter_writes_and_verifies_a_graph(tmp_path, monkeypatch):
    """The exporter's graph path end to end with the emulator standing in for Lava (the Lava
    run itself is pinned above): file written, every neuron node compared with the float model."""
    from snn2hw.export.base import Samples
    from snn2hw.export.reference import run_reference

    monkeypatch.setattr("snn2hw.export.loihi.graph_verify.loihi_python", lambda: None)
    g = residual_graph()
    exporter = LoihiExporter()
    plan = exporter.check(g)
    (path,) = exporter.write(plan, tmp_path)
    assert path.name == "loihi_graph.npz"
    with np.load(path) as f:
        assert [str(s) for s in f["edge_ends"][:, 1]].count("layers_2_out") == 2   # body + shortcut
    x = torch.from_numpy(_model_input(plan, _input(plan)).astype(np.float32))
    samples = Samples(x, torch.zeros(N, dtype=torch.long), T, temporal=True)
    samples.reference = run_reference(nir_to_network(g), samples)
    v = exporter.verify(plan, tmp_path, samples)
    assert v.stand_in == "emulator; Lava not run"
    assert set(v.spike_agreement) == {"layers_1", "layers_2_body_1", "layers_2_out"}
    assert min(v.spike_agreement.values()) >= 0.95
    assert "layers_2_out" in exporter.readme(plan, [path])

