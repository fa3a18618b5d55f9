"""A network computing on a target's integer grid: the synapses, neurons and recurrent weights
that ``train --qat TARGET`` rewrites (``snn2hw.train.qat``, which owns the training side), here so
that ``export`` can run a model fine-tuned for a target the way it was trained (its ``--check``
reference). A grid is ``snn2hw.export.grid.TargetGrid``; each target owns its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.layers import CUBA, LIF, Pool, RecurrentSpiking, ResidualBlock, TDBatchNorm, neuron_lif
from ..errors import ConfigError
from ..models.walk import Rule, Step, fold_synapse, skip, walk
from .grid import Site, TargetGrid


@dataclass
class _Plan:
    name: str
    synapse: nn.Module
    bn: TDBatchNorm | None = None
    lif: LIF | None = None
    input_unit: float = 1.0
    first: bool = False
    cuba: CUBA | None = None                  # the CUBA neuron the synapse drives
    recurrent: nn.Linear | None = None        # its RecurrentSpiking layer's W_rec


@dataclass
class _Units:
    """What the walk knows about the value of one unit of the next synapse's input."""

    input_unit: float               # of the network's input
    pool_unit: float = 1.0          # avg pooling of spikes since the last neuron
    planned: int = 0                # synapses seen
    open: bool = False              # the last synapse's neuron is not reached yet
    last: _Plan | None = None       # the last synapse planned


def _site(step: Step, units: _Units) -> _Plan:
    first = units.planned == 0
    units.planned += 1
    units.open = True
    units.last = _Plan(step.name, step.module, step.bn, step.neuron,
                       input_unit=units.pool_unit * (units.input_unit if first else 1.0), first=first)
    return units.last


def _neuron(step: Step, units: _Units) -> None:
    if units.open:
        units.open, units.pool_unit = False, 1.0


def _cuba_or_recurrent(step: Step, units: _Units) -> None:
    """A CUBA layer, or a recurrent layer (its W_rec and neuron): the walk pairs synapses with
    ``LIF`` layers only, so the synapse before it is given its neuron here."""
    m = step.module
    if units.open and units.last is not None:
        neuron = m.neuron if isinstance(m, RecurrentSpiking) else m
        units.last.lif = neuron_lif(neuron)
        units.last.cuba = neuron if isinstance(neuron, CUBA) else None
        units.last.recurrent = m.recurrent if isinstance(m, RecurrentSpiking) else None
    _neuron(step, units)


def _pool(step: Step, units: _Units) -> None:
    m = step.module
    if not units.open and m.mode == "avg":
        units.pool_unit /= m.k ** m.dims     # avg pooling of spikes, fused into the next synapse


def _refuse_residual(step: Step, units: _Units) -> None:
    raise ConfigError(f"{step.name}: QAT supports chain networks (mlp, conv), not residual blocks")


# torch layer type -> rule; QAT rewrites synapses only, every other layer passes as is.
QAT_SITES: dict[type, Rule] = {
    nn.Linear: _site,
    nn.Conv1d: _site,
    nn.Conv2d: _site,
    LIF: _neuron,
    CUBA: _cuba_or_recurrent,
    RecurrentSpiking: _cuba_or_recurrent,
    Pool: _pool,
    ResidualBlock: _refuse_residual,
    nn.Module: skip,
}


def plan_sites(model: nn.Module, input_unit: float) -> list[_Plan]:
    """The synapses of a chain network in order, with their BN, neuron and input unit."""
    return walk(model.layers, QAT_SITES, _Units(input_unit), rules_name="snn2hw.export.qat.QAT_SITES")


def _folded(p: _Plan) -> tuple[Tensor, Tensor]:
    w, b = fold_synapse(p.synapse, p.bn, detach=False)  # QAT trains through the fold
    return w, b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)


def _apply(m: nn.Module, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(x, w, b)
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    return conv(x, w, b, m.stride, m.padding, m.dilation, m.groups)


@dataclass
class QATHandle:
    """Undoes ``attach_qat``: removes the instance attributes it set (``forward``, a CUBA's
    ``step``, a recurrent ``weight`` shadowing the parameter) and restores neuron constants."""

    overrides: list[tuple[nn.Module, str]] = field(default_factory=list)
    constants: list[tuple[LIF, float, float]] = field(default_factory=list)

    def override(self, module: nn.Module, name: str, value: object) -> None:
        """Set ``module.name`` in the instance ``__dict__``: it shadows the class attribute or
        the parameter of that name (``state_dict`` and the optimiser keep the parameter)."""
        module.__dict__[name] = value
        if (module, name) not in self.overrides:
            self.overrides.append((module, name))

    def detach(self) -> None:
        for m, name in self.overrides:
            m.__dict__.pop(name, None)
        for lif, v_th, lam in self.constants:
            lif.v_th, lif.lam = v_th, lam
        self.overrides, self.constants = [], []


def attach_grid(model: nn.Module, grid: TargetGrid) -> QATHandle:
    """Make ``model`` compute on ``grid`` (``snn2hw.train.qat`` docstring): every synapse on the
    grid by straight-through rounding, the first one's input rounded to ``1 / grid.input_levels``
    within ``grid.input_range``, tdBN folded, a recurrent layer's W_rec and a CUBA neuron's step
    as the grid gives them. ``handle.detach()`` restores the float model."""
    handle = QATHandle()
    unit = 1.0 / grid.input_levels if grid.input_levels else 1.0
    for p in plan_sites(model, unit):
        if p.bn is not None:
            handle.override(p.bn, "forward", lambda x: x)   # folded into the synapse below
        v_th = lam = None
        if p.lif is not None:
            v_th, lam = p.lif.v_th, p.lif.lam   # the trained constants; the grid's values are derived
            handle.constants.append((p.lif, v_th, lam))

        def forward(x: Tensor, p: _Plan = p, v_th: float | None = v_th, lam: float | None = lam) -> Tensor:
            if p.first and grid.input_levels:
                lo, hi = grid.input_range
                x = torch.round(x.clamp(lo, hi) * grid.input_levels) / grid.input_levels
            w, b = _folded(p)
            w_rec = None if p.recurrent is None else p.recurrent._parameters["weight"]  # not the shadow
            q = grid.quantise(Site(p.name, w, b, v_th, lam, p.input_unit,
                                   None if p.cuba is None else float(p.cuba.alpha), w_rec))
            if p.lif is not None:
                p.lif.v_th = v_th if q.v_th is None else float(q.v_th)
                p.lif.lam = lam if q.lam is None else float(q.lam)
            # the layer after this synapse runs next, in the same forward: its W_rec and step
            if p.recurrent is not None and q.weight_rec is not None:
                handle.override(p.recurrent, "weight", q.weight_rec)
            if p.cuba is not None and q.step is not None:
                handle.override(p.cuba, "step", lambda c, state, cuba=p.cuba, step=q.step:
                                step(c, state, cuba.lif.spike_fn))
                if p.recurrent is None:   # feed-forward CUBA: run its step over T as well
                    handle.override(p.cuba, "forward", lambda c, cuba=p.cuba: _step_through(cuba, c))
            return _apply(p.synapse, x, q.weight, q.bias)

        handle.override(p.synapse, "forward", forward)
    return handle


def _step_through(cuba: CUBA, currents: Tensor) -> Tensor:
    """A feed-forward CUBA layer run by its (QAT) ``step`` over T (its own forward filters all of
    T first, with the float constants)."""
    state, spikes = cuba.initial_state(currents[0]), []
    for c in currents:
        s, state = cuba.step(c, state)
        spikes.append(s)
    return torch.stack(spikes)
