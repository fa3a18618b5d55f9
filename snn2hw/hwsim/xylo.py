"""Xylo in hwsim (``robustness --target xylo``, ``quant=xylo``): the network on the integers the
xylo exporter writes, stepped by Xylo's own neuron rule, so that a noise-free run predicts the
classes the chip does.

A bit-width model (``noise.sample_chips``: 8-bit weights, 16-bit state) misses what decides a
float model's fate on Xylo: bit-shift decays, a threshold of ``G V_th + 1``, and bursts of up to 31
spikes per step that feed back through the recurrent weights and saturate. Here every CUBA layer
runs ``snn2hw.export.xylo.grid.XyloStep`` (the rule QAT trains with, equal to our emulator and
xylosim spike for spike) on the weights ``XyloGrid`` puts on Xylo's grid, the input becomes
``round(L clip(x)) / L`` events, and the readout integrates as Xylo's output neurons do
(``grid.readout_step``). Only weight mismatch applies on top (thresholds and decays are digital
on Xylo); the weights jitter in float units and the step adds them rounded to integers again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.neuron import cuba_initial_state
from ..core.surrogate import heaviside
from ..export.grid import NeuronStep, Site
from ..export.xylo.grid import XyloGrid, readout_step
from ..export.xylo.limits import WEIGHT_MAX
from ..export.xylo.mapping import readout_gain
from .graph import LoweredNet, Recurrent, Residual, Synapse


@dataclass(frozen=True)
class InputEvents:
    """The host's input encoding (``XyloNet.events``) in float units: ``round(L clip(x)) / L``."""

    lo: float
    hi: float
    levels: int

    def __call__(self, x: Tensor) -> Tensor:
        return torch.round(x.clamp(self.lo, self.hi) * self.levels) / self.levels


@dataclass(frozen=True)
class XyloReadout:
    """Xylo's output neurons over the T steps of readout currents ``(T, ..., K)`` (no bias), then
    the host's logits ``(Vmem + Isyn) / (G_out T) + b``, repeated over T (the sweep averages them)."""

    step: NeuronStep
    bias: Tensor

    def __call__(self, c: Tensor) -> Tensor:
        state = cuba_initial_state(c[0])
        for ct in c:
            _, state = self.step(ct, state, heaviside)
        logits = (state.u + state.i) / len(c) + self.bias.to(c.device, c.dtype)
        return logits.unsqueeze(0).expand(len(c), *logits.shape)


@dataclass
class XyloChip:
    """A network's synapse weights and biases on Xylo's grid (float units; the readout's bias is
    added by ``readout``), and the rules ``graph.run`` applies instead of the float ones
    (``graph.ChipParams``)."""

    weights: dict[str, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    steps: dict[str, NeuronStep] = field(default_factory=dict)
    readout: dict[str, XyloReadout] = field(default_factory=dict)
    input_q: InputEvents | None = None


def xylo_chip(net: LoweredNet) -> XyloChip | None:
    """``net`` on Xylo (module docstring), or None where Xylo's rule does not apply: a layer that
    is not CUBA (the xylo exporter refuses it), a residual block, or no linear readout last."""
    neurons, synapses = net.neurons(), net.synapses()
    if (not neurons or not all(n.cuba for n in neurons) or not net.ops or not isinstance(net.ops[-1], Synapse)
            or any(isinstance(op, Residual) for op in net.ops) or net.ops[-1].kind != "linear"):
        return None
    grid = XyloGrid()
    grid.input_range = net.input_range or grid.input_range
    by_name = {s.name: s for s in synapses}
    recurrent = {op.neuron.name: op.synapse for op in net.ops if isinstance(op, Recurrent)}
    chip = XyloChip(input_q=InputEvents(*grid.input_range, grid.input_levels))
    for n in neurons:
        s, rec = by_name[n.source], recurrent.get(n.name)
        first = s.name == synapses[0].name
        b = s.bias if s.bias is not None else torch.zeros(s.weight.shape[0], dtype=s.weight.dtype)
        q = grid.quantise(Site(s.name, s.weight, b, n.v_th, n.lam, 1.0 / grid.input_levels if first else 1.0,
                               n.alpha, None if rec is None else rec.weight))
        chip.weights[s.name] = (q.weight.detach(), q.bias.detach())
        if rec is not None:
            chip.weights[rec.name] = (q.weight_rec.detach(), None)
        chip.steps[n.name] = q.step
    out = net.ops[-1]
    g = torch.as_tensor(readout_gain(out.weight.detach().double().numpy(), net.timesteps), dtype=out.weight.dtype)
    w = torch.round(out.weight * g[:, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX) / g[:, None]
    chip.weights[out.name] = (w, None)
    chip.readout[out.name] = XyloReadout(readout_step(g), out.bias if out.bias is not None else torch.zeros_like(g))
    return chip
