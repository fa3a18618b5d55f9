"""Energy models: formulas from per-layer operation counts to picojoules, and their costs as data.

``count_energy`` counts operations once (``LayerCounts``, ``NeuronCounts``:
per sample); an energy model turns those counts into pJ. Adding a model is one
class with ``name``, ``description``, ``costs`` and ``layer_pj``/``neuron_pj``/
``ann_layer_pj`` and one line in ``ENERGY_MODELS``; ``--energy-model`` choices follow.

* ``compute``: the compute-only model of the papers (ASGL App. B.2, Dspike
  Sec. 5.4): ``ac_pj x AC + mac_pj x MAC`` per synapse layer, neurons free; the
  ANN is ``ann_mac_pj x ANN MAC``. Its costs are an ``EnergyProfile``.
* ``lemaire``: the memory-aware model of Lemaire et al., "An analytical
  estimation of spiking neural networks energy efficiency", ICONIP 2022
  (arXiv:2210.13107): arithmetic (32-bit add, mul), addressing, and every SRAM
  access (inputs, weights and biases, membrane potentials, output spikes),
  each byte charged by the size of the memory it lives in (``sram_pj_per_byte``,
  piecewise linear). The terms follow SpikingJelly 2.0's implementation
  (``op_counter/analytical_energy.py``, which resolves the paper's Eq. (2)
  typo the same way) at batch 1, except that a spike's fan-out is its real one
  (conv borders and stride) rather than ``k^2`` (docs/hwsim.md gives the
  measured difference).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

from ..errors import ConfigError
from .profiles import EnergyProfile

WORD_BYTES = 4  # 32-bit words: every value the Lemaire model moves


@dataclass(frozen=True)
class LayerCounts:
    """Per-sample counts of one synapse layer (our conventions, docs/hwsim.md)."""

    kind: str                 # "linear" | "conv1d" | "conv2d"
    input: str                # "spikes" | "input" | "analog"
    events: float             # input events (spikes) per sample; 0 for non-binary input
    ac: float                 # sum over events of their real fan-out
    mac: float                # MACs of non-binary input, padding zeros not counted
    mac_dense: float          # the same, padding zeros counted (rows x out x weights per output)
    rows: float               # input frames per sample (T for analog input, 1 for the ANN)
    in_size: int              # input units of one frame
    out_size: int             # output units of one frame
    ann_mac: float            # the ANN's MACs, padding zeros not counted
    ann_mac_dense: float
    params: int               # weights + biases
    has_bias: bool
    kernel: int               # out_channels x kernel taps (conv addressing); 0 for linear
    timesteps: int


@dataclass(frozen=True)
class NeuronCounts:
    """Per-sample counts of one spiking layer."""

    neurons: int
    steps: int                # timesteps
    spikes: float             # per sample
    leaky: bool               # lam < 1: one multiply per update (LIF) instead of none (IF)


class EnergyModel(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]

    @classmethod
    def from_profile(cls, profile: EnergyProfile) -> "EnergyModel": ...

    def costs_dict(self) -> dict: ...

    def layer_pj(self, c: LayerCounts) -> dict[str, float]: ...

    def neuron_pj(self, n: NeuronCounts) -> dict[str, float]: ...

    # the ANN of the same architecture: reads only the fields that do not depend on the run
    # (kind, in_size, out_size, ann_mac, ann_mac_dense, params, has_bias, kernel); count_energy
    # prices it once per network and model
    def ann_layer_pj(self, c: LayerCounts) -> dict[str, float]: ...


@dataclass(frozen=True)
class ComputeModel:
    """``ac_pj x AC + mac_pj x MAC``; neurons, memory and biases are not charged."""

    profile: EnergyProfile
    name: ClassVar[str] = "compute"
    description: ClassVar[str] = "compute only: pJ per AC and per MAC (the papers' convention)"

    @classmethod
    def from_profile(cls, profile: EnergyProfile) -> "ComputeModel":
        return cls(profile)

    def costs_dict(self) -> dict:
        return self.profile.to_dict()

    def layer_pj(self, c: LayerCounts) -> dict[str, float]:
        return {"total": self.profile.ac_pj * c.ac + self.profile.mac_pj * c.mac}

    def neuron_pj(self, n: NeuronCounts) -> dict[str, float]:
        return {"total": 0.0}

    def ann_layer_pj(self, c: LayerCounts) -> dict[str, float]:
        return {"total": self.profile.ann_mac * c.ann_mac}


@dataclass(frozen=True)
class LemaireCosts:
    """Lemaire et al. 2022's 45 nm figures: 32-bit integer add and multiply, and SRAM
    access energy per byte interpolated linearly between ``(size in bytes, pJ/byte)``
    points (8 KB: 10 pJ, 32 KB: 20 pJ, 1 MB: 100 pJ per 32-bit access), clamped above."""

    add_pj: float = 0.1
    mul_pj: float = 3.1
    sram_pj_per_byte: tuple[tuple[float, float], ...] = (
        (0.0, 0.0), (8 * 1024.0, 10.0 / WORD_BYTES), (32 * 1024.0, 20.0 / WORD_BYTES),
        (1024 * 1024.0, 100.0 / WORD_BYTES))
    fifo_words: int = 1000    # spike FIFO between layers (the paper's experiments)
    source: str = ("E. Lemaire et al., 'An analytical estimation of spiking neural networks energy "
                   "efficiency', ICONIP 2022, arXiv:2210.13107: 45 nm, 32-bit int add 0.1 pJ, mul "
                   "3.1 pJ; SRAM 10/20/100 pJ per 32-bit access at 8 KB/32 KB/1 MB")

    def memory_pj_per_byte(self, size_bytes: float) -> float:
        pts = self.sram_pj_per_byte
        size = min(max(size_bytes, pts[0][0]), pts[-1][0])
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if size <= x1:
                return y0 + (y1 - y0) / (x1 - x0) * (size - x0)
        return pts[-1][1]


@dataclass(frozen=True)
class LemaireModel:
    """Per layer: ops (adds, multiply-adds), addressing, and memory bytes x pJ/byte(size).

    Spike input (``e`` events, ``a`` their fan-out sum = AC): ``a`` adds, ``a`` address
    adds, 2 address MACs per event for a conv; reads ``e`` words from the spike FIFO,
    ``a`` weights, reads and writes ``a`` potentials. Non-binary input (``rows``
    frames): ``mac_dense`` MACs, ``rows (in + out)`` address adds (+ ``kernel`` for a
    conv), ``rows in`` input words (a conv reads one per MAC), ``mac_dense`` weights.
    A bias costs one add and one read per output per step. A neuron layer reads and
    writes every potential every step, adds once per spike, multiplies once per
    update if leaky, and writes its spikes to the FIFO.
    """

    costs: LemaireCosts = LemaireCosts()
    name: ClassVar[str] = "lemaire"
    description: ClassVar[str] = ("memory-aware (Lemaire et al. 2022): ops, addressing and SRAM "
                                  "accesses priced by memory size")

    @classmethod
    def from_profile(cls, profile: EnergyProfile) -> "LemaireModel":
        return cls()  # its own 45 nm costs; per-operation profiles are the compute model's

    def costs_dict(self) -> dict:
        return dict(_costs_dict(self.costs))  # values are immutable: a shallow copy is the caller's own

    def _mem(self, words: float, size_words: float) -> float:
        return words * WORD_BYTES * self.costs.memory_pj_per_byte(size_words * WORD_BYTES)

    def _total(self, adds: float, macs: float, addr_adds: float, addr_macs: float,
               inout: float, params: float, potential: float) -> dict[str, float]:
        k = self.costs
        ops = adds * k.add_pj + macs * (k.mul_pj + k.add_pj)
        addressing = addr_adds * k.add_pj + addr_macs * (k.mul_pj + k.add_pj)
        return {"ops": ops, "addressing": addressing, "inout": inout, "params": params,
                "potential": potential, "total": ops + addressing + inout + params + potential}

    def _synapse(self, c: LayerCounts, spiking: bool, rows: float, macs: float,
                 output_written: bool) -> dict[str, float]:
        bias = c.out_size * rows if c.has_bias else 0.0
        if spiking:
            return self._total(c.ac + bias, 0.0, c.ac, (2 * c.events if c.kind != "linear" else 0.0),
                               self._mem(c.events, self.costs.fifo_words),
                               self._mem(c.ac + bias, c.params), 2 * self._mem(c.ac, c.out_size))
        read_in = rows * c.in_size if c.kind == "linear" else macs  # a conv reads one input per MAC
        inout = self._mem(read_in, rows * c.in_size)
        if output_written:  # an ANN writes its activations; an SNN's neurons charge theirs
            inout += self._mem(rows * c.out_size, rows * c.out_size)
        return self._total(bias, macs, rows * (c.in_size + c.out_size) + c.kernel, 0.0,
                           inout, self._mem(macs + bias, c.params), 0.0)

    def layer_pj(self, c: LayerCounts) -> dict[str, float]:
        return self._synapse(c, c.input == "spikes", c.rows, c.mac_dense, False)

    def neuron_pj(self, n: NeuronCounts) -> dict[str, float]:
        updates = n.neurons * n.steps
        return self._total(n.spikes, updates if n.leaky else 0.0, 0.0, 0.0,
                           self._mem(n.spikes, self.costs.fifo_words), 0.0, 2 * self._mem(updates, n.neurons))

    def ann_layer_pj(self, c: LayerCounts) -> dict[str, float]:
        return self._synapse(c, False, 1.0, c.ann_mac_dense, True)


@functools.lru_cache(maxsize=8)
def _costs_dict(costs: LemaireCosts) -> dict:
    """``asdict`` of frozen costs, once per value (it is slow next to a small network's report)."""
    return asdict(costs)


# name -> model class; --energy-model's choices and help read this
ENERGY_MODELS: dict[str, type] = {m.name: m for m in (ComputeModel, LemaireModel)}


def energy_model(name: str, profile: EnergyProfile) -> EnergyModel:
    """The model ``name`` (a key of ``ENERGY_MODELS``); ``profile`` feeds the compute model."""
    if name not in ENERGY_MODELS:
        raise ConfigError(f"unknown energy model {name!r}; choose one of {sorted(ENERGY_MODELS)}")
    return ENERGY_MODELS[name].from_profile(profile)
