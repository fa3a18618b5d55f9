"""The ONNX target: onnxruntime equals the torch Heaviside network spike for spike."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export_models import trained
from snn2hw.errors import ExportError
from snn2hw.export.api import export_model
from snn2hw.export.from_nir import nir_to_network, node_spikes
from snn2hw.export.onnx import OPSET, export_onnx, run_onnx
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models import ModelConfig, build_model


@pytest.mark.parametrize("kind", ["mlp", "conv", "conv_if"])
def test_onnxruntime_equals_torch_spike_for_spike(kind, tmp_path):
    model, samples = trained(kind)
    graph = model_to_nir(model)
    net = export_onnx(graph, tmp_path / "m.onnx")
    ref_spikes, ref_logits = node_spikes(model, samples.x)
    torch_spikes, torch_logits = node_spikes(net, samples.x)
    # a batch size other than the traced example's (2): the batch axis is dynamic
    spikes, logits = run_onnx(tmp_path / "m.onnx", samples.x, batch_size=37)
    assert set(spikes) == set(ref_spikes)
    for name in ref_spikes:
        assert ref_spikes[name].sum() > 0
        assert torch.equal(spikes[name], torch_spikes[name]), name
        assert torch.equal(spikes[name], ref_spikes[name]), name
    torch.testing.assert_close(logits, torch_logits, rtol=0, atol=1e-5)
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


def test_onnx_graph_is_unrolled_opset17_with_a_step_per_neuron_layer(tmp_path):
    model, _ = trained("mlp")
    export_onnx(model_to_nir(model), tmp_path / "m.onnx")
    m = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert m.opset_import[0].version == OPSET
    assert "Loop" not in ops and "Scan" not in ops
    T, L = model.timesteps, len(model.lif_layers())
    assert ops.count("Greater") == T * L  # one strict spike comparison per layer per step
    assert [o.name for o in m.graph.output] == ["logits", "spikes_layers_2", "spikes_layers_4"]


def test_temporal_input_onnx_equals_torch(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", input_shape=(2, 6, 6), channels=(4,), timesteps=5,
                                    lam=0.9, pool="sum", tdbn=False)).eval()
    graph = model_to_nir(model, temporal=True)
    net = export_onnx(graph, tmp_path / "m.onnx", temporal=True)
    x = (torch.rand(5, 9, 2, 6, 6) < 0.4).float()  # events (T, B, C, H, W)
    ref, ref_logits = node_spikes(model, x)
    spikes, logits = run_onnx(tmp_path / "m.onnx", x, batch_size=4, temporal=True)
    assert ref["layers_1"].sum() > 0
    assert torch.equal(spikes["layers_1"], ref["layers_1"])
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert net.timesteps == 5


def test_export_model_onnx_check_writes_verification(tmp_path):
    model, samples = trained("conv")
    result = export_model(model, "onnx", tmp_path / "out", check=True, samples=samples)
    v = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert v["target"] == "onnx" and v["samples"] == len(samples.y) == result.verification.samples
    assert set(v["spike_agreement"]) == {"layers_2", "layers_6", "layers_10"}
    assert all(a == 1.0 for a in v["spike_agreement"].values())
    assert v["output_agreement"] == 1.0
    acc = float((model(samples.x).argmax(1) == samples.y).float().mean())
    assert v["accuracy_reference"] == pytest.approx(acc) and v["accuracy_target"] == pytest.approx(acc)
    assert all(n == 0 for n in v["details"]["spike_mismatches_vs_torch"].values())
    assert "onnxruntime" in (tmp_path / "out" / "README.md").read_text()


def test_branching_that_is_not_a_residual_block_is_refused_by_onnx(tmp_path):
    import nir
    eye = np.eye(3, dtype=np.float32)
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([3])}),
        "a": nir.Affine(weight=eye, bias=np.zeros(3, np.float32)),
        "b": nir.Affine(weight=eye, bias=np.zeros(3, np.float32)),
        "c": nir.Affine(weight=eye, bias=np.zeros(3, np.float32)),
        "out": nir.Output(output_type={"output": np.array([3])})},
        edges=[("in", "a"), ("in", "b"), ("a", "c"), ("b", "c"), ("c", "out")],
        metadata={"dt": 1e-4, "timesteps": 2})
    with pytest.raises(ExportError, match=r"^onnx: NIR node 'c' sums 2 inputs but is a Affine"):
        export_model(graph, "onnx", tmp_path / "out", check=True)
    assert not (tmp_path / "out").exists()


def test_graph_without_timesteps_is_refused(tmp_path):
    model, _ = trained("mlp")
    graph = model_to_nir(model)
    del graph.metadata["timesteps"]
    with pytest.raises(ExportError, match="--timesteps"):
        export_model(graph, "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # given explicitly it works, and the file runs that many steps
    export_model(graph, "onnx", tmp_path / "out", timesteps=3)
    spikes, _ = run_onnx(tmp_path / "out" / "model.onnx", torch.rand(2, 1, 8, 8))
    assert spikes["layers_2"].shape[0] == 3 and np.isfinite(spikes["layers_2"].numpy()).all()
    assert nir_to_network(graph).timesteps == 3
