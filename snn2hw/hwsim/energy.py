"""Synaptic operations and energy, counted on real input samples (methods.md "Energy").

For every synapse (Linear/Conv) of the lowered network:

* spike input: ``AC = sum_t sum_i f_i * e_i[t]``, ``e_i[t]`` the spike events
  arriving at input unit ``i`` (a spike, or, behind a sum/avg pool, the number
  of spikes pooled into it: on an event-driven chip each event is routed to
  the pooled unit's targets) and ``f_i`` its real fan-out: the number of
  (output neuron, weight) pairs it reaches, conv borders, stride, padding,
  dilation and groups included. ``f`` is one transposed convolution of ones,
  computed once per layer; the per-sample cost is a sum and a dot product.
* non-binary input (the direct-encoded first layer, or currents fed straight
  into another synapse): ``MAC = (rows) * sum_i f_i``, once per time step.
* the ANN of the same architecture: ``ANN MAC = sum_i f_i`` per layer and
  sample (padding zeros are not operations; ``ann_macs_dense`` counts them too).

A recurrent layer's ``W_rec`` is a synapse whose input is the layer's own spikes of
the step before (``s[t-1]``, none at t = 0), counted as spike input with its real
fan-out; a CUBA layer also updates its synaptic current once per neuron and step
(``synaptic_updates``).

The same run counts spikes, membrane updates and NeuroBench's per-call
operations (``metrics.py``). An energy model (``energy_models.py``) prices the
counts: ``compute`` (the papers': ``ac_pj * AC + mac_pj * MAC``, biases, BN,
pooling and neurons free) or ``lemaire`` (memory accesses included).
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import _kernel
from ..core.layers import Pool
from ..data.datasets import load_dataset, to_time_major
from ..devices import resolve_device
from ..runs.model import load_model
from .energy_models import LayerCounts, NeuronCounts
from .energy_models import energy_model as make_energy_model
from .graph import LoweredNet, Neuron, Recurrent, Residual, Stateless, Synapse, lower, run
from .metrics import static_metrics, tensor_versions, unchanged, workload_metrics
from .profiles import EnergyProfile, get_profile
from ..runs.checkpoint import checkpoint_file
from .provenance import command_line, sha256_of, versions


def fan_out(op: Synapse, nonzero_weights: bool = False) -> Tensor:
    """``f_i`` for every input unit of ``op`` (shape ``op.in_shape``), float64: the
    (output neuron, weight) pairs it reaches; with ``nonzero_weights`` only the
    pairs whose weight is not 0 (NeuroBench's effective operations).

    Conv: the transposed convolution of an all-ones output with an all-ones
    (or non-zero mask) kernel counts, for each input position, the (output
    position, kernel tap) pairs that read it, summed over the output channels
    of its group.
    """
    if op.kind == "linear":
        if nonzero_weights:
            return (op.weight != 0).sum(0).to(torch.float64).reshape(op.in_shape)
        return torch.full(op.in_shape, float(op.weight.shape[0]), dtype=torch.float64)
    dims = len(op.in_shape) - 1
    ones_out = torch.ones(1, *op.out_shape, dtype=torch.float64)
    kernel = ((op.weight != 0) if nonzero_weights else torch.ones_like(op.weight)).to(torch.float64)
    natural = [(o - 1) * s - 2 * p + d * (k - 1) + 1 for o, s, p, d, k in
               zip(op.out_shape[1:], op.stride, op.padding, op.dilation, op.weight.shape[2:])]
    extra = [i - n for i, n in zip(op.in_shape[1:], natural)]  # uncovered trailing inputs
    tconv = F.conv_transpose1d if dims == 1 else F.conv_transpose2d
    f = tconv(ones_out, kernel, stride=op.stride, padding=op.padding, output_padding=tuple(extra),
              groups=op.groups, dilation=op.dilation)
    return f[0]


def dense_macs(op: Synapse) -> int:
    """MACs counting padding zeros too (the thop/ptflops convention)."""
    if op.kind == "linear":
        return int(op.weight.shape[0] * op.weight.shape[1])
    return int(math.prod(op.out_shape) * math.prod(op.weight.shape[1:]))


def _event_scale(m: nn.Module, in_shape: tuple, out_shape: tuple) -> float | None:
    """Events per unit of a stateless layer's output value, for spike input; None = not events."""
    if isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d)):
        return 1.0
    if isinstance(m, Pool):
        return float(m.k ** m.dims) if m.mode == "avg" else 1.0
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        ratio = math.prod(in_shape[1:]) / max(math.prod(out_shape[1:]), 1)
        return float(ratio) if float(ratio).is_integer() else None
    return None


def _sources(ops: list, state: tuple[str, float, str], out: dict) -> tuple[str, float, str]:
    """Annotate each synapse with (input kind, event scale, source neuron)."""
    for op in ops:
        if isinstance(op, Synapse):
            out[op.name] = state
            state = ("analog", 1.0, "")
        elif isinstance(op, Neuron):
            state = ("spikes", 1.0, op.name)
        elif isinstance(op, Stateless):
            if state[0] == "spikes":
                scale = _event_scale(op.module, op.in_shape, op.out_shape)
                state = (state[0], state[1] * scale, state[2]) if scale else ("analog", 1.0, "")
        elif isinstance(op, Recurrent):   # W_rec reads the layer's own spikes of t-1
            out[op.synapse.name] = ("spikes", 1.0, op.neuron.name)
            state = ("spikes", 1.0, op.neuron.name)
        elif isinstance(op, Residual):
            _sources(op.body, state, out)
            _sources(op.shortcut, state, out)
            state = ("spikes", 1.0, op.out.name)
    return state


def call_counts(x: Tensor, nlead: int) -> tuple[Tensor, Tensor, Tensor]:
    """A synapse's input ``x`` ((B, C, *units) static, one call, or (T, B, C, *units)) per
    call (one step over the batch): the non-zero count and the sum of each unit (float64,
    (steps, units); sums accumulated in ``x``'s type) and whether the call is binary (every
    value in {-1, 0, 1}; bool, (steps,)). One pass in the compiled kernel
    (``_kernel.call_counts``), else three in torch; the same numbers."""
    x3 = x.reshape(1 if nlead == 2 else x.shape[0], -1, math.prod(x.shape[nlead:]))
    if _kernel.available(x3) and x3.shape[1] < 1 << 24:  # float counts are exact below 2^24
        return _kernel.call_counts(x3)
    nz = (x3 != 0).sum(1, dtype=torch.float64)
    sums = x3.sum(1).double()
    binary = ((x3 == 0) | (x3.abs() == 1)).flatten(1).all(1)
    return nz, sums, binary


# what a synapse's per-unit counts are, in the order of SynOpCounter.dots' second axis
EVENTS, NB_BINARY, NB_OTHER = 0, 1, 2


class SynOpCounter:
    """Observer for :func:`graph.run` that accumulates, for each synapse of ``plan``, its
    per-unit counts (input events; NeuroBench's non-zero inputs in binary and in
    non-binary calls) times its fan-outs, and MAC rows, spikes, membrane updates (all summed
    over the samples seen).

    The products are taken as the counts arrive, inside the run, into one float64 tensor
    ``dots`` (synapses, count kind, (. f, . f_nz, sum)) that the report reads with one
    conversion: the counts are integers in float64 (avg-pooled events too, for pools of
    2^k inputs), so every grouping of the sums is exact. ``seen`` says which count kinds
    arrived (an absent one differs from zeros)."""

    wants_counts = True
    reads_spikes = False  # the spikes' shape and identity only: a LIF may run fused with its pool

    # A synapse reading a counted LIF's delivered spikes unchanged takes that LIF's per-unit
    # spike sums as its events and NeuroBench's ACs (binary by construction, sums = non-zeros)
    # instead of a call_counts pass over the spikes. False: every input goes through
    # call_counts (the reference that tests/test_hwsim_counts.py compares the shortcut to).
    reuse_neuron_counts = True

    def __init__(self, plan: "_CountPlan", timesteps: int) -> None:
        self.T = timesteps
        self.src = dict(plan.sources)  # copied: an event-data input relabels its first synapse
        names = list(self.src)
        self._index = plan.index
        self._fan_outs = plan.fan_outs
        self._shape, self._device = (len(plan.synapses), 3, 3), plan.device
        self.dots: Tensor | None = None  # made by the first count, inside the run
        self.seen: set[tuple[str, int]] = set()
        self.mac_rows = dict.fromkeys(names, 0)
        self.rows = dict.fromkeys(names, 0)       # frames x samples, all calls
        self.spikes: dict[str, float] = {}
        self.neuron_steps: dict[str, int] = {}
        self.membrane_updates: dict[str, int] = {}
        # neurons whose spikes reach a synapse unpooled: their per-unit sums are reused there
        self._feeds = ({src for kind, scale, src in self.src.values() if kind == "spikes" and scale == 1.0}
                       if self.reuse_neuron_counts else set())
        self._last: tuple[Tensor | None, Tensor | None] = (None, None)

    def _add(self, name: str, kind: int, per_unit: Tensor, scale: float = 1.0) -> None:
        """dots[synapse, kind] += scale x (fan-outs @ per_unit)."""
        i = self._index[name]
        if self.dots is None:
            self.dots = torch.zeros(self._shape, dtype=torch.float64, device=self._device)
        self.dots[i, kind].addmv_(self._fan_outs[i], per_unit, alpha=scale)
        self.seen.add((name, kind))

    def synapse(self, op: Synapse, x: Tensor, nlead: int) -> None:
        kind, scale, source = self.src[op.name]
        rows = math.prod(x.shape[:nlead]) * (self.T if nlead == 2 else 1)
        self.rows[op.name] += rows
        # a LIF's spikes (unpooled; max-pooled too): binary, so NeuroBench's ACs are its events
        own = self.reuse_neuron_counts and kind == "spikes" and scale == 1.0 and source != "input"
        last, per_unit = self._last
        if own and last is not None and x.data_ptr() == last.data_ptr() and x.numel() == last.numel():
            self._add(op.name, EVENTS, per_unit)  # the neuron's own spikes
            return
        if kind == "input" and nlead == 3 and bool((x >= 0).all()) and torch.equal(x, x.round()):
            kind = "spikes"  # event-data input: counts of input events
            self.src[op.name] = ("spikes", 1.0, "input")
        nz, sums, binary = call_counts(x, nlead)
        if kind == "spikes":
            events = sums.sum(0)
            self._add(op.name, EVENTS, events * scale if scale != 1.0 else events)
        else:  # MACs: every row is a full pass; static input is applied once per step
            self.mac_rows[op.name] += rows
        if not own:
            self._neurobench_units(op, nz, binary, nlead)

    def _neurobench_units(self, op: Synapse, nz: Tensor, binary: Tensor, nlead: int) -> None:
        """Add non-zero inputs per unit (``nz``, (steps, units)) to NeuroBench's AC and MAC
        counts by whether their call (one step over the batch) is ``binary``."""
        if nz.shape[0] == 1:  # one call (static input: the same frame at each of the T steps)
            self._add(op.name, NB_BINARY if bool(binary) else NB_OTHER, nz.view(-1), self.T if nlead == 2 else 1)
        else:
            ac = binary.to(nz.dtype) @ nz
            self._add(op.name, NB_BINARY, ac)
            self._add(op.name, NB_OTHER, nz.sum(0) - ac)

    def neuron(self, op: Neuron, spikes: Tensor, counts: tuple[Tensor, Tensor] | None = None) -> None:
        per_unit, changes = counts  # counted in the LIF's own pass (graph.Observer)
        name = op.name
        # per-unit float sums of 0/1 values are exact below 2^24 per unit; the total in float64
        per_unit = per_unit.double()
        self._last = (spikes, per_unit) if name in self._feeds else (None, None)
        self.spikes[name] = self.spikes.get(name, 0.0) + float(per_unit.sum())
        self.neuron_steps[name] = self.neuron_steps.get(name, 0) + spikes.numel()
        # NeuroBench: every neuron at the first step, then each change of u
        self.membrane_updates[name] = (self.membrane_updates.get(name, 0) + int(changes)
                                       + spikes.numel() // spikes.shape[0])


@dataclass(frozen=True)
class _SynapseStatics:
    """What a report needs of one synapse that depends on its shape and weights only."""

    # rows f, f over the non-zero weights, 1 (float64, (3, input units)): one product with
    # a count per unit gives its ACs, NeuroBench's effective ACs and its total
    fan_outs: Tensor
    ann: float             # sum of f: the ANN's MACs per frame
    dense: float           # dense_macs
    kernel: int            # out_channels x kernel taps (conv addressing); 0 for linear
    params: int            # weights + biases
    in_size: int           # input units of one frame
    out_size: int          # output units of one frame


@dataclass
class _CountPlan:
    """A report's per-network work, done once per state of the weights (``_count_plan``):
    the walk, the input sources, the synapses' statics and, per energy model, the ANN's
    pricing (its counts are the statics alone). Next to the inference of a small network
    this fixed cost is what a report adds."""

    walk: list                              # net.walk() when made: a replaced op makes it again
    synapses: list[Synapse]
    neurons: list[Neuron]
    sources: dict[str, tuple[str, float, str]]
    statics: list[_SynapseStatics]          # in the order of ``synapses``
    device: torch.device
    index: dict[str, int] = field(default_factory=dict)   # synapse name -> position
    fan_outs: list[Tensor] = field(default_factory=list)  # statics' fan-outs on ``device``
    ann_pj: dict = field(default_factory=dict)  # energy model -> ANN pJ per synapse

    def ann_totals(self, em) -> list[float]:
        """The ANN's pJ per synapse under ``em``, priced on the first report of ``em``."""
        hit = self.ann_pj.get(em)
        if hit is None:
            hit = self.ann_pj[em] = [em.ann_layer_pj(_layer_counts(op, st, "analog", 0.0, 0.0, 0.0, 1))["total"]
                                     for op, st in zip(self.synapses, self.statics)]
        return hit


def _count_plan(net: LoweredNet) -> _CountPlan:
    """``net``'s counting plan, cached on ``net`` and keyed on its synapses' weights
    (``metrics.tensor_versions``: replaced or written in place, the plan is made again)."""
    ops = net.walk()
    synapses = [op for op in ops if isinstance(op, Synapse)]
    versions = tensor_versions(t for op in synapses for t in (op.weight, op.bias) if t is not None)
    hit = net.cache.get("energy")
    if (hit is not None and unchanged(hit[0], versions) and len(hit[1].walk) == len(ops)
            and all(map(operator.is_, hit[1].walk, ops))):
        return hit[1]
    sources: dict[str, tuple[str, float, str]] = {}
    _sources(net.ops, ("input", 1.0, ""), sources)
    statics = []
    for op in synapses:
        f = fan_out(op)
        f_nz = fan_out(op, nonzero_weights=True) if bool((op.weight == 0).any()) else f
        kernel = int(op.weight.shape[0] * math.prod(op.weight.shape[2:])) if op.kind != "linear" else 0
        params = op.weight.numel() + (op.bias.numel() if op.bias is not None else 0)
        f = f.reshape(-1).cpu()
        fan_outs = torch.stack([f, f_nz.reshape(-1).cpu(), torch.ones_like(f)])
        statics.append(_SynapseStatics(fan_outs, float(f.sum()), float(dense_macs(op)), kernel, params,
                                       math.prod(op.in_shape), math.prod(op.out_shape)))
    device = synapses[0].weight.device if synapses else torch.device("cpu")
    plan = _CountPlan(ops, synapses, [op for op in ops if isinstance(op, Neuron)], sources, statics, device,
                      {op.name: i for i, op in enumerate(synapses)}, [st.fan_outs.to(device) for st in statics])
    if versions is not None:
        net.cache["energy"] = (versions, plan)
    return plan


def _layer_counts(op: Synapse, st: _SynapseStatics, kind: str, events: float, ac: float, mac: float,
                  T: int) -> LayerCounts:
    return LayerCounts(op.kind, kind, events, ac, mac, (T * st.dense if kind != "spikes" else 0.0),
                       float(T), st.in_size, st.out_size, st.ann, st.dense,
                       st.params, op.bias is not None, st.kernel, T)


def count_energy(net: LoweredNet, x: Tensor, profile: EnergyProfile, batch_size: int = 256,
                 temporal: bool = False, energy_model: str = "compute",
                 model: nn.Module | None = None) -> dict:
    """Per-layer and total operation counts and energy under ``energy_model``, and
    NeuroBench's metrics (static ones only with ``model``), per sample of ``x``, counted on
    the device that holds ``net`` (``LoweredNet.to``)."""
    em = make_energy_model(energy_model, profile)
    plan = _count_plan(net)
    counter = SynOpCounter(plan, net.timesteps if not temporal else x.shape[1])
    n, T = len(x), counter.T
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            xb = x if n <= batch_size else x[i:i + batch_size]
            run(net, to_time_major(xb.to(plan.device), temporal), observer=counter, outputs=False)
    neurons, nb_neurons, rates = [], [], {}
    for op in plan.neurons:
        name, size = op.name, math.prod(op.out_shape)
        spikes, steps, updates = (counter.spikes.get(name, 0.0), counter.neuron_steps.get(name, 0),
                                  counter.membrane_updates.get(name, 0))
        spk, rates[name] = spikes / n, spikes / max(steps, 1)
        e = em.neuron_pj(NeuronCounts(size, T, spk, op.lam != 1.0))
        neurons.append({"layer": name, "neurons": size, "firing_rate": rates[name],
                        "spikes_per_sample": spk, "membrane_updates": updates / n,
                        # CUBA: the synaptic current i <- alpha i + c is a state update at every step
                        "synaptic_updates": steps / n if op.cuba else 0.0,
                        "snn_pj": e["total"], "energy": e})
        nb_neurons.append({"layer": name, "neurons": size, "steps": steps, "spikes": spikes, "reset": op.reset,
                           "membrane_updates": updates})
    rows, nb_rows = [], []
    # dots[synapse][kind] = (. f, . f_nz, sum); none made where no synapse saw anything
    dots = counter.dots.tolist() if counter.dots is not None else [[[0.0] * 3] * 3] * len(plan.synapses)
    seen = counter.seen
    for op, st, ann_pj, by in zip(plan.synapses, plan.statics, plan.ann_totals(em), dots):
        name = op.name
        kind, _, source = counter.src[name]
        spiking = kind == "spikes" and (name, EVENTS) in seen
        ac = round(by[EVENTS][0] / n, 6) if spiking else 0.0
        mac = counter.mac_rows[name] * st.ann / n
        if (name, NB_BINARY) in seen or (name, NB_OTHER) in seen:
            nb_ac, nb_mac = by[NB_BINARY][1], by[NB_OTHER][1]
        else:  # fed by its neuron's spikes alone: NeuroBench's ACs are its events
            nb_ac, nb_mac = by[EVENTS][1], 0.0
        nb_rows.append({"nb_ac": round(nb_ac), "nb_mac": round(nb_mac), "nb_dense": counter.rows[name] * st.ann})
        events = by[EVENTS][2] / n if spiking else 0.0
        lc = _layer_counts(op, st, kind, events, ac, mac, T)
        e_snn = em.layer_pj(lc)
        rows.append({"layer": name, "kind": op.kind, "in_shape": list(op.in_shape), "out_shape": list(op.out_shape),
                     "input": kind, "source": source or ("input" if kind == "input" else ""),
                     "source_rate": rates.get(source),
                     "events": events, "ac": ac, "mac": mac, "ann_mac": st.ann, "ann_mac_dense": lc.ann_mac_dense,
                     "snn_pj": e_snn["total"], "ann_pj": ann_pj, "energy": e_snn})
    tot = {k: sum(r[k] for r in rows) for k in ("ac", "mac", "ann_mac", "snn_pj", "ann_pj")}
    tot["neuron_pj"] = sum(v["snn_pj"] for v in neurons)
    tot["snn_pj"] += tot["neuron_pj"]
    tot["ratio"] = tot["snn_pj"] / tot["ann_pj"] if tot["ann_pj"] else float("nan")
    tot["spikes"] = sum(v["spikes_per_sample"] for v in neurons)
    neurobench = {**(static_metrics(model) if model is not None else {}),
                  **workload_metrics(n, nb_rows, nb_neurons)}
    return {"profile": profile.to_dict(), "energy_model": {"name": em.name, "description": em.description,
                                                           "costs": em.costs_dict()},
            "samples": n, "timesteps": T, "layers": rows, "neurons": neurons,
            "total": tot, "neurobench": neurobench}


def energy(checkpoint: str | Path, profile: str = "45nm-fp32", profile_file: str | Path | None = None,
           samples: int | None = 512, dataset: str | None = None, command: str | None = None,
           energy_model: str = "compute", device: str | torch.device | None = "cpu") -> dict:
    """Energy report of a checkpoint on ``samples`` test samples (all if None), counted on
    ``device`` (``devices.resolve_device``; the counts do not depend on it), as a dict:
    ``count_energy``'s counts, energy under ``energy_model`` and NeuroBench's metrics,
    plus provenance (command, versions, checkpoint sha256);
    ``reports.hwsim_report.render_energy_markdown`` lays it out as tables."""
    prof = get_profile(profile, profile_file)
    make_energy_model(energy_model, prof)  # refuse an unknown model before loading anything
    model, ckpt = load_model(checkpoint)
    spec = dataset or ckpt.get("run_config", {}).get("dataset", "digits")
    data = load_dataset(spec)
    n = min(samples or len(data.x_test), len(data.x_test))
    t0 = time.perf_counter()
    net = lower(model).to(resolve_device(device))
    report = count_energy(net, data.x_test[:n], prof, temporal=data.temporal,
                          energy_model=energy_model, model=model)
    report.update({"kind": "snn2hw-energy", "command": command_line(command), "versions": versions(),
                   "checkpoint": str(checkpoint_file(checkpoint)), "sha256": sha256_of(checkpoint),
                   "method": ckpt.get("run_config", {}).get("method"), "dataset": spec,
                   "wall_time_s": time.perf_counter() - t0})
    return report
