"""The NIR hub: graph contents, dict/file round trips, exact rebuilds, foreign graphs, refusals."""

from __future__ import annotations

import dataclasses
import warnings

import nir
import numpy as np
import pytest
import torch

from export_models import trained
from snn2hw.errors import ExportError, VerificationError
from snn2hw.core.layers import TDBatchNorm
from snn2hw.export.api import export_model
from snn2hw.export.base import Samples
from snn2hw.export.from_nir import nir_to_network, node_spikes
from snn2hw.export.to_nir import DT, model_to_nir
from snn2hw.models import ModelConfig, build_model

KINDS = ["mlp", "conv", "conv_if"]


def assert_same_value(a, b, where):
    if isinstance(a, dict) or isinstance(b, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_value(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        assert str(a) == str(b), where
    else:
        assert np.array_equal(np.asarray(a), np.asarray(b)), where


def assert_same_graph(g1: nir.NIRGraph, g2: nir.NIRGraph) -> None:
    """Field by field: node names and types, every dataclass field, edges, metadata."""
    assert sorted(g1.nodes) == sorted(g2.nodes)  # HDF5 stores groups by name
    assert [tuple(e) for e in g1.edges] == [tuple(e) for e in g2.edges]  # edge order is kept
    assert_same_value(g1.metadata, g2.metadata, "metadata")
    for name, n1 in g1.nodes.items():
        n2 = g2.nodes[name]
        assert type(n1) is type(n2), name
        for f in dataclasses.fields(n1):
            assert_same_value(getattr(n1, f.name), getattr(n2, f.name), f"{name}.{f.name}")


@pytest.mark.parametrize("kind", KINDS)
def test_dict_and_file_round_trip_field_by_field(kind, tmp_path):
    model, _ = trained(kind)
    graph = model_to_nir(model)
    assert_same_graph(graph, nir.dict2NIRNode(graph.to_dict()))
    nir.write(tmp_path / "m.nir", graph)
    assert_same_graph(graph, nir.read(tmp_path / "m.nir"))


@pytest.mark.parametrize("kind", KINDS)
def test_neuron_nodes_encode_the_discrete_lif(kind):
    model, _ = trained(kind)
    graph = model_to_nir(model)
    lifs = model.lif_layers()
    neuron_nodes = [n for n in graph.nodes.values() if isinstance(n, (nir.LIF, nir.IF))]
    assert len(neuron_nodes) == len(lifs)
    for node, lif in zip(neuron_nodes, lifs):
        assert np.all(node.v_threshold == lif.v_th)
        if lif.lam == 1.0:
            assert isinstance(node, nir.IF) and np.all(node.r == 1.0)
        else:
            assert isinstance(node, nir.LIF) and np.all(node.v_leak == 0)
            # one Euler step of dt: v <- (1 - dt/tau) v + (dt r / tau) I  ==  lam v + I
            np.testing.assert_allclose(1 - DT / node.tau, lif.lam, rtol=1e-12)
            np.testing.assert_allclose(DT * node.r / node.tau, 1.0, rtol=1e-12)
    md = graph.metadata
    assert md["reset"] == {"hard": "zero", "soft": "subtract"}[model.config.reset]
    assert (md["spike"], md["readout"], md["timesteps"], md["dt"]) == (">", "mean_current", model.timesteps, DT)
    assert md["input_encoding"] == "direct"
    assert not any(isinstance(n, nir.NIRGraph) for n in graph.nodes.values())


@pytest.mark.parametrize("kind", KINDS)
def test_write_read_rebuild_gives_identical_spikes_in_every_layer(kind, tmp_path):
    model, samples = trained(kind)
    nir.write(tmp_path / "m.nir", model_to_nir(model))
    net = nir_to_network(nir.read(tmp_path / "m.nir"))
    ref_spikes, ref_out = node_spikes(model, samples.x)
    spikes, out = node_spikes(net, samples.x)
    assert set(spikes) == set(ref_spikes) and len(spikes) == len(model.lif_layers())
    for name, ref in ref_spikes.items():
        assert ref.sum() > 0, f"{name} silent: the comparison would be vacuous"
        assert torch.equal(spikes[name], ref), f"{name}: {(spikes[name] != ref).sum()} spikes differ"
    assert torch.equal(out.argmax(1), ref_out.argmax(1))
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    assert not net.training


def test_bn_folding_is_exact():
    model, samples = trained("conv")
    net = nir_to_network(model_to_nir(model))
    # conv+tdBN (eval) of the trained model against the folded conv, on the real inputs
    x = samples.x
    trained_first = model.layers[1](model.layers[0](x))
    folded_first = net.layers[0](x)
    torch.testing.assert_close(folded_first, trained_first, rtol=0, atol=1e-5)
    spikes, _ = node_spikes(model, x)
    pooled = model.layers[3](spikes["layers_2"].flatten(0, 1))  # (T*B, C, H, W): second block's input
    torch.testing.assert_close(net.layers[3](pooled), model.layers[5](model.layers[4](pooled)), rtol=0, atol=1e-5)
    # folded and unfolded readouts of the whole network
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-5)
    gains = [m.fold_factors()[0] for m in model.modules() if hasattr(m, "fold_factors")]
    assert len(gains) == 2 and all((g - 1).abs().max() > 0.5 for g in gains)  # folding is not trivial


# ----- graphs written the way other frameworks write them -------------------------------

def _foreign_graph(rng: np.random.Generator, metadata: dict) -> nir.NIRGraph:
    conv_w = rng.normal(0, 0.8, (3, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, 3).astype(np.float32)
    w1 = rng.normal(0, 0.6, (8, 27)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.6, (4, 8)).astype(np.float32)
    nodes = {
        "in": nir.Input(input_type={"input": np.array([1, 6, 6])}),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=conv_w, stride=1, padding=1, dilation=1, groups=1,
                           bias=conv_b),
        "if": nir.IF(r=np.full((3, 6, 6), 1.5), v_threshold=np.full((3, 6, 6), 0.8)),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([3, 3, 3])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=w1, bias=b1),
        "lif": nir.LIF(tau=rng.uniform(2e-3, 5e-3, 8), r=rng.uniform(0.8, 1.2, 8),
                       v_leak=np.full(8, 0.05), v_threshold=np.full(8, 0.3)),
        "out_fc": nir.Linear(weight=w2),
        "out": nir.Output(output_type={"output": np.array([4])}),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata=metadata)


def _numpy_reference(graph: nir.NIRGraph, x: np.ndarray, T: int, dt: float, reset: str):
    """NIR semantics by hand in float64: Euler LIF, per-step IF, spike v > thr, subtract/zero reset."""
    n = graph.nodes
    B = x.shape[0]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    w, b = n["conv"].weight.astype(np.float64), n["conv"].bias.astype(np.float64)
    conv = np.zeros((B, 3, 6, 6))
    for o in range(3):
        for i in range(6):
            for j in range(6):
                conv[:, o, i, j] = (xp[:, :, i:i + 3, j:j + 3] * w[o]).sum((1, 2, 3)) + b[o]
    v1, v2 = np.zeros((B, 3, 6, 6)), np.zeros((B, 8))
    s1_all, s2_all, outs = [], [], []
    lif = n["lif"]
    for _ in range(T):
        v1 = v1 + n["if"].r * conv
        s1 = (v1 > n["if"].v_threshold).astype(np.float64)
        v1 = v1 - s1 * n["if"].v_threshold if reset == "subtract" else v1 * (1 - s1)
        pooled = s1.reshape(B, 3, 3, 2, 3, 2).sum((3, 5)).reshape(B, 27)
        cur = pooled @ n["fc"].weight.T.astype(np.float64) + n["fc"].bias
        v2 = v2 + dt / lif.tau * (lif.v_leak - v2 + lif.r * cur)
        s2 = (v2 > lif.v_threshold).astype(np.float64)
        v2 = v2 - s2 * lif.v_threshold if reset == "subtract" else v2 * (1 - s2)
        outs.append(s2 @ n["out_fc"].weight.T.astype(np.float64))
        s1_all.append(s1)
        s2_all.append(s2)
    return np.stack(s1_all), np.stack(s2_all), np.mean(outs, 0)


@pytest.mark.parametrize("metadata,dt,reset", [({}, 1e-4, "subtract"),
                                               ({"dt": 1e-3, "reset": "zero"}, 1e-3, "zero")])
def test_foreign_graph_matches_numpy_reference(metadata, dt, reset, tmp_path):
    rng = np.random.default_rng(7)
    graph = _foreign_graph(rng, metadata)
    nir.write(tmp_path / "f.nir", graph)
    graph = nir.read(tmp_path / "f.nir")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = nir_to_network(graph, timesteps=12)
    assert any("dt" in str(w.message) for w in caught) == ("dt" not in metadata)
    x = rng.uniform(0, 1, (16, 1, 6, 6)).astype(np.float32)
    s1, s2, out = _numpy_reference(graph, x, 12, dt, reset)
    spikes, logits = node_spikes(net, torch.from_numpy(x))
    assert s1.sum() > 0 and s2.sum() > 0 and (s2 == 0).sum() > 0
    np.testing.assert_array_equal(spikes["if"].numpy(), s1)
    np.testing.assert_array_equal(spikes["lif"].numpy(), s2)
    np.testing.assert_allclose(logits.numpy(), out, rtol=0, atol=1e-5)


# ----- refusals: clear message, nothing written ----------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "resnet19"])
def test_residual_network_exports_to_nir_and_rebuilds(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, input_shape=(3, 8, 8), width=4, timesteps=3, lam=0.8, v_th=0.3))
    for m in model.modules():  # non-trivial tdBN statistics to fold
        if isinstance(m, TDBatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.3, 1.0)
    model.eval()
    x = torch.rand(24, 3, 8, 8) * 3
    samples = Samples(x, torch.randint(0, 10, (24,)), 3)
    # untrained: some layers never spike on these inputs, which fails the gate (it proves
    # nothing there) but writes and verifies everything
    with pytest.raises(VerificationError) as err:
        export_model(model, "nir", tmp_path / "out", check=True, samples=samples)
    result = err.value.result
    silent = [k for k, c in result.verification.details["spike_counts"].items() if c["reference"] == 0]
    assert silent and len(err.value.failures) == len(silent)
    assert all(f.startswith(f"{k}: the float model's layer is silent") for f, k in zip(err.value.failures, silent))
    graph = nir.read(tmp_path / "out" / "model.nir")
    merges = [b for b in graph.nodes if sum(e[1] == b for e in graph.edges) == 2]
    assert len(merges) == 8  # 2-2-2-2 or 3-3-2 BasicBlocks: each block neuron sums two inputs
    v = result.verification
    assert len(v.spike_agreement) == len(model.lif_layers())
    active = [k for k, c in v.details["spike_counts"].items() if c["reference"] > 0]
    assert len(active) >= len(v.spike_agreement) // 2
    # tdBN folding changes float rounding only: at most a stray spike at a tie
    assert min(v.spike_agreement.values()) >= 0.999 and v.output_agreement == 1.0


def test_branching_that_is_not_a_residual_block_is_refused(tmp_path):
    eye = np.eye(3, dtype=np.float32)
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([3])}),
        "a": nir.Affine(weight=eye, bias=np.zeros(3, np.float32)),
        "b": nir.Affine(weight=eye, bias=np.zeros(3, np.float32)),
        "c": nir.Affine(weight=eye, bias=np.zeros(3, np.float32)),
        "out": nir.Output(output_type={"output": np.array([3])})},
        edges=[("in", "a"), ("in", "b"), ("a", "c"), ("b", "c"), ("c", "out")],
        metadata={"dt": 1e-4, "timesteps": 2})
    with pytest.raises(ExportError, match=r"^nir: NIR node 'c' sums 2 inputs but is a Affine"):
        export_model(graph, "nir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_max_pooling_is_refused_naming_the_layer(tmp_path):
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), pool="max", timesteps=2))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"^nir: layer 3 \(layers.3, Pool\): max pooling.*--pool avg"):
        export_model(model, "nir", out)
    assert not out.exists()


def test_foreign_node_type_is_refused_naming_the_node(tmp_path):
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([4])}),
        "syn": nir.LI(tau=np.ones(4), r=np.ones(4), v_leak=np.zeros(4)),
        "out": nir.Output(output_type={"output": np.array([4])})},
        edges=[("in", "syn"), ("syn", "out")], metadata={"dt": 1e-4, "timesteps": 3})
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"^nir: NIR node 'syn' is a LI"):
        export_model(graph, "nir", out)
    assert not out.exists()


def test_unstable_tau_is_refused():
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([2])}),
        "lif": nir.LIF(tau=np.full(2, 1e-5), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
        "out": nir.Output(output_type={"output": np.array([2])})},
        edges=[("in", "lif"), ("lif", "out")], metadata={"dt": 1e-4, "timesteps": 3})
    with pytest.raises(ExportError, match="tau 1e-05 < dt 0.0001"):
        nir_to_network(graph)


def test_gsg_soft_nodecay_reset_is_refused_in_one_line():
    from snn2hw.errors import ExportError
    from snn2hw.export.to_nir import model_to_nir
    from snn2hw.models.config import ModelConfig
    from snn2hw.models.network import build_model

    model = build_model(ModelConfig(arch="mlp", input_shape=(4,), hidden=(3,), num_classes=2, reset="soft_nodecay"))
    with pytest.raises(ExportError, match=r"^layers\.\d+: reset 'soft_nodecay' .* retrain with --reset hard or soft"):
        model_to_nir(model)
