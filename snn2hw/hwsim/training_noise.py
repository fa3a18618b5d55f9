"""Noise-aware training: the robustness noise model inside the training forward.

Per training batch one fresh chip is drawn with the robustness sampler itself
(``noise.sample_chips``, one chip, ``chips=1``) from the network's *live*
parameters, so the perturbation is differentiable: a weight becomes
``w (1 + xi eps)`` (gradient ``1 + xi eps`` to ``w``), quantisation rounds
straight through (``export.grid.ste_round``), thresholds and decays become the
chip's per-neuron tensors. During the forward each neuron layer gets the
simulator's per-step noise, drawn in the simulator's order: thermal current
``sigma |V_th| N(0, 1)`` added to its input, then spike loss and dead neurons
applied to its spikes (the surrogate gradient passes through the kept spikes).

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
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..export.grid import ste_round
from .graph import ChipParams, Neuron, Synapse, lower
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
        if _noise_free(spec):
            self.net = None
            return
        # names, order, shapes and quantisation sources of what the simulator runs; it
        # refuses, by layer, any layer it cannot simulate (recurrent, CUBA)
        self.net = lower(model)

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
        lif = self.model.get_submodule(op.name)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        constants = {k: d[op.name][0].to(device) for k, d in (("lam", chip.lam), ("v_th", chip.v_th))
                     if op.name in d}
        sigma, loss, alive = self.spec.thermal, self.spec.spike_loss, chip.alive.get(op.name)

        def thermal(_: nn.Module, args: tuple) -> tuple:
            c = args[0]
            eps = torch.randn(c.shape, generator=g, dtype=c.dtype)
            return (c + (sigma * abs(op.v_th)) * eps.to(c.device), *args[1:])

        def spikes_out(_: nn.Module, args: tuple, s: Tensor) -> Tensor:
            if loss > 0:  # as the simulator: the neuron reset, the event is lost on the way
                s = s * (torch.rand(s.shape, generator=g) >= loss).to(s.device, s.dtype)
            if alive is not None:
                s = s * alive[0].to(s.device, s.dtype)
            return s

        handles = []
        if sigma > 0:
            handles.append(lif.register_forward_pre_hook(thermal))
        if loss > 0 or alive is not None:
            handles.append(lif.register_forward_hook(spikes_out))
        try:
            with _swapped(lif, constants, parameters=False):
                yield
        finally:
            for h in handles:
                h.remove()


def training_noise(model: nn.Module, options: dict[str, Any] | NoiseSpec | None) -> TrainingNoise:
    """The noise-aware-training handle of a run's ``train_noise`` option (empty: inactive)."""
    spec = options if isinstance(options, NoiseSpec) else noise_spec(options or {})
    return TrainingNoise(model, spec)


def batch_key(seed: int, epoch: int, batch: int) -> int:
    """The chip key of one training batch: a function of (seed, epoch, batch), so a resumed
    run draws the chips an uninterrupted one would."""
    return ((seed * 100_003 + epoch) * 1_000_003 + batch) * 2  # even: key + 1 is this batch's too
