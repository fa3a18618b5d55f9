"""A numpy integer emulator of the Xylo core, written from xylosim 0.1.3's ``xylosim.v2``.

It predicts, value for value, what ``XyloLayer.evolve`` computes (``src/v2/cpp/XyloLayer.cpp``,
``XyloIAFNeuron.cpp``), for a batch of samples at once. Per time step, in this order:

1. deliver: every input channel ``j`` (in index order) adds ``w_in[j, i] << shift_in`` to the
   synaptic current ``Isyn[i]`` once per event (at most 15 events), then every hidden neuron's
   spikes **of the previous step** add ``w_rec`` (at most 31 per neuron) to the hidden neurons
   and ``w_out`` to the output neurons; each addition saturates at 16 bits.
2. every neuron: ``Isyn -= decay(Isyn, dash_syn)``; ``dv = sat(-decay(Vmem, dash_mem) + Isyn)``;
   ``dv = sat(dv + bias)``; ``Vmem = sat(Vmem + dv)``; then, while ``Vmem >= threshold`` and
   fewer than 31 (hidden) / 1 (output) spikes: one more spike, ``Vmem -= threshold``.

``decay(v, d) = v >> d`` (arithmetic shift), or ``sign(v)`` where that is 0: a state always
moves at least one unit towards 0, and ``d = 0`` clears it. ``sat`` clips to [-32768, 32767].
Aliases are not used by the exporter and not emulated (``XyloSpec.aliases`` stays empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .limits import MAX_HIDDEN_SPIKES, MAX_INPUT_EVENTS, MAX_OUTPUT_SPIKES, STATE_MAX, STATE_MIN


@dataclass
class XyloSpec:
    """The chip's integers, named as rockpool's ``XyloSim.from_specification`` /
    ``config_from_specification`` take them (one synapse per neuron: 2-D weights).
    Weights are (pre, post): ``weights_in`` (Nin, H), ``weights_rec`` (H, H), ``weights_out`` (H, O)."""

    weights_in: np.ndarray
    weights_rec: np.ndarray
    weights_out: np.ndarray
    dash_mem: np.ndarray
    dash_syn: np.ndarray
    dash_mem_out: np.ndarray
    dash_syn_out: np.ndarray
    threshold: np.ndarray
    threshold_out: np.ndarray
    bias: np.ndarray | None = None
    bias_out: np.ndarray | None = None
    weight_shift_in: int = 0
    weight_shift_rec: int = 0
    weight_shift_out: int = 0
    aliases: list[list[int]] = field(default_factory=list)

    @property
    def hidden(self) -> int:
        return int(self.weights_rec.shape[0])

    def specification(self) -> dict:
        """The keyword arguments of ``XyloSim.from_specification`` (plain ints and lists)."""
        spec = {k: np.asarray(getattr(self, k)).astype(int).tolist() for k in (
            "weights_in", "weights_rec", "weights_out", "dash_mem", "dash_mem_out", "dash_syn",
            "dash_syn_out", "threshold", "threshold_out")}
        spec["dash_syn_2"] = spec["dash_syn"]        # the second synapse is unused (no weights)
        if self.bias is not None or self.bias_out is not None:
            spec["bias"] = np.asarray(self.bias if self.bias is not None else np.zeros(self.hidden)).astype(int).tolist()
            spec["bias_out"] = np.asarray(self.bias_out if self.bias_out is not None
                                          else np.zeros(len(self.threshold_out))).astype(int).tolist()
        spec.update(weight_shift_in=int(self.weight_shift_in), weight_shift_rec=int(self.weight_shift_rec),
                    weight_shift_out=int(self.weight_shift_out),
                    aliases=[list(a) for a in self.aliases] or [[] for _ in range(self.hidden)])
        return spec


@dataclass
class XyloRun:
    """What one run records, per step (S steps, N samples): hidden spike counts (S, N, H), output
    spikes, and the output neurons' Vmem and Isyn after each step (S, N, O); ``saturated`` counts
    the additions that hit the 16-bit limits, per state."""

    hidden_spikes: np.ndarray
    output_spikes: np.ndarray
    v_out: np.ndarray
    i_out: np.ndarray
    saturated: dict[str, int] = field(default_factory=dict)


def decay(v: np.ndarray, dash: np.ndarray) -> np.ndarray:
    """xylosim's ``decay``: ``v >> dash``, at least one unit towards 0 (module docstring)."""
    dv = np.right_shift(v, dash)
    return np.where((dv == 0) & (v != 0), np.sign(v), dv)


class _Saturating:
    """Clip to the 16-bit state range, counting how often the clip changed something."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def __call__(self, x: np.ndarray, what: str) -> np.ndarray:
        y = np.clip(x, STATE_MIN, STATE_MAX)
        n = int(np.count_nonzero(y != x))
        if n:
            self.count[what] = self.count.get(what, 0) + n
        return y


def _deliver(isyn: np.ndarray, counts: np.ndarray, weights: np.ndarray, shift: int, cap: int,
             sat: _Saturating, what: str) -> np.ndarray:
    """Add ``weights[j] << shift`` once per event of source ``j``, sources in index order."""
    counts = np.minimum(counts, cap)
    for j in np.flatnonzero(counts.any(0)):
        w = weights[j].astype(np.int64) << shift
        if not w.any():
            continue
        for r in range(int(counts[:, j].max())):
            hit = (counts[:, j] > r)[:, None]
            isyn = np.where(hit, sat(isyn + w, what), isyn)
    return isyn


def _evolve(isyn: np.ndarray, v: np.ndarray, dash_syn: np.ndarray, dash_mem: np.ndarray,
            bias: np.ndarray | None, threshold: np.ndarray, max_spikes: int, sat: _Saturating,
            what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    isyn = isyn - decay(isyn, dash_syn)
    dv = sat(-decay(v, dash_mem) + isyn, what + ".v")
    if bias is not None:
        dv = sat(dv + bias, what + ".v")
    v = sat(v + dv, what + ".v")
    n = np.where(v >= threshold, np.minimum(v // threshold, max_spikes), 0)
    return isyn, v - n * threshold, n


def run(spec: XyloSpec, events: np.ndarray) -> XyloRun:
    """Run ``spec`` on input events (S, N, Nin), each sample from zero state (module docstring)."""
    if spec.aliases and any(spec.aliases):
        raise ValueError("aliases are not emulated")
    if np.any(np.asarray(spec.threshold) < 1) or np.any(np.asarray(spec.threshold_out) < 1):
        raise ValueError("thresholds must be >= 1 (xylosim loops on v >= threshold)")
    S, N, _ = events.shape
    H, O = spec.hidden, spec.weights_out.shape[1]
    i64 = lambda a: np.asarray(a, np.int64)  # noqa: E731
    w_in, w_rec, w_out = i64(spec.weights_in), i64(spec.weights_rec), i64(spec.weights_out)
    ds, dm, th = i64(spec.dash_syn), i64(spec.dash_mem), i64(spec.threshold)
    ds_o, dm_o, th_o = i64(spec.dash_syn_out), i64(spec.dash_mem_out), i64(spec.threshold_out)
    bias = None if spec.bias is None else i64(spec.bias)
    bias_o = None if spec.bias_out is None else i64(spec.bias_out)
    sat = _Saturating()
    isyn, v = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    isyn_o, v_o = np.zeros((N, O), np.int64), np.zeros((N, O), np.int64)
    spikes = np.zeros((N, H), np.int64)
    rec = XyloRun(np.zeros((S, N, H), np.uint8), np.zeros((S, N, O), np.uint8),
                  np.zeros((S, N, O), np.int64), np.zeros((S, N, O), np.int64))
    for t in range(S):
        isyn = _deliver(isyn, i64(events[t]), w_in, spec.weight_shift_in, MAX_INPUT_EVENTS, sat, "hidden.isyn")
        isyn = _deliver(isyn, spikes, w_rec, spec.weight_shift_rec, MAX_HIDDEN_SPIKES, sat, "hidden.isyn")
        isyn_o = _deliver(isyn_o, spikes, w_out, spec.weight_shift_out, MAX_HIDDEN_SPIKES, sat, "output.isyn")
        isyn, v, spikes = _evolve(isyn, v, ds, dm, bias, th, MAX_HIDDEN_SPIKES, sat, "hidden")
        isyn_o, v_o, out = _evolve(isyn_o, v_o, ds_o, dm_o, bias_o, th_o, MAX_OUTPUT_SPIKES, sat, "output")
        rec.hidden_spikes[t], rec.output_spikes[t] = spikes, out
        rec.v_out[t], rec.i_out[t] = v_o, isyn_o
    rec.saturated = sat.count
    return rec
