"""The one layer walker (models/walk.py): order, tdBN/neuron pairing, folding, recursion,
refusals and caller maps; and the exporters that use it refuse through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snn2hw.core.layers import LIF, Pool, ResidualBlock, TDBatchNorm
from snn2hw.errors import ExportError
from snn2hw.export.to_nir import model_to_nir
from snn2hw.hwsim.graph import lower
from snn2hw.models import ModelConfig, SpikingNetwork, build_model
from snn2hw.models.walk import SYNAPSES, walk


def _record(step, seen):
    """A rule that records what the walker hands over."""
    seen.append((step.name, type(step.module).__name__, step.bn, step.neuron))


RECORD = {nn.Module: _record}


def _randomise_bn(model: nn.Module) -> None:
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, TDBatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


def test_mlp_walk_is_in_order_with_bn_and_neuron_paired():
    model = build_model(ModelConfig(arch="mlp", input_shape=(4,), hidden=(6, 5), num_classes=3, tdbn=True))
    L = model.layers  # Flatten, Linear, BN, LIF, Linear, BN, LIF, Linear
    seen: list = []
    walk(model.layers, RECORD, seen)
    assert seen == [
        ("layers.0", "Flatten", None, None),
        ("layers.1", "Linear", L[2], L[3]),
        ("layers.3", "LIF", None, None),
        ("layers.4", "Linear", L[5], L[6]),
        ("layers.6", "LIF", None, None),
        ("layers.7", "Linear", None, None),  # the readout drives no neuron
    ]


def test_conv_with_tdbn_folds_to_the_hand_fold():
    cfg = ModelConfig(arch="conv", input_shape=(2, 8, 8), channels=(4,), num_classes=3, tdbn=True,
                      v_th=1.5, tdbn_alpha=0.7, carrier="current")
    model = build_model(cfg).eval()
    _randomise_bn(model)
    conv, bn, pool, lif = model.layers[:4]  # ISNM: pooling sits between the BN and the neuron
    assert isinstance(pool, Pool) and isinstance(lif, LIF)
    steps: list = []
    walk(model.layers, {nn.Conv2d: lambda s, _: steps.append(s), nn.Module: lambda s, _: None})
    (step,) = steps
    assert (step.name, step.bn, step.neuron) == ("layers.0", bn, lif)

    w, b = step.folded()
    gain = 0.7 * 1.5 * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert conv.bias is None
    torch.testing.assert_close(w, conv.weight * gain.view(-1, 1, 1, 1), rtol=0, atol=0)
    torch.testing.assert_close(b, bn.bias - gain * bn.running_mean, rtol=0, atol=0)
    assert not w.requires_grad and w.data_ptr() != conv.weight.data_ptr()
    # the folded synapse computes conv + tdBN (eval)
    x = torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)
    w64, b64 = step.folded(torch.float64)
    assert w64.dtype == b64.dtype == torch.float64
    torch.testing.assert_close(w64.float(), w, rtol=1e-6, atol=1e-7)
    # QAT's fold stays in the autograd graph of the weight and the BN parameters
    wq, bq = step.folded(detach=False)
    (wq.sum() + bq.sum()).backward()
    assert conv.weight.grad is not None and bn.weight.grad is not None


def test_resnet_walk_recurses_where_the_map_says_so():
    model = build_model(ModelConfig(arch="resnet19", input_shape=(3, 8, 8), width=2, num_classes=3))
    seen: list = []

    def block(step, state):
        state.append((step.name, "ResidualBlock", None, None))
        step.walk_inside("body", state)
        step.walk_inside("shortcut", state)

    walk(model.layers, {**RECORD, ResidualBlock: block}, seen)
    names = [s[0] for s in seen]
    assert names[:4] == ["layers.0", "layers.2", "layers.3", "layers.3.body.0"]
    b3 = model.layers[3]
    assert seen[3] == ("layers.3.body.0", "Conv2d", b3.body[1], b3.body[2])
    assert seen[4][0] == "layers.3.body.2" and seen[5][:3] == ("layers.3.body.3", "Conv2d", b3.body[4])
    assert seen[5][3] is None  # the body's end: the sum, not the conv alone, drives the block's neuron
    assert "layers.6.shortcut.0" in names  # the first block of stage 2 widens: a 1x1 conv shortcut
    convs = [m for m in model.modules() if isinstance(m, SYNAPSES)]
    assert sum(s[1] in ("Conv2d", "Linear") for s in seen) == len(convs)
    assert not any(s[1] == "TDBatchNorm" for s in seen)  # every tdBN was paired


def test_unknown_layer_type_is_refused_naming_layer_type_and_fix():
    layers = [nn.Linear(4, 3), nn.ReLU(), LIF()]
    with pytest.raises(ExportError, match=r"^layer 1 \(layers\.1, ReLU\): my\.MAP has no rule for ReLU "
                                          r"\(it handles .*Linear.*\); .*add a rule for ReLU to my\.MAP"):
        walk(layers, {nn.Linear: lambda s, _: None, LIF: lambda s, _: None}, rules_name="my.MAP")


def test_tdbn_not_after_a_synapse_is_refused_by_default():
    layers = [nn.Linear(4, 3), LIF(), TDBatchNorm(3)]
    with pytest.raises(ExportError, match=r"^layer 2 \(layers\.2, TDBatchNorm\): tdBN .* cannot be folded"):
        walk(layers, {nn.Module: lambda s, _: None})


def test_caller_map_overrides_and_extends_the_default():
    layers = [nn.Identity(), nn.Linear(4, 3), LIF(), TDBatchNorm(3)]
    # by default Identity is skipped (no result) and a lone tdBN refused; the caller's entries win
    assert walk(layers[:3], {nn.Module: lambda s, _: s.name}) == ["layers.1", "layers.2"]
    got = walk(layers, {nn.Module: lambda s, _: s.name, nn.Identity: lambda s, _: "id",
                        TDBatchNorm: lambda s, _: "bn"})
    assert got == ["id", "layers.1", "layers.2", "bn"]


def test_rules_are_inherited_along_the_type_hierarchy():
    class MyLinear(nn.Linear):
        pass

    got = walk([MyLinear(2, 2), nn.Linear(2, 2)], {nn.Linear: lambda s, _: "linear", MyLinear: lambda s, _: "mine"})
    assert got == ["mine", "linear"]
    assert walk([MyLinear(2, 2)], {nn.Linear: lambda s, _: "linear"}) == ["linear"]


def test_a_neuron_is_paired_with_the_last_synapse_before_it_only():
    layers = [nn.Linear(4, 4), nn.Linear(4, 3), nn.Flatten(), LIF()]
    seen: list = []
    walk(layers, RECORD, seen)
    assert [(s[0], s[3]) for s in seen] == [("layers.0", None), ("layers.1", layers[3]),
                                            ("layers.2", None), ("layers.3", None)]


def _with_relu() -> SpikingNetwork:
    cfg = ModelConfig(arch="mlp", input_shape=(4,), hidden=(3,), num_classes=2)
    model = build_model(cfg)
    layers = list(model.layers)
    layers.insert(2, nn.PReLU())  # has a parameter: neither NIR nor hwsim can run it
    return SpikingNetwork(cfg, layers)


def test_to_nir_and_hwsim_refuse_through_the_walker():
    model = _with_relu()
    with pytest.raises(ExportError, match=r"layer 2 \(layers\.2, PReLU\): snn2hw\.export\.to_nir\.TO_NIR has no rule"):
        model_to_nir(model)
    with pytest.raises(ExportError, match=r"layer 2 \(layers\.2, PReLU\): snn2hw\.hwsim\.graph\.LOWERING has no rule"
                                          r".*no parameters and no state"):
        lower(model)
