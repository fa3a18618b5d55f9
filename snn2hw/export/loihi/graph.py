"""NIR graphs netx cannot express (recurrence, residual sums) -> Lava processes.

netx runs chains only. Any other graph becomes a ``LoihiGraph``: CUBA neurons
(``lava.proc.lif.process.LIF``, one per NIR neuron node, flattened) and integer
``Dense`` / ``DelayDense`` connections between them, written as the portable
description ``loihi_graph.npz`` that ``runner.py`` builds in the Lava environment.

Reading (``build_loihi_graph``):

* Neuron nodes (LIF, IF, CubaLIF) and the Input are the sources; every other node
  is linear (Affine, Linear, Conv1d/2d, Avg/SumPool2d, Flatten) and is composed into
  one float matrix per (source, neuron) pair, NIR summing the inputs of a node. A
  neuron fed by two paths (a residual body and its shortcut) gets two edges; a
  neuron -> Affine(w_rec) -> same neuron cycle is a recurrent edge. Convolutions and
  strides become dense matrices (exact; size is the only cost).
* Quantisation per neuron node as for chains (``mapping.loihi_grid`` on all its
  incoming matrices side by side): even 8-bit weights, 13-bit bias, vThMant = V_th G.
* CubaLIF (snn2hw's CUBA, node metadata ``lam``, ``alpha``): Lava's native current
  decay, du = round(4096 (1 - alpha)), dv = round(4096 (1 - lam)).
* Biases, all of them, through two always-on input channels (``BIAS_CHANNEL``): the
  input gets two extra channels that carry the graded values 1 and 16 in every frame
  0..T-1, and a neuron's integer bias b is their weights, ``b = w_lo + 16 w_hi``
  (``split_bias``). It reaches the current through an input edge like any other input,
  delayed by ``depth - 1`` steps, so it arrives in frame t exactly as b does in the float
  model, for both neuron kinds: a CUBA node (alpha > 0) adds b to the current
  (``i = alpha i + W x + b``), which Lava's ``bias_mant`` (added to v) cannot express; a
  LIF node (du = 4096, u keeps no memory) adds b to v, but ``bias_mant`` is added from
  Lava's step 0, ``depth`` steps before the first input arrives (one step of latency per
  connection), and would charge v that long before the float model does (issue 18: a
  tdBN ResNet, whose folded offsets are biases, lost class agreement). G is chosen as
  for a 13-bit bias_mant and the two weights keep that range; b is rounded to even (Lava's
  8-bit weights are even), at most one unit from bias_mant's value. One channel of
  payload 1 would put b on the 8-bit weight grid and, for tdBN layers whose biases exceed
  their weights, lower G (measured: spike agreement 0.85 instead of 0.95 at depth 5).

Timing (measured, targets.md A.3): every connection delivers at step i what its
source emitted at step i - 1 - delay. Neuron n sits at depth d(n) = the longest
forward path (in connections) from the input; a forward edge from depth d(s) gets
``delay = d(n) - d(s) - 1`` so that a residual body and its shortcut arrive at the
same step, and the neuron's step i is frame i - d(n) of the float model. A
recurrent edge (source depth = target depth) needs no delay: it brings s[t-1] as
the float model does. An edge back to a shallower neuron cannot be timed (it would
need a negative delay) and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ExportError
from ..nir_reading import check_weights, producer_of, read_input, read_neuron
from .emulator import DECAY_UNIT
from .mapping import A_LIMIT, INPUT_LEVELS, INPUT_RANGE, WEIGHT_MAX, loihi_grid, v_decay_of

NEURONS = ("LIF", "IF", "CubaLIF")
LINEAR = ("Affine", "Linear", "Conv1d", "Conv2d", "AvgPool2d", "SumPool2d", "Flatten")
INPUT = "input"
BIAS_CHANNEL = "bias channels"   # info key: the neurons whose biases the always-on input channels carry
BIAS_PAYLOADS = (1, 16)       # their graded values: a bias b = w_lo + 16 w_hi, both even weights


@dataclass
class GraphNeuron:
    """One Lava LIF process: ``size`` neurons, integer registers."""

    name: str
    size: int
    du: int            # current decay (4096 = no memory)
    dv: int            # voltage decay
    vth: int
    bias: np.ndarray   # (size,) int
    depth: int         # connections from the input along the longest forward path
    gain: float        # G: integer units per float unit of current


@dataclass
class GraphEdge:
    """One Lava Dense (delay 0) or DelayDense: ``weight`` (dst size, src size), int."""

    src: str           # a neuron name or "input"
    dst: str
    weight: np.ndarray
    delay: int = 0


@dataclass
class LoihiGraph:
    """Neurons in topological order of the forward edges, edges, and the host readout
    ``logits = sum_src W_src mean_t(s_src) + b`` (float)."""

    neurons: list[GraphNeuron]
    edges: list[GraphEdge]
    input_size: int
    input_levels: int
    input_range: tuple[float, float]
    readout: dict[str, np.ndarray]
    readout_bias: np.ndarray
    timesteps: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def neuron_names(self) -> list[str]:
        return [n.name for n in self.neurons]

    @property
    def depth(self) -> int:
        return max(n.depth for n in self.neurons)

    def quantise_input(self, x: np.ndarray) -> np.ndarray:
        """Float input (..., *model input shape) -> graded integers, flattened (..., input_size)."""
        lo, hi = self.input_range
        xi = np.round(np.clip(np.asarray(x, np.float64), lo, hi) * self.input_levels).astype(np.int64)
        lead = xi.ndim - len(self.info["model_input_shape"])
        xi = xi.reshape(xi.shape[:lead] + (-1,))
        if self.info.get(BIAS_CHANNEL):
            always_on = np.broadcast_to(np.array(BIAS_PAYLOADS), xi.shape[:-1] + (len(BIAS_PAYLOADS),))
            xi = np.concatenate([xi, always_on], axis=-1)
        return xi

    def input_bits(self) -> int:
        lo, hi = (round(v * self.input_levels) for v in self.input_range)
        peak = max(abs(lo), abs(hi), max(BIAS_PAYLOADS) if self.info.get(BIAS_CHANNEL) else 0)
        return max(int(peak).bit_length() + 1, 2)


def split_bias(b_int: np.ndarray) -> np.ndarray:
    """(size, 2) even weights (w_lo, w_hi) of the bias channels, w_lo + 16 w_hi = b_int rounded
    to even (Lava's 8-bit weights are even): 13-bit range, error <= 1 unit of the 13-bit grid."""
    b_even = 2 * np.round(np.asarray(b_int, np.float64) / 2)
    p = BIAS_PAYLOADS[1]
    hi = (2 * np.round(b_even / (2 * p))).clip(-256, WEIGHT_MAX)
    return np.stack([b_even - p * hi, hi], axis=1).astype(np.int64)


# ---- linear nodes as matrices over their (flattened) input ----

def _matrix_of(fn: Any, in_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(M, out_shape) with fn(x).flatten() == M x.flatten() + fn(0), fn linear + constant."""
    n = int(np.prod(in_shape))
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape((n,) + in_shape)
        zero = fn(torch.zeros((1,) + in_shape, dtype=torch.float64))
        out = fn(basis) - zero
    return out.reshape(n, -1).T.numpy(), tuple(zero.shape[1:])


def _linear_op(name: str, node: Any, in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(A, c, out_shape): node(x) = A x + c on flattened per-sample tensors."""
    import torch.nn.functional as F

    kind = type(node).__name__
    if kind in ("Affine", "Linear", "Conv1d", "Conv2d"):
        check_weights(name, node)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
    if kind in ("Affine", "Linear"):
        w = np.asarray(node.weight, np.float64)
        b = np.asarray(getattr(node, "bias", np.zeros(w.shape[0])), np.float64)
        return w, b, (w.shape[0],)
    if kind == "Flatten":
        n = int(np.prod(in_shape))
        return np.eye(n), np.zeros(n), (n,)
    if kind in ("Conv1d", "Conv2d"):
        def pair(v: Any) -> Any:
            return v if isinstance(v, str) else tuple(int(x) for x in np.atleast_1d(v))
        conv = F.conv1d if kind == "Conv1d" else F.conv2d
        fn = lambda x: conv(x, t(node.weight), t(node.bias), stride=pair(node.stride),  # noqa: E731
                            padding=pair(node.padding), dilation=pair(node.dilation), groups=int(node.groups))
    else:
        k, s, p = (tuple(int(x) for x in np.atleast_1d(v)) for v in (node.kernel_size, node.stride, node.padding))
        scale = float(np.prod(k)) if kind == "SumPool2d" else 1.0
        fn = lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=True) * scale  # noqa: E731
    with torch.no_grad():
        c = fn(torch.zeros((1,) + in_shape, dtype=torch.float64)).reshape(-1).numpy()
    a, out = _matrix_of(fn, in_shape)
    return a, c, out


Form = tuple[dict[str, np.ndarray], np.ndarray, tuple[int, ...]]   # {source: M}, bias, shape


def _apply(form: Form, a: np.ndarray, c: np.ndarray, out: tuple[int, ...]) -> Form:
    mats, b, _ = form
    return {s: a @ m for s, m in mats.items()}, a @ b + c, out


def _sum(name: str, forms: list[Form]) -> Form:
    shapes = {f[2] for f in forms}
    sizes = {int(np.prod(s)) for s in shapes}
    if len(sizes) != 1:
        raise ExportError(f"node {name}: its inputs have different sizes {sorted(shapes)}; NIR sums them "
                          "element by element. Fix: make the summed branches the same shape")
    mats: dict[str, np.ndarray] = {}
    for m, _, _ in forms:
        for s, x in m.items():
            mats[s] = mats[s] + x if s in mats else x
    return mats, sum(f[1] for f in forms), forms[0][2]


# ---- neurons ----

def _neuron_reading(name: str, node: Any, meta: dict, producer: str) -> tuple[float, float, float, float, bool]:
    """(lam, alpha, V_th, input gain, spike >=) of a neuron node, or refuse (one line)."""
    kind = type(node).__name__
    local = dict(getattr(node, "metadata", None) or {})
    if kind == "CubaLIF":
        if not {"lam", "alpha"} <= local.keys():
            raise ExportError(f"neuron {name}: CubaLIF without snn2hw's node metadata lam/alpha; its tau_syn, "
                              "tau_mem and w_in have no agreed per-step reading. Fix: export it with snn2hw's to_nir")
        if local.get("reset", meta.get("reset", "zero")) not in ("zero", "hard"):
            raise ExportError(f"neuron {name}: reset by subtraction, which no Lava CUBA neuron has. "
                              "Fix: retrain with --reset hard")
        v_th = float(local.get("v_th", np.asarray(node.v_threshold).flat[0]))
        spike = str(local.get("spike", meta.get("spike", ">")))
        alpha = float(local["alpha"])
        if alpha and v_decay_of(alpha) < 1:
            raise ExportError(f"neuron {name}: alpha = {alpha:g} rounds to no current decay (du = 0), below "
                              "Lava's smallest (1/4096 per step). Fix: alpha <= 1 - 1/4096")
        return float(local["lam"]), alpha, v_th, 1.0, spike == ">="
    rd = read_neuron(name, node, meta, producer)
    missing = rd.differences()
    if missing:
        raise ExportError(f"neuron {name}: {', '.join(missing)}, which no Lava CUBA neuron has (it fires once "
                          "and resets v to 0). Fix: retrain with --reset hard")
    vals = [np.unique(np.asarray(a, np.float64).round(12)) for a in (rd.lam, rd.v_th, rd.gain)]
    if any(v.size != 1 for v in vals) or np.any(rd.drive != 0):
        raise ExportError(f"neuron {name}: leak, threshold or input gain differ per neuron, or v_leak != 0; "
                          "a Lava LIF process has one of each. Fix: one value per layer, v_leak = 0")
    return float(vals[0][0]), 0.0, float(vals[1][0]), float(vals[2][0]), rd.spike_geq


def _depths(order: list[str], inputs: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, int], set]:
    """Depth per neuron (longest forward path from the input) and the recurrent edges
    (src, dst) with src at the same depth as dst; refuses edges back to a shallower neuron."""
    depth: dict[str, int] = {INPUT: 0}
    pending = list(order)
    while pending:
        ready = [n for n in pending if all(s in depth or s == n for s in inputs[n])]
        if not ready:   # a cycle through several neurons: place one that a known source feeds
            ready = [n for n in pending if any(s in depth for s in inputs[n])][:1] or [pending[0]]
        for n in ready:
            known = [depth[s] for s in inputs[n] if s in depth]
            if not known:
                raise ExportError(f"neuron {n}: no input reaches it from the network input; Lava would "
                                  "leave it silent. Fix: remove it")
            depth[n] = max(known) + 1
            pending.remove(n)
    recurrent = set()
    for n in order:
        for s in inputs[n]:
            if s == INPUT or depth[s] < depth[n]:
                continue
            if s != n:
                raise ExportError(f"edge {s} -> {n}: a feedback connection to a shallower neuron arrives "
                                  f"{depth[s] - depth[n] + 1} steps late in Lava (one step per connection) and "
                                  "cannot be delayed negatively. Fix: recurrence only from a neuron to itself")
            recurrent.add((s, n))
    return depth, recurrent


def build_loihi_graph(graph: Any, input_levels: int | None = None,
                      input_range: tuple[float, float] | None = None) -> LoihiGraph:
    """The integer Lava process graph of ``graph`` (module docstring); raises ExportError."""
    meta = dict(graph.metadata or {})
    producer = producer_of(graph)
    # event counts go as they are; analog input (direct, or a sequence with a recorded input_range)
    # as graded spikes of INPUT_LEVELS per unit
    events = meta.get("input_encoding") == "temporal" and "input_range" not in meta
    levels = int(input_levels or meta.get("loihi_input_levels", 1 if events else INPUT_LEVELS))
    rng = tuple(input_range or meta.get("input_range", INPUT_RANGE))
    nodes = graph.nodes
    preds: dict[str, list[str]] = {k: [] for k in nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    model_in = tuple(int(s) for s in read_input(graph).shape)
    input_name = next(k for k, v in nodes.items() if type(v).__name__ == "Input")
    shapes: dict[str, tuple[int, ...]] = {input_name: model_in}
    forms: dict[str, Form] = {}
    neurons = [k for k, v in nodes.items() if type(v).__name__ in NEURONS]
    for k, v in nodes.items():
        kind = type(v).__name__
        if kind not in NEURONS + LINEAR + ("Input", "Output"):
            raise ExportError(f"node {k}: {kind} has no Lava process here (supported: {', '.join(NEURONS + LINEAR)})")

    def form(name: str, stack: tuple = ()) -> Form:
        if name == input_name:
            n = int(np.prod(model_in))
            return {INPUT: np.eye(n)}, np.zeros(n), model_in
        if type(nodes[name]).__name__ in NEURONS:
            if name not in shapes:
                raise ExportError(f"neuron {name}: its shape is unknown (it is reached only through a cycle)")
            n = int(np.prod(shapes[name]))
            return {name: np.eye(n)}, np.zeros(n), shapes[name]
        if name in forms:
            return forms[name]
        if name in stack:
            raise ExportError(f"node {name}: a cycle without a neuron in it; NIR cannot run it step by step")
        ins = _sum(name, [form(p, stack + (name,)) for p in preds[name]])
        a, c, out = _linear_op(name, nodes[name], ins[2])
        forms[name] = _apply(ins, a, c, out)
        return forms[name]

    # neuron shapes: from any input path whose sources are already known (a recurrent
    # path needs the neuron's own shape, so it is skipped until then)
    inputs: dict[str, Form] = {}
    todo = list(neurons)
    while todo:
        progressed = False
        for n in list(todo):
            for p in preds[n]:
                try:
                    shapes[n] = form(p)[2]
                except ExportError as exc:
                    if "shape is unknown" not in str(exc):
                        raise
                    continue
                todo.remove(n)
                progressed = True
                break
        if not progressed:
            raise ExportError(f"neurons {todo}: reached only through a cycle; no input drives them")
    for n in neurons:
        inputs[n] = _sum(n, [form(p) for p in preds[n]])
    readings = {n: _neuron_reading(n, nodes[n], meta, producer) for n in neurons}
    n_in = int(np.prod(model_in))
    lo, hi = (int(round(v * levels)) for v in rng)
    # integer input per column: graded model input (one unit = 1/levels), then the bias channels
    in_scale, in_peak = np.full(n_in, 1.0 / levels), np.full(n_in, float(max(abs(lo), abs(hi))))
    biased = [n for n in neurons if np.any(inputs[n][1] != 0)]
    for n in biased:   # a deep neuron gets its bias through its own (delayed) edge from the input
        inputs[n][0].setdefault(INPUT, np.zeros((len(inputs[n][1]), n_in)))
    n_bias = len(BIAS_PAYLOADS) if biased else 0
    in_peak = np.append(in_peak, BIAS_PAYLOADS[:n_bias])
    order = [n for n in neurons]
    depth, recurrent = _depths(order, {n: inputs[n][0] for n in order})
    order.sort(key=lambda n: depth[n])

    g_neurons, g_edges = [], []
    for n in order:
        lam, alpha, v_th, gain, geq = readings[n]
        mats, bias, _ = inputs[n]
        srcs = list(mats)
        w_cat = np.concatenate([mats[s] * gain * (in_scale if s == INPUT else 1.0) for s in srcs], axis=1)
        try:   # the bias keeps its 13-bit range in the choice of G, then moves to the bias channels
            q = loihi_grid(w_cat, bias * gain, v_th, 1.0, ">=" if geq else ">")
        except ValueError as exc:
            raise ExportError(f"neuron {n}: {exc}") from None
        col = 0
        worst = np.zeros(len(bias), np.int64)
        for s in srcs:
            w = q.weight[:, col:col + mats[s].shape[1]]
            col += mats[s].shape[1]
            if s == INPUT:
                extra = split_bias(q.bias) if n in biased else np.zeros((len(w), n_bias), np.int64)
                w = np.concatenate([w, extra], axis=1)
            worst += np.abs(w) @ (in_peak if s == INPUT else np.ones(w.shape[1])).astype(np.int64)
            delay = 0 if (s, n) in recurrent else depth[n] - depth[s] - 1
            g_edges.append(GraphEdge(s, n, w.astype(np.int64), int(delay)))
        if int(worst.max()) >= A_LIMIT:
            raise ExportError(f"neuron {n}: worst-case synaptic input reaches 2^17 = {A_LIMIT}; Lava's 24-bit "
                              "current would wrap. Fix: fewer inputs per neuron or smaller weights")
        g_neurons.append(GraphNeuron(n, len(bias), v_decay_of(alpha) if alpha else DECAY_UNIT,
                                     v_decay_of(lam), int(q.vth), np.zeros(len(bias), np.int64), depth[n], q.gain))
    out_name = next(k for k, v in nodes.items() if type(v).__name__ == "Output")
    out = _sum(out_name, [form(p) for p in preds[out_name]])
    if INPUT in out[0]:
        raise ExportError("the readout reads the network input directly; Loihi streams out only spikes. "
                          "Fix: end the network with neuron -> Affine")
    info = {"model_input_shape": model_in, "recurrent_edges": sorted(recurrent),
            "delayed_edges": [(e.src, e.dst, e.delay) for e in g_edges if e.delay], BIAS_CHANNEL: biased}
    return LoihiGraph(g_neurons, g_edges, len(in_peak), levels, (float(rng[0]), float(rng[1])),
                      out[0], out[1], int(meta.get("timesteps", 0) or 0), info)


def is_chain(graph: Any) -> bool:
    """Whether every node has at most one input and one output (netx can run it)."""
    fan_in: dict[str, int] = {}
    fan_out: dict[str, int] = {}
    for a, b in graph.edges:
        fan_out[a] = fan_out.get(a, 0) + 1
        fan_in[b] = fan_in.get(b, 0) + 1
        if a == b:
            return False
    return max(fan_in.values(), default=1) <= 1 and max(fan_out.values(), default=1) <= 1


def write_graph(net: LoihiGraph, path: Path) -> Path:
    """The portable description runner.py builds Lava processes from (npz, integers)."""
    arrays: dict[str, Any] = {
        "neuron_names": np.array(net.neuron_names),
        "neuron_params": np.array([[n.size, n.du, n.dv, n.vth, n.depth] for n in net.neurons], np.int64),
        "edge_ends": np.array([[e.src, e.dst] for e in net.edges]),
        "edge_delays": np.array([e.delay for e in net.edges], np.int64),
        "input_size": np.int64(net.input_size), "input_bits": np.int64(net.input_bits()),
        "input_levels": np.int64(net.input_levels), "input_range": np.array(net.input_range),
        "timesteps": np.int64(net.timesteps), "readout_bias": net.readout_bias,
        "readout_sources": np.array(list(net.readout)),
    }
    for i, n in enumerate(net.neurons):
        arrays[f"bias{i}"] = n.bias
    for i, e in enumerate(net.edges):
        arrays[f"weight{i}"] = e.weight.astype(np.int64)
    for i, w in enumerate(net.readout.values()):
        arrays[f"readout{i}"] = w
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
