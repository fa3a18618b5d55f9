"""Residual (spiking ResNet) networks on the ONNX target: onnxruntime equals the torch
rebuild spike for spike in every neuron layer, each block's sum an ONNX ``Add``."""

from __future__ import annotations

import onnx
import pytest
import torch

from snn2hw.core.layers import TDBatchNorm
from snn2hw.export.from_nir import node_spikes
from snn2hw.export.onnx import export_onnx, run_onnx
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models import ModelConfig, build_model


def _resnet(arch: str):
    """An untrained ResNet with non-trivial tdBN statistics and a low threshold, so that
    every layer spikes on bright random inputs (the test is about the graph, not accuracy)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, input_shape=(3, 8, 8), width=4, timesteps=3, lam=0.8, v_th=0.3))
    for m in model.modules():
        if isinstance(m, TDBatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.3, 1.0)
    return model.eval(), torch.rand(24, 3, 8, 8) * 3


@pytest.mark.parametrize("arch", ["resnet18", "resnet19"])
def test_onnxruntime_equals_torch_rebuild_for_residual_networks(arch, tmp_path):
    model, x = _resnet(arch)
    net = export_onnx(model_to_nir(model), tmp_path / "m.onnx")
    torch_spikes, torch_logits = node_spikes(net, x)
    spikes, logits = run_onnx(tmp_path / "m.onnx", x, batch_size=7)   # dynamic batch axis
    assert set(spikes) == set(torch_spikes) and len(spikes) == len(model.lif_layers())
    active = [k for k in spikes if torch_spikes[k].sum() > 0]
    assert len(active) >= len(spikes) // 2
    for name in spikes:
        assert torch.equal(spikes[name], torch_spikes[name]), name
    torch.testing.assert_close(logits, torch_logits, rtol=0, atol=1e-5)
    # one Add per block per step joins body and shortcut (8 blocks in both archs, T = 3)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("Add") >= 8 * 3
