"""The integer grid a target computes on, as quantisation-aware training sees it.

Each target package that supports ``train --qat TARGET`` defines a grid class
(``snn2hw/export/loihi/grid.py``, ``speck/discretize.py``) and names it as its
exporter's ``grid`` attribute; ``snn2hw.train.qat`` reaches it through
``EXPORTERS``. This module holds only the protocol and the straight-through
round both sides share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor


def ste_round(x: Tensor) -> Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


@dataclass
class Site:
    """One synapse as a grid sees it."""

    name: str
    weight: Tensor                 # tdBN-folded float weight (differentiable)
    bias: Tensor                   # tdBN-folded float bias (differentiable)
    v_th: float | None             # threshold of the neuron it drives; None: non-spiking readout
    lam: float | None
    input_unit: float              # float value of one unit of the synapse's input
    alpha: float | None = None     # CUBA neuron: its synaptic decay; None: a LIF (or the readout)
    weight_rec: Tensor | None = None   # recurrent layer: W_rec of the neuron (differentiable)


# (c, state, spike_fn) -> (s, state): a neuron's update as the target computes it
NeuronStep = Callable[[Tensor, Any, Callable[[Tensor], Tensor]], tuple[Tensor, Any]]


@dataclass
class Quantised:
    """A site's values on the grid, in float units (None: unchanged).

    ``step``: the neuron's update on the target's integers (states, decays, spike rule), which
    QAT runs instead of the float neuron's, for targets whose arithmetic the float step does
    not reproduce (Xylo's shift decays and multi-spikes)."""

    weight: Tensor
    bias: Tensor
    v_th: float | None = None
    lam: float | None = None
    weight_rec: Tensor | None = None
    step: NeuronStep | None = None


class TargetGrid(Protocol):
    input_levels: int | None
    input_range: tuple[float, float]

    def quantise(self, site: Site) -> Quantised: ...
