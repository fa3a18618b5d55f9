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


# ----- Speck: residual blocks refused, the limits cross-checked with sinabs' own code ---------

from test_export_speck import fake_samna  # noqa: E402,F401  (the test-only stand-in samna)

from snn2hw.errors import ExportError  # noqa: E402
from snn2hw.export.api import export_model  # noqa: E402


def test_speck_refuses_residual_blocks_naming_the_limits(tmp_path):
    model = build_model(ModelConfig(arch="resnet18", input_shape=(1, 8, 8), width=4, lam=1.0, timesteps=2))
    with pytest.raises(ExportError) as err:
        export_model(model, "speck", tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("speck: NIR node 'layers_3_out' sums the currents of a residual block"), msg
    # 8 BasicBlocks; stem + 2 neurons per block = 17 cores (the 3 conv shortcuts have no neuron)
    assert "(8 blocks)" in msg and "needs 17 cores where the chip has 9" in msg
    assert not (tmp_path / "out").exists()


def test_sinabs_joins_inputs_only_by_adding_spike_streams(fake_samna):
    """What the refusal rests on, read from sinabs' DynapCNN backend: only ``Merge`` takes
    several inputs, it adds them before the receiving core's conv, and a BasicBlock's
    ``conv2(s) + x`` is not ``conv2(s + x)``; the chip has 9 cores."""
    import sinabs.layers as sl
    from sinabs.backend.dynapcnn.chips.dynapcnn import DynapcnnConfigBuilder
    from sinabs.backend.dynapcnn.connectivity_specs import LAYER_TYPES_WITH_MULTIPLE_INPUTS

    from snn2hw.export.speck.constraints import CORE_LIMITS

    assert LAYER_TYPES_WITH_MULTIPLE_INPUTS == (sl.Merge,)
    assert len(DynapcnnConfigBuilder.get_constraints()) == len(CORE_LIMITS) == 9
    torch.manual_seed(0)
    s, x = (torch.rand(2, 4, 6, 6) > 0.5).float(), (torch.rand(2, 4, 6, 6) > 0.5).float()
    conv2 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
    assert torch.equal(sl.Merge()(s, x), s + x)
    assert not torch.allclose(conv2(sl.Merge()(s, x)), conv2(s) + x)
