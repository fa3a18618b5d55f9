"""What an energy report keeps between reports (energy._count_plan: the walk, sources,
fan-outs and the ANN's pricing, cached on the lowered net) and what it accumulates over
batches (SynOpCounter.dots): each against the same report made from scratch, on a fresh
copy of the net (``dataclasses.replace`` starts an empty cache) or in one batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from snn2hw.core.layers import Pool
from snn2hw.hwsim import PROFILES, count_energy, lower
from snn2hw.hwsim.graph import Stateless
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model

FP32, INT8 = PROFILES["45nm-fp32"], PROFILES["45nm-int8"]


def _pooled_conv(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 6), pool="avg", tdbn=False, timesteps=3)
    return build_model(cfg).eval()


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="mlp", input_shape=(20,), hidden=(16, 12), timesteps=4)).eval()


@pytest.mark.parametrize("case", ["conv direct", "conv events", "mlp"])
@pytest.mark.parametrize("energy_model", ["compute", "lemaire"])
def test_report_in_batches_equals_one_batch(case, energy_model):
    """Counts summed over batches of 3 (odd: the last batch is short) give the report of
    one batch: every number, NeuroBench's included. The pooled conv has avg-pooled spike
    events, non-binary per-step calls (direct input) and binary ones (event input)."""
    g = torch.Generator().manual_seed(4)
    if case == "mlp":
        model, x, temporal = _mlp(), 2 * torch.rand(11, 20, generator=g), False
    elif case == "conv direct":
        model, x, temporal = _pooled_conv(), 3 * torch.rand(11, 1, 8, 8, generator=g), False
    else:
        model, x, temporal = _pooled_conv(), (torch.rand(11, 3, 1, 8, 8, generator=g) > 0.6).float(), True
    net = lower(model)
    whole = count_energy(net, x, FP32, batch_size=len(x), temporal=temporal, energy_model=energy_model,
                         model=model)
    batched = count_energy(net, x, FP32, batch_size=3, temporal=temporal, energy_model=energy_model,
                           model=model)
    assert batched == whole
    # the sums are not trivial: spikes, membrane updates, NeuroBench's ACs (binary calls: the
    # MLP's hidden spikes, the event input) and MACs (the avg-pooled spikes, the direct input)
    assert whole["total"]["spikes"] > 0 and whole["neurobench"]["MembraneUpdates"] > 0
    ops = whole["neurobench"]["SynapticOperations"]
    assert ops["Effective_MACs"] > 0 and (ops["Effective_ACs"] > 0) == (case != "conv direct")


def test_ann_pricing_follows_the_energy_model_and_its_costs():
    """The ANN's pricing is kept per energy model *value*: another profile for the same
    model (other costs) on the same net is priced again."""
    model = _mlp()
    net, x = lower(model), 2 * torch.rand(6, 20, generator=torch.Generator().manual_seed(1))
    for profile, em in [(FP32, "compute"), (INT8, "compute"), (FP32, "lemaire"), (INT8, "compute")]:
        rep = count_energy(net, x, profile, energy_model=em)
        assert rep == count_energy(dataclasses.replace(net), x, profile, energy_model=em)
    fp32 = count_energy(net, x, FP32)["total"]["ann_pj"]
    assert count_energy(net, x, INT8)["total"]["ann_pj"] == pytest.approx(fp32 * 0.23 / 4.6)


def test_plan_follows_an_op_replaced_with_the_same_weights():
    """Replacing an op without touching any weight (an avg pool by a max pool: one event
    per pooled spike instead of the 4 averaged into it) makes the plan again."""
    model = _pooled_conv()
    net, x = lower(model), 3 * torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    before = count_energy(net, x, FP32)
    k = next(i for i, op in enumerate(net.ops) if isinstance(op, Stateless) and isinstance(op.module, Pool))
    net.ops[k] = dataclasses.replace(net.ops[k], module=nn.MaxPool2d(2))
    after = count_energy(net, x, FP32)
    assert after == count_energy(dataclasses.replace(net), x, FP32)
    assert after["layers"][1]["events"] != before["layers"][1]["events"]
