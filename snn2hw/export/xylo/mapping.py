"""NIR graph -> the integer Xylo network (``XyloNet``): reading, refusals, quantisation.

Accepted graph: ``Input [Flatten] (Affine -> CubaLIF [<-> Affine/Linear w_rec])+ -> Affine ->
Output``, the shape snnTorch writes for ``RSynaptic`` (and a neuron without the self-loop).
Our CUBA neuron ``i[t] = alpha i[t-1] + c[t]``, ``u[t] = lam (u[t-1] - V_th s[t-1]) + i[t]``,
``s = u > V_th`` maps onto a Xylo hidden neuron (emulator.py) with

    dash_syn = round(log2(1 / (1 - alpha)))   alpha_eff = 1 - 2^-dash_syn   (1..15)
    dash_mem = round(log2(1 / (1 - lam)))     lam_eff = 1 - 2^-dash_mem     (1..15; lam = 0 -> 0)
    W_int = round(G W g / alpha_eff)          Xylo's Isyn decays after the input is added, so
                                              Isyn = G i when the input is scaled by 1/alpha
    threshold = theta + 1, theta = G V_th     ``v > theta`` is ``v >= theta + 1`` in integers

with a gain G per neuron (integer units per float unit), the largest with every incoming weight
(input, previous layer, recurrent, bias) within +-127 and theta an integer <= 32766; g is the
float value of one input unit (1/L for the input events, 1 for spikes). Biases are sent as an
extra input channel per layer carrying one event per step (exact: the bias is filtered by the
synapse, as in the float model). Hidden layers sit one after another in the hidden population;
layer k reaches layer k+1 through ``weights_rec`` with one step of delay (Xylo delivers hidden
spikes at the next step), so layer k runs k steps behind the input and the network runs T + L
steps (L layers).

Weight shifts stay 0: shifting the hidden weights left (finer states, same 8-bit weights)
changed the spike agreement by under half a point on random networks and makes saturation
likelier (measured). The largest recurrent fan-out is reported (``info``): Xylo Audio 3's RAM
map (rockpool ``syns65302/ram.py``: 31744 hidden-weight words for 992 neurons) suggests 32
targets per neuron; samna's ``validate_configuration`` decides, on the user's side.

Readout: the last Affine drives the output neurons, used as integrators (dash_syn_out = 1,
dash_mem_out = 15, threshold_out = 32767: they never spike below saturation). After the run the
host reads Vmem_out and Isyn_out and computes ``logits = (Vmem + Isyn) / (G_out T) + b``: with
``Isyn <- (Isyn + c) - (Isyn + c) >> 1`` the sum of all inputs is Vmem + Isyn (to +-1 unit per
step). G_out keeps 8-bit weights and the worst-case sum over T steps within 16 bits.

Not exact on Xylo, and reported by ``verify``: a hidden neuron emits several spikes in one step
while ``Vmem >= threshold`` (up to 31; our neuron emits one), the reset subtracts theta + 1,
decays round toward -infinity and move at least one unit, states saturate at 16 bits.

Refused (ExportError before anything is written): neurons without a synaptic current (LIF/IF:
Xylo filters every input, alpha >= 1/2), a hard reset with lam > 0, v_leak != 0, anything that
branches, other node kinds, and networks beyond the chip's limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import nir
import numpy as np

from ...errors import ExportError, notice
from ..to_nir import DT
from .emulator import XyloSpec
from .limits import CHIPS, DASH_MAX, MAX_INPUT_EVENTS, STATE_MAX, THRESHOLD_MAX, WEIGHT_MAX, XyloLimits

OUTPUT_DASH_SYN, OUTPUT_DASH_MEM = 1, DASH_MAX
OUTPUT_SATURATION_MARGIN = 0.9      # of 32767, for the worst-case readout sum
SYNAPSES = ("Affine", "Linear")


def dash_of(leak: np.ndarray) -> np.ndarray:
    """Bit-shift decay of a leak factor: ``round(log2(1 / (1 - leak)))`` in [1, 15]; 0 for leak 0."""
    leak = np.asarray(leak, np.float64)
    with np.errstate(divide="ignore"):
        d = np.round(np.log2(1.0 / np.maximum(1.0 - leak, 2.0 ** -20)))
    return np.where(leak <= 0, 0, np.clip(d, 1, DASH_MAX)).astype(np.int64)


def leak_of(dash: np.ndarray) -> np.ndarray:
    """The leak a bit-shift decay applies: ``1 - 2^-dash`` (0 for dash 0)."""
    dash = np.asarray(dash, np.int64)
    return np.where(dash == 0, 0.0, 1.0 - 2.0 ** -dash.astype(np.float64))


def input_levels(input_range: tuple[float, float]) -> int:
    """Events per float unit of input: the most that keeps ``max |x|`` within 15 events."""
    m = max(abs(float(input_range[0])), abs(float(input_range[1])))
    return max(1, int(np.floor(MAX_INPUT_EVENTS / m))) if m > 0 else MAX_INPUT_EVENTS


def neuron_gain(row_max: np.ndarray, v_th: np.ndarray, alpha_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, G) per neuron: G the largest gain with ``row_max G / alpha_eff <= 127`` and
    ``theta = G V_th`` an integer <= 32766 (``row_max``: largest |W g| reaching the neuron)."""
    v_th = np.asarray(v_th, np.float64)
    if np.any(v_th <= 0):
        raise ValueError(f"thresholds must be > 0, got min {v_th.min():g}")
    with np.errstate(divide="ignore"):
        g_max = np.where(row_max > 0, WEIGHT_MAX * alpha_eff / np.where(row_max > 0, row_max, 1.0), np.inf)
    g_max = np.minimum(g_max, (THRESHOLD_MAX - 1) / v_th)
    theta = np.maximum(np.floor(v_th * g_max * (1 + 1e-12)), 1.0)
    return theta.astype(np.int64), theta / v_th


def quantise_rows(w: Any, gain: Any, unit: float, alpha_eff: Any, rnd: Callable = np.round) -> Any:
    """``clip(round(G W g / alpha_eff), -127, 127)`` with G and alpha_eff per row (output neuron);
    numpy for the export, torch with a straight-through round for QAT."""
    return rnd(w * (gain * unit / alpha_eff)[:, None]).clip(-WEIGHT_MAX, WEIGHT_MAX)


@dataclass
class HiddenLayer:
    """One CUBA layer of the graph and where it sits on the chip."""

    synapse: str
    neuron: str
    recurrent: str | None
    first: int                      # its first hidden neuron index
    size: int
    lag: int                        # steps behind the input (its depth)
    alpha: np.ndarray
    lam: np.ndarray
    v_th: np.ndarray
    gain: np.ndarray
    bias_channel: int | None = None

    @property
    def ids(self) -> slice:
        return slice(self.first, self.first + self.size)


@dataclass
class Encoding:
    """How the host turns samples into input events."""

    features: int
    levels: int                      # events per float unit: round(L clip(x))
    input_range: tuple[float, float]
    split_sign: bool                 # channel 2f: positive part, 2f + 1: negative part
    temporal: bool
    channels: int                    # data channels (bias channels follow)


@dataclass
class XyloNet:
    """The plan: the chip's integers (``spec``) and what the host does around them."""

    chip: XyloLimits
    spec: XyloSpec
    layers: list[HiddenLayer]
    encoding: Encoding
    readout_name: str
    readout_gain: np.ndarray         # per class
    readout_bias: np.ndarray         # float, added on the host
    timesteps: int
    fits: dict[str, list[str]] = field(default_factory=dict)   # chip -> why not (empty: fits)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Steps to run for T time steps: the last layer lags L - 1, the output one more."""
        return self.timesteps + len(self.layers)

    def events(self, x: np.ndarray, timesteps: int | None = None) -> np.ndarray:
        """Samples (N, *shape) direct or (T, N, *shape) temporal -> events (T + L, N, Nin)."""
        T = int(timesteps or self.timesteps)
        enc = self.encoding
        x = np.asarray(x, np.float64)
        if not enc.temporal:
            x = np.broadcast_to(x, (T,) + x.shape)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        lo, hi = enc.input_range
        q = np.round(np.clip(x, lo, hi) * enc.levels).astype(np.int64)
        data = np.concatenate([np.maximum(q, 0), np.maximum(-q, 0)], 2) if enc.split_sign else q
        if enc.split_sign:   # interleave: channel 2f positive, 2f + 1 negative
            data = data.reshape(T, x.shape[1], 2, -1).transpose(0, 1, 3, 2).reshape(T, x.shape[1], -1)
        out = np.zeros((T + len(self.layers), x.shape[1], self.spec.weights_in.shape[0]), np.int64)
        out[:T, :, :enc.channels] = data
        for layer in self.layers:
            if layer.bias_channel is not None:
                out[layer.lag:layer.lag + T, :, layer.bias_channel] = 1
        return out

    def logits(self, v_out: np.ndarray, i_out: np.ndarray, timesteps: int | None = None) -> np.ndarray:
        """Host readout from the output neurons' last Vmem and Isyn (N, K) (module docstring)."""
        T = int(timesteps or self.timesteps)
        return (v_out + i_out) / (self.readout_gain * T) + self.readout_bias


# --- reading the graph ------------------------------------------------------------------

def _meta(node: Any) -> dict:
    return dict(getattr(node, "metadata", None) or {})


def _refuse_node(name: str, node: Any) -> ExportError:
    kind = type(node).__name__
    if kind in ("LIF", "IF"):
        return ExportError(
            f"neuron {name}: {kind} has no synaptic current; every Xylo neuron filters its input "
            "through a synapse that decays by at most 1/2 per step (dash_syn >= 1), so there is no "
            "exact equivalent. Fix: train the recurrent CUBA model (--model srnn) for Xylo")
    return ExportError(f"node {name}: {kind} has no Xylo equivalent (Xylo runs Affine/Linear synapses "
                       "into CubaLIF neurons, optionally recurrent, and a final Affine readout)")


@dataclass
class _Read:
    synapse: str
    neuron: str
    recurrent: str | None
    w: np.ndarray          # (n, inputs), the neuron's input gain folded in
    w_rec: np.ndarray | None
    b: np.ndarray
    alpha: np.ndarray
    lam: np.ndarray
    v_th: np.ndarray


def _cuba(name: str, node: Any, meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, lam, V_th, input gain) per neuron of a CubaLIF, or refuse."""
    local = _meta(node)
    reset = local.get("reset", meta.get("reset", "subtract"))
    dt = float(meta.get("dt", DT))
    shape = np.asarray(node.v_threshold).shape
    full = lambda v: np.broadcast_to(np.asarray(v, np.float64), shape).astype(np.float64)  # noqa: E731
    tau_syn, tau_mem = full(node.tau_syn), full(node.tau_mem)
    alpha = full(local["alpha"]) if "alpha" in local else 1.0 - dt / tau_syn
    lam = full(local["lam"]) if "lam" in local else 1.0 - dt / tau_mem
    v_th = full(local.get("v_th", node.v_threshold))
    gain = (dt / tau_syn) * full(node.w_in) * (dt / tau_mem) * full(node.r)
    if "lam" in local or "alpha" in local:
        gain = full(local.get("input_gain", 1.0))
    if np.any(full(node.v_leak) != 0):
        raise ExportError(f"neuron {name}: v_leak != 0 has no Xylo equivalent. Fix: v_leak = 0")
    if np.any(alpha <= 0):
        raise ExportError(f"neuron {name}: synaptic leak alpha = {alpha.min():g}; a Xylo synapse keeps at "
                          "least half its current per step (dash_syn >= 1). Fix: train with alpha >= 0.5 "
                          "(or --qat xylo)")
    if reset in ("zero", "hard") and np.any(lam > 0):
        raise ExportError(f"neuron {name}: hard reset (to zero); Xylo resets by subtracting the threshold. "
                          "Fix: retrain with --reset soft (or lam = 0)")
    return alpha, lam, v_th, gain


def _affine(node: Any) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(node.weight, np.float64)
    b = np.asarray(getattr(node, "bias", None) if getattr(node, "bias", None) is not None else np.zeros(w.shape[0]), np.float64)
    return w, np.broadcast_to(b.reshape(-1), (w.shape[0],)).copy()


def read_graph(graph: nir.NIRGraph) -> tuple[list[_Read], tuple[str, np.ndarray, np.ndarray], int]:
    """Walk the graph into CUBA layers and the readout; every structural refusal happens here.
    Returns (layers, (readout name, W_out, b_out), input features)."""
    meta = dict(graph.metadata or {})
    nodes = graph.nodes
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    starts = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    if len(starts) != 1:
        raise ExportError(f"the NIR graph has {len(starts)} Input nodes; Xylo needs exactly one")
    features = int(np.prod(np.asarray(nodes[starts[0]].input_type["input"]).ravel()))
    layers: list[_Read] = []
    cur = starts[0]
    readout = None
    while True:
        nxt = [n for n in succ.get(cur, []) if not (layers and n == layers[-1].recurrent)]
        if len(nxt) != 1:
            raise ExportError(f"node {cur} feeds {len(nxt)} nodes (a branching graph); Xylo's exporter maps "
                              "chains of (recurrent) CUBA layers")
        name = nxt[0]
        node = nodes[name]
        kind = type(node).__name__
        if isinstance(node, nir.NIRGraph):
            raise ExportError(f"node {name} is a nested graph; flatten it first (nirtorch inlines snnTorch's)")
        if kind == "Flatten" and not layers:
            cur = name
            continue
        if kind not in SYNAPSES:
            raise _refuse_node(name, node)
        w, b = _affine(node)
        after = succ.get(name, [])
        if len(after) == 1 and isinstance(nodes[after[0]], nir.Output):
            readout = (name, w, b)
            break
        if len(after) != 1:
            raise ExportError(f"node {name} feeds {len(after)} nodes; Xylo's exporter maps chains")
        neuron = after[0]
        if type(nodes[neuron]).__name__ != "CubaLIF":
            raise _refuse_node(neuron, nodes[neuron])
        alpha, lam, v_th, gain = _cuba(neuron, nodes[neuron], meta)
        others = [p for p in pred.get(neuron, []) if p != name]
        rec, w_rec = None, None
        if others:
            rec = others[0]
            if (len(others) > 1 or type(nodes[rec]).__name__ not in SYNAPSES
                    or pred.get(rec) != [neuron]):
                raise ExportError(f"neuron {neuron} sums inputs from {sorted(pred[neuron])}; only one recurrent "
                                  "Affine/Linear from the neuron back to itself is supported")
            w_rec, b_rec = _affine(nodes[rec])
            if w_rec.ndim == 1:  # nir.Linear of a diagonal written as a vector
                w_rec = np.diag(w_rec)
            b = b + b_rec
            w_rec = w_rec * gain[:, None]
        layers.append(_Read(name, neuron, rec, w * gain[:, None], w_rec, b * gain, alpha, lam, v_th))
        cur = neuron
    if not layers:
        raise ExportError("the graph has no CubaLIF layer for Xylo's hidden neurons")
    if layers[0].w.shape[1] != features:
        raise ExportError(f"layer {layers[0].synapse}: weight expects {layers[0].w.shape[1]} inputs, the "
                          f"graph's input has {features}")
    return layers, readout, features


# --- building the integer network ----------------------------------------------------------

def _encoding(meta: dict, features: int) -> Encoding:
    temporal = meta.get("input_encoding") == "temporal"
    default = (0.0, float(MAX_INPUT_EVENTS)) if temporal else (0.0, 1.0)
    lo, hi = (float(v) for v in meta.get("input_range", default))
    split = lo < 0
    return Encoding(features, input_levels((lo, hi)), (lo, hi), split, temporal,
                    features * (2 if split else 1))


def readout_gain(w: np.ndarray, T: int) -> np.ndarray:
    """Per class: 8-bit weights, and the worst-case |sum over T steps| of binary spikes within
    0.9 x 32767 (Vmem_out is 16-bit)."""
    row = np.abs(w).max(1)
    total = np.abs(w).sum(1) * max(T, 1)
    g8 = np.where(row > 0, WEIGHT_MAX / np.where(row > 0, row, 1), 1.0)
    gs = np.where(total > 0, OUTPUT_SATURATION_MARGIN * STATE_MAX / np.where(total > 0, total, 1), np.inf)
    return np.minimum(g8, gs)


def build_xylo_net(graph: nir.NIRGraph, chip: str | None = None) -> XyloNet:
    """The integer Xylo network of ``graph`` (module docstring) on ``chip`` (a name in
    ``limits.CHIPS``; None: the first that fits). Raises ExportError before anything is written."""
    meta = dict(graph.metadata or {})
    T = int(meta.get("timesteps", 0) or 0)
    reads, (ro_name, w_out, b_out), features = read_graph(graph)
    enc = _encoding(meta, features)
    sizes = [r.w.shape[0] for r in reads]
    H, K = sum(sizes), w_out.shape[0]
    if w_out.shape[1] != sizes[-1]:
        raise ExportError(f"readout {ro_name}: weight expects {w_out.shape[1]} inputs, layer {reads[-1].neuron} "
                          f"has {sizes[-1]} neurons")
    bias_layers = [k for k, r in enumerate(reads) if np.any(r.b != 0)]
    channels = enc.channels + len(bias_layers)
    reached = max([sizes[0]] + [sum(sizes[:k + 1]) for k in bias_layers])
    fits = {name: c.refusals(channels, H, K, reached, sizes[-1]) for name, c in CHIPS.items()}
    if chip is not None:
        if chip not in CHIPS:
            raise ExportError(f"unknown Xylo chip {chip!r}; choose one of {sorted(CHIPS)}")
        chosen = chip
    else:
        chosen = next((name for name, why in fits.items() if not why), None)
    if chosen is None or fits[chosen]:
        why = "; ".join(f"{name}: {', '.join(r)}" for name, r in fits.items() if chip in (None, name))
        raise ExportError(f"layers {reads[0].synapse}..{ro_name}: the network does not fit Xylo ({why}). "
                          "Fix: fewer neurons, input features or classes, or another chip")
    lams = [dash_of(r.lam) for r in reads]
    changed = [r.neuron for r, d in zip(reads, lams) if np.abs(leak_of(d) - r.lam).max() > 1e-9] + \
              [r.neuron for r in reads if np.abs(leak_of(dash_of(r.alpha)) - r.alpha).max() > 1e-9]
    if changed:
        notice(f"xylo: leaks of {sorted(set(changed))} rounded to Xylo's bit-shift decays 1 - 2^-dash "
               "(see verification details lam_effective/alpha_effective); train with --qat xylo to avoid it")
    w_in = np.zeros((channels, H), np.int64)
    w_rec = np.zeros((H, H), np.int64)
    dash_syn, dash_mem = np.zeros(H, np.int64), np.zeros(H, np.int64)
    threshold = np.zeros(H, np.int64)
    layers: list[HiddenLayer] = []
    first = 0
    for k, (r, dm) in enumerate(zip(reads, lams)):
        ds = dash_of(r.alpha)
        a_eff = leak_of(ds)
        unit = 1.0 / enc.levels if k == 0 else 1.0
        row_max = np.abs(r.w).max(1) * unit
        if r.w_rec is not None:
            row_max = np.maximum(row_max, np.abs(r.w_rec).max(1))
        row_max = np.maximum(row_max, np.abs(r.b))
        try:
            theta, gain = neuron_gain(row_max, r.v_th, a_eff)
        except ValueError as exc:
            raise ExportError(f"neuron {r.neuron}: {exc}") from None
        ids = slice(first, first + r.w.shape[0])
        w_int = quantise_rows(r.w, gain, unit, a_eff).astype(np.int64)        # (n, inputs)
        if k == 0:
            cols = w_int.T
            if enc.split_sign:
                cols = np.stack([cols, -cols], 1).reshape(-1, cols.shape[1])
            w_in[:enc.channels, ids] = cols
        else:
            w_rec[layers[-1].ids, ids] = w_int.T
        if r.w_rec is not None:
            w_rec[ids, ids] = quantise_rows(r.w_rec, gain, 1.0, a_eff).astype(np.int64).T
        bias_ch = None
        if k in bias_layers:
            bias_ch = enc.channels + bias_layers.index(k)
            w_in[bias_ch, ids] = quantise_rows(r.b[:, None], gain, 1.0, a_eff).astype(np.int64)[:, 0]
        dash_syn[ids], dash_mem[ids], threshold[ids] = ds, dm, theta
        layers.append(HiddenLayer(r.synapse, r.neuron, r.recurrent, first, r.w.shape[0], k, leak_of(ds),
                                  leak_of(dm), r.v_th, gain, bias_ch))
        first += r.w.shape[0]
    threshold = threshold + 1
    g_out = readout_gain(w_out, T)
    w_o = np.zeros((H, K), np.int64)
    w_o[layers[-1].ids] = np.clip(np.round(w_out * g_out[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64).T
    spec = XyloSpec(w_in, w_rec, w_o, dash_mem, dash_syn, np.full(K, OUTPUT_DASH_MEM), np.full(K, OUTPUT_DASH_SYN),
                    threshold, np.full(K, THRESHOLD_MAX))
    info = {"max_recurrent_fan_out": int((w_rec != 0).sum(1).max()) if H else 0,
            "lam_trained": [r.lam.tolist() for r in reads], "alpha_trained": [r.alpha.tolist() for r in reads],
            "weight_bits_used": [int(np.ceil(np.log2(max(int(np.abs(m).max()), 1) + 1))) + 1
                                 for m in (w_in, w_rec, w_o)]}
    return XyloNet(CHIPS[chosen], spec, layers, enc, ro_name, g_out, b_out, T, fits, info)
