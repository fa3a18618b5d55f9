"""NeuroBench's metrics from our counted run against NeuroBench 2.3.0's own classes.

NeuroBench measures an SNN the way it runs one: an snnTorch network stepped
once per time step (``SNNTorchModel``); its membrane metrics read snnTorch's
``Leaky.mem``. The reference here is the lowered network rebuilt with snnTorch
``Leaky`` neurons (hard reset = snnTorch's "zero" with the default delayed reset:
the same update, bit for bit; soft reset equals "subtract" at lam = 1), fed the
same data as (B, T, ...). The static metrics run on our model itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snn2hw.core.layers import LIF, Pool
from snn2hw.hwsim import PROFILES, count_energy, lower
from snn2hw.hwsim.graph import Neuron, Residual, Stateless, Synapse
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import SpikingNetwork, build_model

pytest.importorskip("neurobench")
snn = pytest.importorskip("snntorch")

FP32 = PROFILES["45nm-fp32"]


class SnnTorchTwin(nn.Module):
    """The lowered net with snnTorch neurons, one step per call (what SNNTorchModel runs)."""

    def __init__(self, net) -> None:
        super().__init__()
        mods, self.names = [], {}
        for op in net.ops:
            if isinstance(op, Synapse):
                w, b = op.weight, op.bias
                if op.kind == "linear":
                    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                else:
                    m = nn.Conv2d(op.in_shape[0], w.shape[0], tuple(w.shape[2:]), stride=op.stride,
                                  padding=op.padding, dilation=op.dilation, groups=op.groups,
                                  bias=b is not None)
                m.weight.data.copy_(w)
                if b is not None:
                    m.bias.data.copy_(b)
            elif isinstance(op, Neuron):
                m = snn.Leaky(beta=op.lam, threshold=op.v_th,
                              reset_mechanism={"hard": "zero", "soft": "subtract"}[op.reset])
                self.names[str(len(mods))] = op.name
            else:
                assert isinstance(op, Stateless)
                m = op.module
            mods.append(m)
        self.layers = nn.ModuleList(mods)

    def forward(self, x):
        for m in self.layers:
            x = m(x)[0] if isinstance(m, snn.SpikingNeuron) else m(x)
        return x, None


def _neurobench(net, data: torch.Tensor) -> tuple[dict, dict]:
    """NeuroBench's workload metrics on the twin; ``data`` is (B, T, ...)."""
    from neurobench.metrics.workload import (ActivationSparsity, ActivationSparsityByLayer,
                                             MembraneUpdates, NeuronOperations, SynapticOperations)
    from neurobench.models import SNNTorchModel

    twin = SnnTorchTwin(net)
    model = SNNTorchModel(twin)
    model.register_hooks()
    with torch.no_grad():
        preds = model(data)
    batch = (data, torch.zeros(len(data)))
    out = {cls.__name__: cls()(model, preds, batch) for cls in
           (SynapticOperations, ActivationSparsity, ActivationSparsityByLayer, MembraneUpdates,
            NeuronOperations)}
    model.cleanup_hooks()
    return out, twin.names


def _prune(model: nn.Module, fraction: float = 0.3, seed: int = 0) -> None:
    """Zero a fraction of every connection weight: NeuroBench counts only non-zero ones."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.weight.data[torch.rand(m.weight.shape, generator=g) < fraction] = 0.0


def _conv_net(reset: str, lam: float) -> SpikingNetwork:
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3, stride=2, padding=1), LIF(lam=lam, v_th=0.3, reset=reset),
              nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), groups=2),
              LIF(lam=lam, v_th=0.3, reset=reset), Pool("avg", 2, 2), nn.Flatten(), nn.Linear(24, 5)]
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.abs_()
            m.bias.data.zero_()  # no input, no bias: the potential can stay put
    return SpikingNetwork(ModelConfig(arch="conv", input_shape=(2, 9, 11), timesteps=3), layers).eval()


def _assert_equal_to_neurobench(m: nn.Module, x: torch.Tensor, temporal: bool) -> dict:
    net = lower(m)
    rep = count_energy(net, x, FP32, temporal=temporal, model=m)
    data = x if temporal else x.unsqueeze(1).expand(len(x), net.timesteps, *x.shape[1:])
    ref, names = _neurobench(net, data)
    ours = rep["neurobench"]
    assert ours["SynapticOperations"] == pytest.approx(ref["SynapticOperations"], rel=1e-12)
    assert ours["MembraneUpdates"] == pytest.approx(ref["MembraneUpdates"], rel=1e-12)
    assert ours["NeuronOperations"] == pytest.approx(ref["NeuronOperations"], rel=1e-12)
    assert ours["ActivationSparsity"] == pytest.approx(ref["ActivationSparsity"], rel=1e-12)
    assert ours["ActivationSparsityByLayer"] == pytest.approx(
        {names[k]: v for k, v in ref["ActivationSparsityByLayer"].items()}, rel=1e-12)
    return rep


def test_mlp_metrics_equal_neurobench_direct_input():
    """Static, non-binary input: the first layer is MACs over non-zero pixels at every step."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="mlp", input_shape=(20,), hidden=(16, 12), timesteps=4)).eval()
    _prune(m)
    x = torch.rand(12, 20) * (torch.rand(12, 20) > 0.3)  # zero pixels are no NeuroBench operation
    rep = _assert_equal_to_neurobench(m, x, temporal=False)
    syn = rep["neurobench"]["SynapticOperations"]
    assert syn["Effective_MACs"] > 0 and syn["Effective_ACs"] > 0
    # pruned weights: NeuroBench's effective ACs are below our (all-weight) fan-out count
    assert syn["Effective_ACs"] < sum(r["ac"] for r in rep["layers"])


@pytest.mark.parametrize("reset,lam", [("hard", 0.5), ("soft", 1.0)])
def test_conv_metrics_equal_neurobench(reset, lam):
    """Stride, padding, dilation, groups, avg-pooled spikes (non-binary: NeuroBench MACs),
    pruned weights, binary event input (ACs) and direct input (MACs)."""
    m = _conv_net(reset, lam)
    _prune(m)
    g = torch.Generator().manual_seed(1)
    events = (torch.rand(10, 3, 2, 9, 11, generator=g) > 0.7).float()
    rep = _assert_equal_to_neurobench(m, events, temporal=True)
    assert rep["neurobench"]["SynapticOperations"]["Effective_MACs"] > 0  # the pooled readout
    mu = rep["neurobench"]["MembraneUpdates"]
    assert 0 < mu < sum(r["neurons"] * 3 for r in rep["neurons"])  # some potentials stay put
    frames = 2 * torch.rand(10, 2, 9, 11, generator=g)
    _assert_equal_to_neurobench(m, frames, temporal=False)


def test_static_metrics_equal_neurobench():
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.models import TorchModel

    for m in (build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 6))).eval(),
              _conv_net("hard", 0.5)):
        _prune(m, 0.25)
        rep = count_energy(lower(m), torch.rand(2, *m.config.input_shape), FP32, model=m)
        nb = TorchModel(m)
        ours = rep["neurobench"]
        assert ours["Footprint"] == Footprint()(nb)
        assert ours["ParameterCount"] == ParameterCount()(nb)
        assert ours["ConnectionSparsity"] == ConnectionSparsity()(nb) > 0.2


class _Seq(nn.Module):
    """Modules under globally unique child names (NeuroBench names a layer by its child name)."""

    def __init__(self, mods: list[nn.Module], names: dict, counter: list[int], op_names: list) -> None:
        super().__init__()
        self.order = []
        for m, op_name in zip(mods, op_names):
            key = f"n{counter[0]}"
            counter[0] += 1
            self.add_module(key, m)
            self.order.append(key)
            if op_name is not None:
                names[key] = op_name

    def forward(self, x):
        for key in self.order:
            m = getattr(self, key)
            x = m(x)[0] if isinstance(m, snn.SpikingNeuron) else m(x)
        return x


class _ResidualTwin(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module, out: nn.Module) -> None:
        super().__init__()
        self.body, self.shortcut, self.out = body, shortcut, out

    def forward(self, x):
        return self.out(self.body(x) + self.shortcut(x))


def _residual_twin(ops: list, names: dict, counter: list[int]) -> _Seq:
    """SnnTorchTwin's modules, with each lowered Residual as body + shortcut -> Leaky."""
    mods, op_names = [], []
    for op in ops:
        if isinstance(op, Residual):
            body = _residual_twin(op.body, names, counter)
            shortcut = _residual_twin(op.shortcut, names, counter)
            out = _residual_twin([op.out], names, counter)
            mods.append(_ResidualTwin(body, shortcut, out))
            op_names.append(None)
        else:
            mods.append(SnnTorchTwin(type("N", (), {"ops": [op]})()).layers[0])
            op_names.append(op.name if isinstance(op, Neuron) else None)
    return _Seq(mods, names, counter, op_names)


def test_resnet_energy_equals_neurobench_count():
    """A spiking ResNet (identity and 1x1 conv shortcuts, tdBN folded): NeuroBench counts the
    snnTorch twin's operations (each block ``Leaky(body(x) + shortcut(x))``; the sum itself is
    no NeuroBench operation) and our energy is those counts times the profile's costs."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="resnet19", input_shape=(2, 8, 8), width=2, timesteps=3, v_th=0.3)).eval()
    x = 2 * torch.rand(6, 2, 8, 8)
    net = lower(m)
    assert any(isinstance(op, Residual) and op.shortcut for op in net.ops)
    assert any(isinstance(op, Residual) and not op.shortcut for op in net.ops)
    rep = count_energy(net, x, FP32, temporal=False, model=m)
    names: dict = {}
    twin = _residual_twin(net.ops, names, [0])
    twin.forward = (lambda f: (lambda d: (f(d), None)))(twin.forward)

    from neurobench.metrics.workload import ActivationSparsityByLayer, MembraneUpdates, SynapticOperations
    from neurobench.models import SNNTorchModel

    model = SNNTorchModel(twin)
    model.register_hooks()
    data = x.unsqueeze(1).expand(len(x), net.timesteps, *x.shape[1:])
    with torch.no_grad():
        preds = model(data)
    batch = (data, torch.zeros(len(data)))
    ref = {cls.__name__: cls()(model, preds, batch)
           for cls in (SynapticOperations, MembraneUpdates, ActivationSparsityByLayer)}
    model.cleanup_hooks()
    ours = rep["neurobench"]
    assert ours["SynapticOperations"] == pytest.approx(ref["SynapticOperations"], rel=1e-12)
    assert ours["SynapticOperations"]["Effective_ACs"] > 0
    assert ours["MembraneUpdates"] == pytest.approx(ref["MembraneUpdates"], rel=1e-12)
    assert ours["ActivationSparsityByLayer"] == pytest.approx(
        {names[k]: v for k, v in ref["ActivationSparsityByLayer"].items()}, rel=1e-12)
    # the energy: NeuroBench's operations (per sample; unpruned, so its effective ACs are our
    # fan-out count) times the profile's AC and MAC costs
    nb = ref["SynapticOperations"]
    assert rep["total"]["snn_pj"] == pytest.approx(
        nb["Effective_ACs"] * FP32.ac_pj + nb["Effective_MACs"] * FP32.mac_pj, rel=1e-9)


def test_static_metrics_follow_parameters_replaced_or_written_in_place():
    """``static_metrics`` is cached per model on its tensors' identity and version."""
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.models import TorchModel

    from snn2hw.hwsim import static_metrics

    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="mlp", input_shape=(20,), hidden=(16, 12), timesteps=4)).eval()
    first = static_metrics(m)
    lin = next(x for x in m.modules() if isinstance(x, nn.Linear))
    old = lin.weight
    keep = (torch.arange(old.shape[1]) % 2).float()
    new = nn.Parameter(old.detach() * keep)   # half the columns zero, a new tensor ...
    with torch.no_grad():
        while new._version < old._version:    # ... with the old one's version: only identity differs
            new.mul_(1.0)
    assert new._version == old._version
    lin.weight = new
    replaced = static_metrics(m)
    assert replaced["ConnectionSparsity"] == ConnectionSparsity()(TorchModel(m)) > first["ConnectionSparsity"]
    with torch.no_grad():
        lin.weight[:4] = 0.0                  # written in place: the same tensor, a new version
    written = static_metrics(m)
    assert written["ConnectionSparsity"] == ConnectionSparsity()(TorchModel(m)) > replaced["ConnectionSparsity"]
    m.register_buffer("extra", torch.zeros(7))  # a new buffer: a new footprint
    assert static_metrics(m)["Footprint"] == Footprint()(TorchModel(m)) == written["Footprint"] + 28
