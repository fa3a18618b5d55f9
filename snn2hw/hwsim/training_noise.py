"""Noise-aware training: the robustness noise model inside the training forward.

Per training batch one fresh chip is drawn with the robustness sampler itself
(``noise.sample_chips``, one chip, ``chips=1``) from the network's *live*
parameters, so the perturbation is differentiable: a weight becomes
``w (1 + xi eps)`` (gradient ``1 + xi eps`` to ``w``), quantisation rounds
straight through (``export.grid.ste_round``), thresholds and decays become the
chip's per-neuron tensors. During the forward each neuron layer gets the
simulator's per-step noise, drawn in the simulator's order: thermal current
``sigma |V_th| N(0, 1)`` added to its input (before a CUBA layer's synaptic
filter), then spike loss and dead neurons applied to its spikes (the surrogate
gradient passes through the kept spikes). A recurrent layer gets the same noise
per step, and, as on the chip, its ``W_rec`` sees the spikes delivered at t-1
while its neurons reset on the spikes they emitted.

Seeds follow ``noise.simulate``: chip parameters from ``key``, per-step noise
from ``key + 1``; so for one key the training forward of a network without tdBN
computes exactly what ``hwsim.graph.run`` computes for the chip
``sample_chips(lower(model), spec, 1, Generator().manual_seed(key))`` (asserted
in tests/test_train_noise.py).

Differences from the simulator, all because training runs the float graph:

* tdBN runs on batch statistics, so it cannot be folded: mismatch perturbs the
  synapse's own weight (the same as perturbing the folded weight, since folding
  scales each output channel) and own bias; quantisation uses the unfolded
  weight's grid.
* the membrane is not held on the state grid between steps (``state_bits``).

Only a noise-free model is ever saved: nothing here outlives the ``with`` block,
and in eval mode the block changes nothing.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..core.layers import neuron_lif
from ..export.grid import ste_round
from .graph import ChipParams, Neuron, Recurrent, Residual, Synapse, lower
from .noise import NoiseSpec, noise_spec, sample_chips


@dataclass
class _LiveLayout:
    """The lowered network's order, names and shapes, with the module's own parameters."""

    synapse_ops: list[Synapse]
    neuron_ops: list[Neuron]

    def synapses(self) -> list[Synapse]:
        return self.synapse_ops

    def neurons(self) -> list[Neuron]:
        return self.neuron_ops


def _noise_free(spec: NoiseSpec) -> bool:
    return (spec.mismatch == 0 and spec.thermal == 0 and spec.spike_loss == 0 and spec.dead == 0
            and spec.quant is None)


@contextmanager
def _swapped(obj: Any, values: dict[str, Any], parameters: bool) -> Iterator[None]:
    """Set attributes (or entries of ``_parameters``, which ``setattr`` refuses for a
    non-leaf tensor) for the duration of the block, then restore them."""
    store = obj._parameters if parameters else obj.__dict__
    old = {k: store[k] for k in values}
    try:
        store.update(values)
        yield
    finally:
        store.update(old)


class TrainingNoise:
    """A fresh chip per batch around a model's training forward (module docstring)."""

    def __init__(self, model: nn.Module, spec: NoiseSpec) -> None:
        self.model, self.spec = model, spec
        self.recurrent_of: dict[str, str] = {}
        if _noise_free(spec):
            self.net = None
            return
        # names, order, shapes and quantisation sources of what the simulator runs; it
        # refuses, by layer, any layer it cannot simulate
        self.net = lower(model)
        # neuron layer -> its RecurrentSpiking module: those neurons run one step at a time
        self.recurrent_of = {op.neuron.name: op.name for op in _recurrent_ops(self.net.ops)}

    @property
    def active(self) -> bool:
        return self.net is not None

    def draw(self, key: int) -> ChipParams:
        """The chip of ``key``: ``sample_chips`` on the live parameters, one chip."""
        synapses = [replace(op, weight=self.model.get_submodule(op.name).weight,
                            bias=self.model.get_submodule(op.name).bias) for op in self.net.synapses()]
        layout = _LiveLayout(synapses, self.net.neurons())
        return sample_chips(layout, self.spec, 1, torch.Generator().manual_seed(key), round_fn=ste_round)

    @contextmanager
    def batch(self, key: int) -> Iterator[None]:
        """Run the block's forward on the chip of ``key`` with per-step noise from ``key + 1``;
        nothing happens when the spec is noise-free or the model is in eval mode."""
        if not self.active or not self.model.training:
            yield
            return
        chip, step_noise = self.draw(key), torch.Generator().manual_seed(key + 1)
        with ExitStack() as stack:
            for op in self.net.synapses():
                w, b = chip.weights.get(op.name, (None, None))
                if w is not None:
                    new = {"weight": w[0]} | ({"bias": b[0]} if b is not None else {})
                    stack.enter_context(_swapped(self.model.get_submodule(op.name), new, parameters=True))
            for op in self.net.neurons():
                stack.enter_context(self._neuron(op, chip, step_noise))
            yield

    @contextmanager
    def _neuron(self, op: Neuron, chip: ChipParams, g: torch.Generator) -> Iterator[None]:
        layer = self.model.get_submodule(op.name)     # a LIF or a CUBA (whose LIF holds lam, V_th)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        constants = {k: d[op.name][0].to(device) for k, d in (("lam", chip.lam), ("v_th", chip.v_th))
                     if op.name in d}
        sigma, loss, alive = self.spec.thermal, self.spec.spike_loss, chip.alive.get(op.name)

        def thermal(c: Tensor) -> Tensor:
            eps = torch.randn(c.shape, generator=g, dtype=c.dtype)
            return c + (sigma * abs(op.v_th)) * eps.to(c.device)

        def delivered(s: Tensor) -> Tensor:
            if loss > 0:  # as the simulator: the neuron reset, the event is lost on the way
                s = s * (torch.rand(s.shape, generator=g) >= loss).to(s.device, s.dtype)
            if alive is not None:
                s = s * alive[0].to(s.device, s.dtype)
            return s

        with ExitStack() as stack:
            stack.enter_context(_swapped(neuron_lif(layer), constants, parameters=False))
            if sigma > 0 or loss > 0 or alive is not None:
                if op.name in self.recurrent_of:
                    loop = self.model.get_submodule(self.recurrent_of[op.name])
                    stack.enter_context(_noisy_steps(loop, layer, thermal if sigma > 0 else None, delivered))
                else:
                    stack.enter_context(_noisy_forward(layer, thermal if sigma > 0 else None, delivered))
            yield


def _recurrent_ops(ops: list) -> list[Recurrent]:
    out: list[Recurrent] = []
    for op in ops:
        if isinstance(op, Recurrent):
            out.append(op)
        elif isinstance(op, Residual):
            out += _recurrent_ops(op.body) + _recurrent_ops(op.shortcut)
    return out


@contextmanager
def _noisy_forward(layer: nn.Module, thermal: Callable[[Tensor], Tensor] | None,
                   delivered: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Hooks on a feed-forward neuron layer: ``thermal`` on its input currents (T, B, ...),
    ``delivered`` on its spikes."""
    handles = [layer.register_forward_hook(lambda _m, _a, s: delivered(s))]
    if thermal is not None:
        handles.append(layer.register_forward_pre_hook(lambda _m, args: (thermal(args[0]), *args[1:])))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _noisy_steps(loop: nn.Module, layer: nn.Module, thermal: Callable[[Tensor], Tensor] | None,
                 delivered: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """The same noise per step of a ``RecurrentSpiking`` loop, which calls ``layer.step``.

    The loop feeds ``state.s`` back through ``W_rec``, so the wrapped step returns a state
    that carries the *delivered* spikes (what the simulator feeds back) and hands the
    neurons their *emitted* spikes again at the next step (what they reset on)."""
    step, emitted = layer.step, {}

    def noisy_step(c: Tensor, state: Any) -> tuple[Tensor, Any]:
        if "s" in emitted:
            state = state._replace(s=emitted["s"])
        s, state = step(thermal(c) if thermal is not None else c, state)
        emitted["s"] = s
        s = delivered(s)
        return s, state._replace(s=s)

    handle = loop.register_forward_pre_hook(lambda _m, _a: emitted.clear())  # a new sequence
    layer.step = noisy_step
    try:
        yield
    finally:
        handle.remove()
        del layer.step  # the class's method again


def training_noise(model: nn.Module, options: dict[str, Any] | NoiseSpec | None) -> TrainingNoise:
    """The noise-aware-training handle of a run's ``train_noise`` option (empty: inactive)."""
    spec = options if isinstance(options, NoiseSpec) else noise_spec(options or {})
    return TrainingNoise(model, spec)


def batch_key(seed: int, epoch: int, batch: int) -> int:
    """The chip key of one training batch: a function of (seed, epoch, batch), so a resumed
    run draws the chips an uninterrupted one would."""
    return ((seed * 100_003 + epoch) * 1_000_003 + batch) * 2  # even: key + 1 is this batch's too
