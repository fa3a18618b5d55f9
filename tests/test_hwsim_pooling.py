"""hwsim's LIF fused with the avg/sum pooling after it (hwsim/pooling.py, the kernel's
``lif_pool_forward`` with counts) against the same ops run apart, the reference: the
pooled output bit for bit, the LIF's own spikes per unit (before pooling) and membrane
changes as ``fused.neuron_counts`` computes them from the recorded run, and whole energy
reports (NeuroBench's metrics included) equal to those of the unfused counted run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snn2hw.core import _kernel
from snn2hw.core.fused import fused_lif, neuron_counts
from snn2hw.core.fusion import PoolArgs
from snn2hw.core.layers import LIF, Pool
from snn2hw.core.surrogate import Triangle
from snn2hw.hwsim import PROFILES, count_energy, graph, lower
from snn2hw.hwsim.graph import ChipParams, RunNoise, run
from snn2hw.hwsim.pooling import lif_pool
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import SpikingNetwork

pytestmark = pytest.mark.skipif(_kernel._library() is None, reason="no compiled kernel: nothing is fused")


@pytest.fixture
def fused_calls(count_calls):
    """How many times graph.run took the fused LIF + pool op."""
    return count_calls(graph, "lif_pool")


def _currents(spatial: tuple[int, ...], dtype, T: int = 6, B: int = 3, C: int = 2, ch: int = 3,
              seed: int = 0) -> torch.Tensor:
    """(T, B, C, ch, *spatial) currents; a third of the neurons get 0 for the first steps
    (u stays put) and some again at step 4 (u kept after a hard reset)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, C, ch, *spatial, generator=g, dtype=dtype) * 1.2 + 0.4
    x[:3] *= (torch.rand(B, C, ch, *spatial, generator=g) > 0.33).to(dtype)
    x[4] *= (torch.rand(B, C, ch, *spatial, generator=g) > 0.5).to(dtype)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("spatial,k,mode", [((7, 5), 2, "avg"), ((8, 11), 3, "sum"), ((13,), 2, "sum"),
                                            ((17,), 3, "avg"), ((3, 3), 3, "avg")])
def test_lif_pool_counts_equal_separate_ops(threads, dtype, reset, spatial, k, mode):
    """Planes whose sizes leave a partial vector block (35, 88, 13, 17, 9 neurons) and rows
    or columns in no window (7 x 5 by 2, 8 x 11 by 3, 13 by 2, 17 by 3): pooled output,
    spikes per unit and membrane changes equal to the LIF and the pooling run apart."""
    x = _currents(spatial, dtype)
    dims = len(spatial)
    pooled, (per_unit, changes) = lif_pool(0.5, 1.0, reset, PoolArgs(mode, k, dims), x, counted=True)
    s, u = fused_lif(x, torch.zeros(()), 0.5, 1.0, reset, Triangle(), membrane=True)
    units = x[0, 0, 0].numel()
    unit_ref, changes_ref = neuron_counts(s, u, units)
    flat = s.flatten(0, 2)
    ref = Pool(mode, k, dims)(flat).view(*s.shape[:3], *flat.shape[1:2], *[n // k for n in spatial])
    assert torch.equal(pooled, ref)
    assert per_unit.shape == (units,) and torch.equal(per_unit, unit_ref)
    assert int(changes) == int(changes_ref)
    # neither count is trivial: silent and busy units, kept and changed potentials
    assert unit_ref.min() < unit_ref.max() and 0 < int(changes_ref) < s[1:].numel()
    plain, none = lif_pool(0.5, 1.0, reset, PoolArgs(mode, k, dims), x, counted=False)
    assert none is None and torch.equal(plain, ref)


def test_lif_pool_negative_threshold_and_one_step(threads):
    """A negative threshold (padded lanes would spike and, soft, change u) and T = 1."""
    for T, v_th, reset in [(5, -0.3, "soft"), (1, 1.0, "hard")]:
        x = _currents((5, 3), torch.float32, T=T) if T > 4 else torch.randn(T, 2, 1, 3, 5, 3)
        _, (per_unit, changes) = lif_pool(0.5, v_th, reset, PoolArgs("avg", 2, 2), x, counted=True)
        s, u = fused_lif(x, torch.zeros(()), 0.5, v_th, reset, Triangle(), membrane=True)
        unit_ref, changes_ref = neuron_counts(s, u, x[0, 0, 0].numel())
        assert torch.equal(per_unit, unit_ref) and int(changes) == int(changes_ref)


def _conv_net(dims: int, k: int, mode: str, reset: str, seed: int = 0) -> SpikingNetwork:
    """conv -> LIF -> pool twice, odd sizes (the pools drop rows/columns), then a readout."""
    torch.manual_seed(seed)
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    shape = (2, 23) if dims == 1 else (2, 23, 19)
    size = [n for n in shape[1:]]
    for _ in range(2):
        size = [(n - 2) // k for n in size]  # conv 3 without padding, then the pool
    layers = [conv(2, 4, 3), LIF(0.5, 0.4, reset), Pool(mode, k, dims),
              conv(4, 5, 3), LIF(0.5, 0.4, reset), Pool(mode, k, dims),
              nn.Flatten(), nn.Linear(5 * int(torch.tensor(size).prod()), 3)]
    for m in layers:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            m.weight.data.abs_()  # plenty of spikes
    return SpikingNetwork(ModelConfig(arch="conv", input_shape=shape, timesteps=4, reset=reset), layers).eval()


@pytest.mark.parametrize("dims,k,mode", [(1, 2, "avg"), (1, 3, "sum"), (2, 2, "sum"), (2, 3, "avg")])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("energy_model", ["compute", "lemaire"])
def test_energy_report_fused_equals_unfused(threads, fused_calls, monkeypatch, dims, k, mode, reset,
                                            energy_model):
    """Every number of the report, static (direct encoding) and event input, with the LIFs
    fused with their pools and with them run apart (``_fused_pool`` refusing)."""
    model = _conv_net(dims, k, mode, reset)
    g = torch.Generator().manual_seed(2)
    shape = model.config.input_shape
    cases = [(2 * torch.rand(9, *shape, generator=g), False),
             ((torch.rand(9, 4, *shape, generator=g) > 0.6).float(), True)]
    reports = [count_energy(lower(model), x, PROFILES["45nm-fp32"], temporal=temporal,
                            energy_model=energy_model, model=model) for x, temporal in cases]
    assert len(fused_calls) == 2 * len(cases)  # both LIF layers of every run were fused
    monkeypatch.setattr(graph, "_fused_pool", lambda *a: None)
    for (x, temporal), rep in zip(cases, reports):
        ref = count_energy(lower(model), x, PROFILES["45nm-fp32"], temporal=temporal,
                           energy_model=energy_model, model=model)
        assert rep == ref
        assert ref["neurobench"]["MembraneUpdates"] > 0 and all(n["spikes_per_sample"] > 0 for n in ref["neurons"])


class _Spikes:
    """An observer that reads the spike values: the LIF must run by itself for it."""

    wants_counts = True

    def __init__(self) -> None:
        self.spikes: list[torch.Tensor] = []

    def synapse(self, op, x, nlead) -> None:
        pass

    def neuron(self, op, spikes, counts=None) -> None:
        self.spikes.append(spikes.clone())


def test_runs_apart_where_it_must(fused_calls):
    """No fusion for an observer that reads spikes, per-chip constants or run noise; the
    readout is the same either way where the run is deterministic."""
    from snn2hw.hwsim.noise import NoiseSpec, sample_chips
    model = _conv_net(2, 2, "avg", "hard")
    net = lower(model)
    x = 2 * torch.rand(5, *model.config.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = run(net, x, ChipParams(chips=2))
        assert len(fused_calls) == 2
        obs = _Spikes()
        assert torch.equal(run(net, x, ChipParams(chips=2), observer=obs), y)
        assert all(s.sum() > 0 for s in obs.spikes)
        run(net, x, sample_chips(net, NoiseSpec(dead=0.1), 2, torch.Generator().manual_seed(4)))
        run(net, x, ChipParams(chips=2), RunNoise(thermal=0.1, generator=torch.Generator().manual_seed(3)))
    assert len(fused_calls) == 2
