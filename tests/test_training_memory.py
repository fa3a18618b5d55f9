"""Memory of a training step: what the fused LIF and the network keep for backward.

Peaks are counted in tensor bytes (every storage an aten op makes, alive until freed),
exact and the same on every machine, and compared with hand-computed floors; the
numbers themselves (spikes, gradients) must not change."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from snn2hw.core import _kernel
from snn2hw.core.fused import compact_spikes, fused_lif
from snn2hw.core.layers import LIF
from snn2hw.core.surrogate import SURROGATES
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages made by aten ops inside the mode, alive at the same time;
    ``existing`` tensors (weights, inputs) are not counted when an op returns a view of them."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and key not in self.existing and storage.nbytes() > 0:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


def _mlp(T: int) -> torch.nn.Module:
    cfg = ModelConfig(arch="mlp", input_shape=(1, 28, 28), num_classes=10, hidden=(256, 256), timesteps=T,
                      lam=0.5, v_th=1.0, reset="hard", surrogate="arctan", surrogate_param=1.0)
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(B: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 1, 28, 28, generator=g) * 2.0, torch.randint(0, 10, (B,), generator=g)


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model.forward_sequence(x).mean(0), y).backward()


@pytest.fixture
def with_kernel():
    if not _kernel.available(torch.zeros(1)):
        pytest.skip("no compiled LIF kernel (scripts/setup builds it)")


@pytest.mark.parametrize("T", [4, 8])
def test_mlp_step_peak_is_its_hand_computed_floor(with_kernel, T):
    """MLP 784-256-256-10, batch 64 (perf_compare's): with A = T*64*256 floats, the last
    LIF's backward holds its incoming gradient, the saved x, the surrogate's values (which
    become the gradient) and the first layer's spikes as bool: 3A + A/4; the first LIF's,
    the incoming gradient, the recomputed x, the surrogate, and W2's gradient (256^2): 3A +
    65536; the second linear's backward, its incoming gradient, its input's gradient, the
    spikes back as float and as bool, and W2's gradient: 3.25A + 65536. Plus small ones:
    the first layer's one frame and the kernel's carry (64*256 each), W3's gradient and the
    biases'. Before (spikes saved as float, a separate gradient buffer) T=4: 1.385 MiB."""
    torch.set_num_threads(1)
    model, (x, y) = _mlp(T), _batch()
    _step(model, x, y)  # warm-up: nothing of it is counted
    model.zero_grad(set_to_none=True)
    A, frame, small = T * 64 * 256, 64 * 256, 10 * 256 + 256 + 256 + 10 + 1024
    floor = 4 * max(3.25 * A + 65536, 3 * A + A // 4, 3 * A + 65536) + 4 * (2 * frame + small)
    with LiveBytes([*model.parameters(), *model.buffers(), x, y]) as probe:
        _step(model, x, y)
    assert probe.peak <= floor, (probe.peak / 2**20, floor / 2**20)


def test_saved_spikes_are_bool_and_the_float_spikes_freed():
    """Between layers the graph keeps the exact step's spikes as bool only: the float
    spikes of the first LIF die once the next layer ran."""
    model, (x, _) = _mlp(4), _batch(8)
    spikes: list[weakref.ref] = []
    lif = next(m for m in model.modules() if isinstance(m, LIF))
    lif.register_forward_hook(lambda m, i, out: spikes.append(weakref.ref(out)))
    out = model.forward_sequence(x)
    assert out.requires_grad and spikes[0]() is None


def _linear_after_lif(modify=None, value_fn=None, membrane=False):
    """(spikes, weight gradient) of ``W @ spikes`` behind a fused LIF, float64."""
    g = torch.Generator().manual_seed(1)
    c = (torch.randn(5, 6, 7, generator=g, dtype=torch.float64) + 0.8).requires_grad_()
    w = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    out = fused_lif(c * 1.0, torch.tensor(1.0, dtype=torch.float64), 0.5, 1.0, "hard", SURROGATES["arctan"](),
                    value_fn=value_fn, membrane=membrane)
    s, u = out if membrane else (out, None)
    if modify is not None:
        with torch.no_grad():
            modify(s)
    weights = torch.linspace(-1, 1, 3, dtype=torch.float64)
    loss = (F.linear(s.flatten(0, 1), w) * weights).sum()
    if u is not None:  # the membrane, saved by a synapse too, must stay as it is
        loss = loss + (F.linear(u.flatten(0, 1), w) * weights.flip(0)).sum()
    return s.detach().clone(), torch.autograd.grad(loss, (c, w))


@pytest.mark.parametrize("case", ["exact", "changed in place", "non-binary strategy", "membrane"])
def test_compact_spikes_keeps_the_numbers(case):
    """Gradients with compact_spikes equal those without, to the bit, also where the
    saved tensor must not be packed: spikes changed in place (0.5, not 1), a strategy
    whose spike values are not 0/1, spikes returned with the membrane."""
    kwargs = {"exact": {}, "changed in place": {"modify": lambda s: s.mul_(0.5)},
              "non-binary strategy": {"value_fn": lambda x: torch.sigmoid(4 * x)},
              "membrane": {"membrane": True}}[case]
    s_ref, g_ref = _linear_after_lif(**kwargs)
    with compact_spikes():
        s, g = _linear_after_lif(**kwargs)
    assert torch.equal(s, s_ref)
    for a, b in zip(g, g_ref):
        assert torch.equal(a, b)
