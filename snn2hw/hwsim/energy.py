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

Energy = ``ac_pj * AC + mac_pj * MAC`` for the SNN, ``ann_mac_pj * ANN MAC``
for the ANN. Biases, BN (folded), pooling and membrane updates are not counted,
as in the papers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.layers import Pool
from ..data.datasets import load_dataset, to_time_major
from ..devices import resolve_device
from ..runs.model import load_model
from .graph import LoweredNet, Neuron, Residual, Stateless, Synapse, lower, run
from .profiles import EnergyProfile, get_profile
from ..runs.checkpoint import checkpoint_file
from .provenance import command_line, sha256_of, versions


def fan_out(op: Synapse) -> Tensor:
    """``f_i`` for every input unit of ``op`` (shape ``op.in_shape``), float64.

    Conv: the transposed convolution of an all-ones output with an all-ones
    kernel counts, for each input position, the (output position, kernel tap)
    pairs that read it, times the output channels of its group.
    """
    if op.kind == "linear":
        return torch.full(op.in_shape, float(op.weight.shape[0]), dtype=torch.float64)
    dims = len(op.in_shape) - 1
    cout, cin_g = op.weight.shape[:2]
    ones_out = torch.ones(1, *op.out_shape, dtype=torch.float64)
    kernel = torch.ones(cout, cin_g, *op.weight.shape[2:], dtype=torch.float64)
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
        elif isinstance(op, Residual):
            _sources(op.body, state, out)
            _sources(op.shortcut, state, out)
            state = ("spikes", 1.0, op.out.name)
    return state


class SynOpCounter:
    """Observer for :func:`graph.run` that accumulates events, MAC rows and spikes."""

    def __init__(self, net: LoweredNet, timesteps: int) -> None:
        self.T = timesteps
        self.src: dict[str, tuple[str, float, str]] = {}
        _sources(net.ops, ("input", 1.0, ""), self.src)
        device = net.synapses()[0].weight.device if net.synapses() else torch.device("cpu")
        self.events = {op.name: torch.zeros(op.in_shape, dtype=torch.float64, device=device)
                       for op in net.synapses()}
        self.mac_rows = {op.name: 0 for op in net.synapses()}
        self.spikes = {op.name: 0.0 for op in net.neurons()}
        self.neuron_steps = {op.name: 0 for op in net.neurons()}
        self._last: tuple[Tensor | None, Tensor | None] = (None, None)

    def synapse(self, op: Synapse, x: Tensor, nlead: int) -> None:
        kind, scale, _ = self.src[op.name]
        dims = tuple(range(nlead))
        if kind == "input" and nlead == 3 and bool((x >= 0).all()) and torch.equal(x, x.round()):
            kind = "spikes"  # event-data input: counts of input events
            self.src[op.name] = ("spikes", 1.0, "input")
        if kind == "spikes":
            # float32 sums of 0/1 (or small integer) values over one batch are exact
            last, per_unit = self._last
            if x is not last:  # a neuron feeding this synapse directly was already summed
                per_unit = x.sum(dim=dims).double()
            self.events[op.name] += per_unit * scale
        else:  # MACs: every row is a full pass; static input is applied once per step
            self.mac_rows[op.name] += math.prod(x.shape[:nlead]) * (self.T if nlead == 2 else 1)

    def neuron(self, op: Neuron, spikes: Tensor) -> None:
        per_unit = spikes.sum(dim=(0, 1, 2)).double()
        self._last = (spikes, per_unit)
        self.spikes[op.name] += float(per_unit.sum())
        self.neuron_steps[op.name] += spikes.numel()


@dataclass
class EnergyRow:
    layer: str
    kind: str
    in_shape: list
    out_shape: list
    input: str            # "spikes" | "input" | "analog"
    source: str           # neuron layer (or "input") whose events arrive here
    source_rate: float | None
    ac: float             # per sample
    mac: float            # per sample
    ann_mac: float        # per sample
    ann_mac_dense: float
    snn_pj: float
    ann_pj: float


def count_energy(net: LoweredNet, x: Tensor, profile: EnergyProfile, batch_size: int = 256,
                 temporal: bool = False) -> dict:
    """Per-layer and total operation counts and energy, averaged over the samples in ``x``,
    counted on the device that holds ``net`` (``LoweredNet.to``)."""
    counter = SynOpCounter(net, net.timesteps if not temporal else x.shape[1])
    n = len(x)
    device = net.synapses()[0].weight.device if net.synapses() else torch.device("cpu")
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            run(net, to_time_major(x[i:i + batch_size].to(device), temporal), observer=counter)
    rates = {k: counter.spikes[k] / max(counter.neuron_steps[k], 1) for k in counter.spikes}
    rows = []
    for op in net.synapses():
        kind, _, source = counter.src[op.name]
        f = fan_out(op)
        ann = float(f.sum())
        ac = float((counter.events[op.name].cpu() * f).sum()) / n if kind == "spikes" else 0.0
        mac = counter.mac_rows[op.name] * ann / n
        rows.append(EnergyRow(op.name, op.kind, list(op.in_shape), list(op.out_shape), kind,
                              source or ("input" if kind == "input" else ""),
                              rates.get(source), round(ac, 6), mac, ann, float(dense_macs(op)),
                              profile.ac_pj * ac + profile.mac_pj * mac, profile.ann_mac * ann))
    neurons = [{"layer": op.name, "neurons": math.prod(op.out_shape), "firing_rate": rates[op.name],
                "spikes_per_sample": counter.spikes[op.name] / n} for op in net.neurons()]
    tot = {k: sum(getattr(r, k) for r in rows) for k in ("ac", "mac", "ann_mac", "snn_pj", "ann_pj")}
    tot["ratio"] = tot["snn_pj"] / tot["ann_pj"] if tot["ann_pj"] else float("nan")
    tot["spikes"] = sum(v["spikes_per_sample"] for v in neurons)
    return {"profile": profile.to_dict(), "samples": n, "timesteps": counter.T,
            "layers": [r.__dict__ for r in rows], "neurons": neurons, "total": tot}


def energy(checkpoint: str | Path, profile: str = "45nm-fp32", profile_file: str | Path | None = None,
           samples: int | None = 512, dataset: str | None = None, command: str | None = None,
           device: str | torch.device | None = "cpu") -> dict:
    """Energy report of a checkpoint on ``samples`` test samples (all if None), counted on
    ``device`` (``devices.resolve_device``; the counts do not depend on it), as a dict:
    ``count_energy``'s counts plus provenance (command, versions, checkpoint sha256);
    ``reports.hwsim_report.render_energy_markdown`` lays it out as a table."""
    prof = get_profile(profile, profile_file)
    model, ckpt = load_model(checkpoint)
    spec = dataset or ckpt.get("run_config", {}).get("dataset", "digits")
    data = load_dataset(spec)
    n = min(samples or len(data.x_test), len(data.x_test))
    t0 = time.perf_counter()
    net = lower(model).to(resolve_device(device))
    report = count_energy(net, data.x_test[:n], prof, temporal=data.temporal)
    report.update({"kind": "snn2hw-energy", "command": command_line(command), "versions": versions(),
                   "checkpoint": str(checkpoint_file(checkpoint)), "sha256": sha256_of(checkpoint),
                   "method": ckpt.get("run_config", {}).get("method"), "dataset": spec,
                   "wall_time_s": time.perf_counter() - t0})
    return report
