"""hwsim's counts made inside the compiled kernel against the torch path that computes
them from the recorded run (the reference; its numbers equal NeuroBench's,
tests/test_hwsim_metrics.py): per-unit spikes and membrane changes of a LIF layer,
per-call non-zero counts, sums and binary tests of a synapse's input, and a whole
energy report."""

from __future__ import annotations

import pytest
import torch

from snn2hw.core import _kernel
from snn2hw.core.fused import counted_lif, fused_lif, neuron_counts
from snn2hw.core.surrogate import Triangle
from snn2hw.hwsim import PROFILES, count_energy, lower
from snn2hw.hwsim.energy import call_counts
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model


@pytest.fixture
def kernel(monkeypatch):
    """The compiled kernel, loaded (skipped where the set-up could not build it)."""
    lib = _kernel.load()
    if lib is None:
        pytest.skip("the compiled LIF kernel is not built here (scripts/setup)")
    monkeypatch.setattr(_kernel, "_lib", lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    return lib


def _torch_only(monkeypatch) -> None:
    monkeypatch.setattr(_kernel, "_lib", None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset,lam", [("hard", 0.5), ("soft", 0.5), ("hard", 1.0), ("soft", 1.0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_counted_lif_kernel_equals_torch(kernel, monkeypatch, dtype, reset, lam, threads):
    """Per-unit spike sums and membrane changes, over several 512-neuron chunks whose
    borders fall inside a sample (37 units), zero currents (u stays put at 0, also after
    a hard reset; at lam = 1 anywhere), and one or two threads (per-thread rows)."""
    g = torch.Generator().manual_seed(3)
    T, B, C, F = 6, 20, 2, 37
    c = (torch.randn(T, B, C, F, generator=g, dtype=dtype) * 1.2 + 0.4)
    c[:3] *= (torch.rand(B, C, F, generator=g) > 0.5).to(dtype)  # u = 0 kept by half the neurons
    c[4] *= (torch.rand(B, C, F, generator=g) > 0.5).to(dtype)   # and after a hard reset
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s, per_unit, changes = counted_lif(c, lam, 1.0, reset, F)
    finally:
        torch.set_num_threads(old)
    s_ref, u = fused_lif(c, torch.zeros(()), lam, 1.0, reset, Triangle(), membrane=True)
    unit_ref, changes_ref = neuron_counts(s_ref, u, F)
    assert torch.equal(s, s_ref)
    assert torch.equal(per_unit, unit_ref) and per_unit.shape == (F,)
    assert int(changes) == int(changes_ref)
    # neither count is trivial here: some units silent and some busy, some potentials kept
    assert 0 < int(changes_ref) < (T - 1) * B * C * F
    assert unit_ref.min() < unit_ref.max()
    _torch_only(monkeypatch)
    s2, unit2, changes2 = counted_lif(c, lam, 1.0, reset, F)
    assert torch.equal(s2, s_ref) and torch.equal(unit2, unit_ref) and int(changes2) == int(changes_ref)


def _calls(dtype=torch.float32) -> torch.Tensor:
    """(T, B, C, units) synapse input: step 0 binary with -1s, step 1 avg-pooled spikes
    (quarters), step 2 all zero, step 3 binary 0/1, step 4 one stray 2 (not binary)."""
    g = torch.Generator().manual_seed(5)
    shape = (30, 2, 600)  # 600 units: two 512-unit chunks
    x = torch.zeros(5, *shape, dtype=dtype)
    x[0] = torch.randint(-1, 2, shape, generator=g).to(dtype)
    x[1] = torch.randint(0, 5, shape, generator=g).to(dtype) / 4
    x[3] = torch.randint(0, 2, shape, generator=g).to(dtype)
    x[4] = x[3]
    x[4, 7, 1, 599] = 2.0
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_call_counts_kernel_equals_torch(kernel, monkeypatch, dtype):
    x = _calls(dtype)
    got = [call_counts(x, 3), call_counts(x[1], 2)]
    _torch_only(monkeypatch)
    ref = [call_counts(x, 3), call_counts(x[1], 2)]
    for (nz, sums, binary), (nz_r, sums_r, binary_r) in zip(got, ref):
        assert torch.equal(nz, nz_r) and torch.equal(sums, sums_r) and torch.equal(binary, binary_r)
    assert ref[0][2].tolist() == [True, False, True, True, False]  # the reference's own verdicts
    assert ref[1][2].tolist() == [False]
    assert ref[0][0][0].sum() == (x[0] != 0).sum()


def test_energy_report_equal_with_and_without_kernel(kernel, monkeypatch):
    """A conv net (avg-pooled spikes: per-call binary tests; event input) and an MLP: the
    whole report, NeuroBench's metrics included, is the same from either path."""
    torch.manual_seed(0)
    conv = build_model(ModelConfig(arch="conv", input_shape=(2, 8, 8), channels=(4, 6), timesteps=3)).eval()
    mlp = build_model(ModelConfig(arch="mlp", input_shape=(20,), hidden=(16, 12), timesteps=4)).eval()
    g = torch.Generator().manual_seed(2)
    cases = [(conv, (torch.rand(3, 10, 2, 8, 8, generator=g) > 0.7).float(), True),
             (conv, 2 * torch.rand(10, 2, 8, 8, generator=g), False),
             (mlp, 2 * torch.rand(12, 20, generator=g), False)]
    reports = []
    for model, x, temporal in cases:
        net = lower(model)
        reports.append(count_energy(net, x, PROFILES["45nm-fp32"], temporal=temporal, model=model))
    _torch_only(monkeypatch)
    for (model, x, temporal), rep in zip(cases, reports):
        ref = count_energy(lower(model), x, PROFILES["45nm-fp32"], temporal=temporal, model=model)
        assert rep == ref
        assert ref["neurobench"]["MembraneUpdates"] > 0 and ref["total"]["spikes"] > 0


class _Counts:
    """Observer keeping each neuron layer's delivered spikes and its counts."""

    wants_counts = True

    def __init__(self) -> None:
        self.seen: dict[str, tuple] = {}

    def synapse(self, op, x, nlead) -> None:
        pass

    def neuron(self, op, spikes, counts=None) -> None:
        self.seen[op.name] = (spikes, counts)


def test_counts_are_of_delivered_spikes(kernel):
    """With spike loss and dead neurons the counts are of what arrives downstream, not of
    what the kernel emitted; the membrane changes are the neurons' own."""
    from snn2hw.hwsim.graph import ChipParams, RunNoise, run
    from snn2hw.hwsim.noise import NoiseSpec, sample_chips
    torch.manual_seed(0)
    mlp = build_model(ModelConfig(arch="mlp", input_shape=(20,), hidden=(16,), timesteps=4)).eval()
    net = lower(mlp)
    x = 3 * torch.rand(30, 20, generator=torch.Generator().manual_seed(1))
    clean, lossy = _Counts(), _Counts()
    with torch.inference_mode():
        run(net, x, ChipParams(chips=2), observer=clean)
        run(net, x, sample_chips(net, NoiseSpec(dead=0.25), 2, torch.Generator().manual_seed(4)),
            RunNoise(spike_loss=0.3, generator=torch.Generator().manual_seed(3)), observer=lossy)
    for name, (s, (per_unit, changes)) in lossy.seen.items():
        assert torch.equal(per_unit, s.reshape(-1, s[0, 0, 0].numel()).sum(0))
        assert per_unit.sum() < clean.seen[name][1][0].sum()  # some spikes were lost
        assert int(changes) == int(clean.seen[name][1][1])    # the same membranes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("T,B,F,v_th", [(5, 7, 3, 1.0), (3, 9, 57, 1.0), (4, 7, 3, -0.3), (1, 5, 3, 1.0)])
def test_counted_lif_kernel_tails(kernel, dtype, reset, T, B, F, v_th):
    """The kernel's vector blocks at their edges: neuron counts that leave a partial block
    at the end (21, 513: a second chunk of one neuron), fewer units than a block's lanes
    (3), a negative threshold (a padded lane would spike at once and, soft, change its u)
    and one step; counts equal the torch path's."""
    g = torch.Generator().manual_seed(11)
    c = torch.randn(T, B, 1, F, generator=g, dtype=dtype) * 1.2 + 0.4
    s, per_unit, changes = counted_lif(c, 0.5, v_th, reset, F)
    s_ref, u = fused_lif(c, torch.zeros(()), 0.5, v_th, reset, Triangle(), membrane=True)
    unit_ref, changes_ref = neuron_counts(s_ref, u, F)
    assert torch.equal(s, s_ref) and torch.equal(per_unit, unit_ref)
    assert int(changes) == int(changes_ref)
    assert unit_ref.sum() > 0 and (T == 1 or int(changes_ref) > 0)


def _pruned(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with a third of its weights zero and the rest tripled (every layer spikes):
    NeuroBench's effective ACs (the non-zero weights' fan-outs) differ from the ACs, so a
    count taken with the wrong fan-out row shows."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) > 0.33).float()).mul_(3.0)
    return model


def _shortcut_cases() -> list[tuple[torch.nn.Module, torch.Tensor, bool]]:
    """An MLP 64-37-21-10 (units not a multiple of the kernel's 4 lanes) on static and on
    event input, and a conv net whose fc layer's spikes reach the readout unpooled."""
    torch.manual_seed(0)
    mlp = _pruned(build_model(ModelConfig(arch="mlp", input_shape=(64,), hidden=(37, 21), timesteps=4)).eval())
    conv = _pruned(build_model(ModelConfig(arch="conv", input_shape=(2, 8, 8), channels=(4, 6), timesteps=3,
                                           fc_hidden=13)).eval())
    with torch.no_grad():  # the fc layer's bias: it spikes behind the sparse pooled events
        conv.layers[9].bias.uniform_(0.3, 0.9, generator=torch.Generator().manual_seed(6))
    # max-pooled and recurrent (W_rec reads s[t-1]) spikes: binary, but not the tensor the LIF
    # delivered, so counted by call_counts
    maxpool = _pruned(build_model(ModelConfig(arch="conv", input_shape=(2, 8, 8), channels=(4, 6), timesteps=3,
                                              pool="max")).eval())
    srnn = _pruned(build_model(ModelConfig(arch="srnn", input_shape=(64,), hidden=(19,), timesteps=5)).eval())
    g = torch.Generator().manual_seed(2)
    return [(mlp, 2 * torch.rand(50, 64, generator=g), False),
            (mlp, (torch.rand(50, 4, 64, generator=g) > 0.6).float(), True),  # (B, T, ...)
            (conv, 2 * torch.rand(20, 2, 8, 8, generator=g), False),
            (maxpool, 2 * torch.rand(20, 2, 8, 8, generator=g), False),
            (srnn, 2 * torch.rand(20, 64, generator=g), False)]


@pytest.mark.parametrize("use_kernel", [True, False])
def test_report_equal_without_reusing_neuron_counts(kernel, monkeypatch, use_kernel):
    """A synapse fed by a LIF's unpooled spikes takes the LIF's per-unit sums as its events
    and NeuroBench's ACs; the reference runs call_counts on those spikes instead (non-zeros,
    sums and binary flags per call). Every number of the report is the same, over batches
    of 16 (the reused sums are the current batch's)."""
    from snn2hw.hwsim.energy import SynOpCounter
    if not use_kernel:
        _torch_only(monkeypatch)
    for model, x, temporal in _shortcut_cases():
        net = lower(model)
        fast = count_energy(net, x, PROFILES["45nm-fp32"], batch_size=16, temporal=temporal, model=model)
        monkeypatch.setattr(SynOpCounter, "reuse_neuron_counts", False)
        ref = count_energy(net, x, PROFILES["45nm-fp32"], batch_size=16, temporal=temporal, model=model)
        monkeypatch.setattr(SynOpCounter, "reuse_neuron_counts", True)
        assert fast == ref
        hidden = [r for r in ref["layers"] if r["source"] not in ("", "input")]
        assert hidden and all(r["ac"] > 0 for r in hidden)  # the reused counts are not trivial
        assert ref["neurobench"]["SynapticOperations"]["Effective_ACs"] > 0


def test_call_counts_skips_lif_spikes(kernel, monkeypatch):
    """The counted run reads a synapse's input with call_counts only where it is not a
    LIF's spikes as delivered: the MLP's network input (once per batch of 16: 4 batches),
    the conv nets' input and pooled spikes, the srnn's s[t-1]; not the spikes of the LIFs
    that a linear layer reads unchanged (the MLP's hidden layers, the fc layer's)."""
    import sys
    energy_mod = sys.modules["snn2hw.hwsim.energy"]
    seen: list[tuple[int, ...]] = []

    def recording(x, nlead):
        seen.append(tuple(x.shape[nlead:]))
        return call_counts(x, nlead)

    monkeypatch.setattr(energy_mod, "call_counts", recording)
    conv = [(2, 8, 8), (4, 4, 4), (24,)]  # per batch; the srnn's W_rec reads s[t-1]: 19 units
    expected = [[(64,)] * 4, [(64,)] * 4, conv * 2, conv * 2, [(64,), (19,)] * 2]
    for (model, x, temporal), want in zip(_shortcut_cases(), expected):
        seen.clear()
        count_energy(lower(model), x, PROFILES["45nm-fp32"], batch_size=16, temporal=temporal)
        assert seen == want
