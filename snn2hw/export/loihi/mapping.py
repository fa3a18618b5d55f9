"""NIR graph -> the integer network Loihi runs (targets.md A; risks 2 and 7).

The graph must be a chain: input, then blocks ``[pool] [flatten] synapse
neuron``, then the readout ``[pool] [flatten] Affine``. Each block becomes one
netx CUBA block with iDecay = 4096 (the current keeps no memory), so

    v[t] = trunc0(v[t-1] (1 - vDecay/4096)) + 64 (a[t] + bias)

is our ``v <- lam v + c`` with lam_eff = 1 - vDecay/4096 and a hard reset.

Scale per block (``loihi_grid``): spikes are scale-free, so each block has its
own gain G (integer units per float unit of current). The input unit of a
block has the float value g (1 for spikes, 1/Q for the quantised input,
times 1/k^d after avg pooling), the weight scale is S = g G, and

    W_int = clip(2 round(W S / 2), -256, 254)      even 8-bit, as slayer writes
    bias  = round(b G)                             |bias| <= 4095 (13-bit)
    vThMant = V_th G, an integer: G is chosen so   (<= 131071, 17-bit)

that ``v > V_th`` maps to ``v_int > vThMant << 6`` with no threshold
rounding at all (``>=`` gets vThMant - 1). G starts at 254/(g max|W|) and is
lowered only if the bias or threshold registers demand it.

Pooling (avg or sum, kernel = stride = k, no padding) between a neuron and
the next synapse is fused into that synapse: kernel (x) ones(k, k), stride
and padding times k (a dense layer gets its columns repeated). The integer
kernel is then W_int (x) ones, and avg pooling's 1/k^d moves into g. This is
exact when the pooled sizes divide by k; otherwise it is refused.

Graphs that are not chains (residual blocks, recurrence) go to ``graph.py`` instead.
Refused (ExportError before anything is written): soft reset, max pooling, pooling of currents, fan-in whose worst-case
synaptic sum reaches 2^17 (u would wrap at 24 bits), and node kinds netx
cannot run. Neurons are read by ``nir_reading`` (the producer's meaning, every
parameter finite); what a CUBA neuron cannot do (reset by subtraction, a
reset value other than 0, several spikes per step, a membrane clip) is refused,
or with ``approximate`` replaced by the nearest CUBA neuron (reset to 0, one
spike, no clip) and listed in ``LoihiNet.approximations``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ExportError
from ..from_nir import _pair, chain_order
from ..nir_reading import check_weights, producer_of, read_input, read_neuron
from .emulator import DECAY_UNIT, IntLayer

WEIGHT_MAX = 254          # even 8-bit weights in [-256, 254]
BIAS_MAX = 4095           # 13-bit signed bias mantissa
VTH_MAX = 131071          # 17-bit threshold mantissa
A_LIMIT = 1 << 17         # |a| and |a + bias| must stay below: a << 6 is 24-bit
INPUT_LEVELS = 16         # direct-encoded input: x_int = round(16 x), graded spikes
INPUT_RANGE = (0.0, 1.0)  # assumed input range for the fan-in bound (metadata may override)


@dataclass
class Grid:
    """One block's integers and scales."""

    weight: np.ndarray
    bias: np.ndarray
    vth: int
    gain: float        # G: integer units per float unit of current
    weight_scale: float  # S = g G


def loihi_grid(w: np.ndarray, b: np.ndarray | None, v_th: float, input_unit: float = 1.0,
               spike: str = ">") -> Grid:
    """The Loihi integers of one block (module docstring): W_int, bias, vThMant and G.

    ``input_unit`` is g, the float value of one input unit. Raises ValueError when
    the threshold cannot be represented (V_th <= 0).
    """
    w = np.asarray(w, np.float64)
    b = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b)) and np.isfinite(v_th)):
        raise ValueError("weights, biases and the threshold must be finite numbers (the integer "
                         "registers have no NaN or inf)")
    if v_th <= 0:
        raise ValueError(f"threshold must be > 0, got {v_th}")
    wmax = float(np.abs(w).max())
    g_max = WEIGHT_MAX / (input_unit * wmax) if wmax > 0 else VTH_MAX / v_th
    bmax = float(np.abs(b).max()) if b.size else 0.0
    if bmax > 0:
        g_max = min(g_max, BIAS_MAX / bmax)
    g_max = min(g_max, VTH_MAX / v_th)
    theta = max(int(np.floor(v_th * g_max * (1 + 1e-12))), 1)
    gain = theta / v_th
    scale = gain * input_unit
    w_int = quantise_weight(w, scale).astype(np.int64)
    b_int = quantise_bias(b, gain).astype(np.int64)
    return Grid(w_int, b_int, theta - 1 if spike == ">=" else theta, gain, scale)


# The integer rounding, written once: numpy arrays with np.round for the export,
# torch tensors with a straight-through round for QAT (snn2hw.train.qat).
def quantise_weight(w: Any, scale: float, rnd: Any = np.round) -> Any:
    """Even weights in [-256, 254]: ``clip(2 round(w S / 2))``."""
    return (2 * rnd(w * scale / 2)).clip(-256, WEIGHT_MAX)


def quantise_bias(b: Any, gain: float, rnd: Any = np.round) -> Any:
    """13-bit bias mantissa: ``clip(round(b G))``."""
    return rnd(b * gain).clip(-BIAS_MAX, BIAS_MAX)


def lam_effective(lam: float) -> float:
    """The leak Lava applies: ``1 - vDecay / 4096``."""
    return 1.0 - v_decay_of(lam) / DECAY_UNIT


def v_decay_of(lam: float) -> int:
    """vDecay = round(4096 (1 - lam)); lam_eff = 1 - vDecay/4096."""
    return int(round(DECAY_UNIT * (1.0 - lam)))


@dataclass
class Block:
    """A synapse + neuron pair read from the graph, before quantisation."""

    synapse: str
    neuron: str
    kind: str                              # dense | conv
    weight: np.ndarray                     # float, (O, I) or (O, I, kH, kW), unpooled input
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, ...]              # the synapse's input shape after pooling
    pool: tuple[int, float] = (1, 1.0)     # (k, value scale: 1/k^d avg, 1 sum) fused in
    pool_dims: int = 2
    lam: float = 1.0
    v_th: float = 1.0
    spike: str = ">"
    out_shape: tuple[int, ...] = ()


@dataclass
class Readout:
    weight: np.ndarray                     # (K, features of the last block, unpooled)
    bias: np.ndarray
    name: str = ""


@dataclass
class LoihiNet:
    """The integer network and what the host does around it."""

    layers: list[IntLayer]
    neuron_names: list[str]
    input_shape: tuple[int, ...]           # as fed to netx (dense input flattened)
    input_levels: int
    input_range: tuple[float, float]
    readout: Readout
    gains: list[float]
    lams: list[float]
    timesteps: int
    info: dict[str, Any] = field(default_factory=dict)
    approximations: list[str] = field(default_factory=list)   # what --approximate changed

    def quantise_input(self, x: np.ndarray) -> np.ndarray:
        """Float input (..., *model input shape) -> graded integers round(Q clip(x))."""
        lo, hi = self.input_range
        xi = np.round(np.clip(np.asarray(x, np.float64), lo, hi) * self.input_levels).astype(np.int64)
        lead = xi.ndim - len(self.info["model_input_shape"])
        return xi.reshape(xi.shape[:lead] + self.input_shape)

    def input_bits(self) -> int:
        """Message bits of the graded input (sign bit included)."""
        lo, hi = (round(v * self.input_levels) for v in self.input_range)
        return max(int(max(abs(lo), abs(hi))).bit_length() + 1, 2)


def _meta(node: Any) -> dict:
    return dict(getattr(node, "metadata", None) or {})


def _chain(graph: Any) -> list[str]:
    """Node names from the input to the output; refuses anything that branches."""
    return chain_order(graph, why="netx 0.6 runs only chains (no add/concat)",
                       fix="train a plain --model mlp or --model conv for Loihi")


def _neuron_params(name: str, node: Any, meta: dict, producer: str, approximate: bool,
                   approximations: list[str]) -> tuple[float, float, str, float]:
    """(lam, V_th, spike rule, input gain) of a LIF / IF node (``nir_reading``), or refuse;
    with ``approximate``, what CUBA lacks is replaced and recorded in ``approximations``."""
    rd = read_neuron(name, node, meta, producer)
    missing = rd.differences()
    if missing and not approximate:
        said = _meta(node).get("reset", meta.get("reset"))
        fix = ("retrain with --reset hard" if rd.reset == "soft" and said is not None
               else "if the writer meant a reset to 0 (snnTorch does), pass --producer snntorch or add "
                    "metadata reset='zero'" if rd.reset == "soft" and len(missing) == 1
               else "use a graph of snn2hw's neuron")
        raise ExportError(f"neuron {name}: {', '.join(missing)}, which no Lava CUBA neuron has (it fires "
                          f"once and resets v to 0). Fix: {fix}, or pass --approximate to deploy the "
                          "nearest CUBA neuron and measure the loss")
    if missing:
        approximations.append(f"neuron {name}: {', '.join(missing)} -> one spike per step, reset to 0, "
                              "no clip (Lava CUBA)")
    lams, v_th, gain = (np.unique(np.asarray(a, np.float64).round(12)) for a in (rd.lam, rd.v_th, rd.gain))
    if v_th.size != 1:
        raise ExportError(f"neuron {name}: thresholds differ per neuron; netx has one vThMant per layer")
    if lams.size != 1:
        raise ExportError(f"neuron {name}: leaks differ per neuron; netx has one vDecay per layer")
    if gain.size != 1:
        raise ExportError(f"neuron {name}: input gains differ per neuron; netx has one per layer")
    if np.any(rd.drive != 0):
        raise ExportError(f"neuron {name}: v_leak != 0 has no CUBA equivalent. Fix: v_leak = 0")
    return float(lams[0]), float(v_th[0]), ">=" if rd.spike_geq else ">", float(gain[0])


def _pool_of(name: str, node: Any) -> tuple[int, float, int]:
    """(k, value scale, dims) of a pooling node; refuses what cannot be fused."""
    kind = type(node).__name__
    if kind == "Conv1d":  # to_nir writes 1-D pooling as a depthwise Conv1d, metadata {"pool": mode}
        w = np.asarray(node.weight)
        k = int(w.shape[-1])
        if _pair(node.stride)[0] != k or _pair(node.padding)[0] != 0:
            raise ExportError(f"node {name}: 1-D pooling with stride != kernel cannot be fused")
        return k, float(w.flat[0]), 1
    ks, st, pad = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
    if ks[0] != ks[1] or ks != st or pad != (0, 0):
        raise ExportError(f"node {name}: {kind} kernel {ks} stride {st} padding {pad}; only square "
                          "kernel = stride pooling without padding fuses into the next layer. Fix: "
                          "retrain with --pool avg (k=2) or --pool none")
    return ks[0], (1.0 / ks[0] ** 2 if kind == "AvgPool2d" else 1.0), 2


def _as2d(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], 1, shape[1]) if len(shape) == 2 else shape


def _conv_geometry(name: str, node: Any, in_shape: tuple[int, ...]) -> tuple:
    """(weight OIHW, stride, padding, out_shape) with Conv1d read as Conv2d of height 1."""
    w = np.asarray(node.weight, np.float64)
    one_d = type(node).__name__ == "Conv1d"
    if _pair(node.dilation) != (1, 1) or int(node.groups) != 1:
        raise ExportError(f"conv {name}: dilation/groups other than 1 are not supported by this exporter")
    if one_d:
        w = w[:, :, None, :]
    k = w.shape[2:]
    pad = node.padding
    if isinstance(pad, str):
        if pad == "valid":
            pad = (0, 0)
        elif pad == "same" and _pair(node.stride) == (1, 1) and all(x % 2 for x in k):
            pad = (k[0] // 2, k[1] // 2)
        else:
            raise ExportError(f"conv {name}: padding {pad!r} with this kernel/stride has no netx form")
    stride, padding = _pair(node.stride), _pair(pad)
    if one_d:
        stride, padding = (1, stride[0]), (0, padding[0])
    c, h, wd = _as2d(in_shape)
    if w.shape[1] != c:
        raise ExportError(f"conv {name}: weight expects {w.shape[1]} input channels, input has {c}")
    oh = (h + 2 * padding[0] - k[0]) // stride[0] + 1
    ow = (wd + 2 * padding[1] - k[1]) // stride[1] + 1
    return w, stride, padding, (int(w.shape[0]), int(oh), int(ow))


def read_blocks(graph: Any, approximate: bool = False, approximations: list[str] | None = None
                ) -> tuple[list[Block], Readout, tuple[int, ...]]:
    """Walk the chain into blocks and the readout; every refusal happens here.
    ``approximate``: see the module docstring; what it changed is appended to ``approximations``."""
    meta = dict(graph.metadata or {})
    producer = producer_of(graph)
    approximations = [] if approximations is None else approximations
    order = _chain(graph)
    nodes = graph.nodes
    shape = read_input(graph).shape
    input_shape = shape
    blocks: list[Block] = []
    pool_k, pool_scale, pool_dims = 1, 1.0, 2
    unflat: tuple[int, ...] | None = None   # the shape before a Flatten (for pool fusion)
    pending: tuple | None = None   # (name, kind, w, b, stride, padding, in_shape, out_shape)
    for name in order[1:]:
        node = nodes[name]
        kind = type(node).__name__
        is_pool = kind in ("AvgPool2d", "SumPool2d") or (kind == "Conv1d" and "pool" in _meta(node))
        if kind == "Output":
            break
        if is_pool:
            if pending is not None:
                raise ExportError(f"node {name}: pooling of currents (between synapse {pending[0]} and "
                                  "its neuron) cannot be fused into 8-bit weights. Fix: retrain with "
                                  "carrier=spike or --pool none")
            k, sc, dims = _pool_of(name, node)
            spatial = shape[1:]
            if any(s % k for s in spatial):
                raise ExportError(f"node {name}: pooling by {k} of size {spatial} is not exact when "
                                  "fused (netx cannot crop). Fix: use input sizes divisible by the pooling")
            shape = (shape[0],) + tuple(s // k for s in spatial)
            pool_k, pool_scale, pool_dims = pool_k * k, pool_scale * sc, dims
        elif kind == "Flatten":
            unflat = unflat or shape
            shape = (int(np.prod(shape)),)
        elif kind in ("Affine", "Linear", "Conv1d", "Conv2d"):
            check_weights(name, node)
            if pending is not None:
                raise ExportError(f"node {name}: two synapses in a row ({pending[0]}, {name}) without a neuron")
            if kind in ("Affine", "Linear"):
                w = np.asarray(node.weight, np.float64)
                b = np.asarray(getattr(node, "bias", np.zeros(w.shape[0])), np.float64)
                pending = (name, "dense", w, b, (1, 1), (0, 0), unflat or shape, (int(w.shape[0]),))
            else:
                w, st, pd, out = _conv_geometry(name, node, shape)
                pending = (name, "conv", w, np.asarray(node.bias, np.float64), st, pd, shape, out)
            shape = pending[7] if kind in ("Affine", "Linear") or len(shape) == 3 else (pending[7][0], pending[7][2])
        elif kind in ("LIF", "IF"):
            if pending is None:
                raise ExportError(f"neuron {name}: no synapse before it; netx blocks are synapse + neuron")
            lam, v_th, spike, gain = _neuron_params(name, node, meta, producer, approximate, approximations)
            syn, skind, w, b, st, pd, in_shape, out = pending
            blocks.append(Block(syn, name, skind, w * gain, b * gain, st, pd, in_shape,
                                (pool_k, pool_scale), pool_dims, lam, v_th, spike, out))
            pending, pool_k, pool_scale, unflat = None, 1, 1.0, None
        else:
            raise ExportError(f"node {name}: {kind} has no netx 0.6 equivalent (supported: Affine, "
                              "Linear, Conv1d, Conv2d, LIF, IF, AvgPool2d, SumPool2d, Flatten)")
    if pending is None or pending[1] != "dense":
        raise ExportError("the graph does not end with the readout Affine (non-spiking last layer)")
    if not blocks:
        raise ExportError("the graph has no spiking layer for Loihi to run")
    readout = Readout(_fuse_dense_pool(pending[2], pending[6], pool_k, pool_scale, pool_dims),
                      pending[3], pending[0])
    return blocks, readout, input_shape


def _fuse_dense_pool(w: np.ndarray, in_shape: tuple[int, ...], k: int, scale: float,
                     dims: int) -> np.ndarray:
    """Dense weights over the pooled, flattened input -> weights over the unpooled input."""
    if k == 1:
        return w * scale
    full = w.reshape((w.shape[0],) + _as2d(in_shape))
    if dims == 2:
        full = full.repeat(k, axis=2)
    full = full.repeat(k, axis=3)
    return full.reshape(w.shape[0], -1) * scale


def _fuse_conv_pool(w: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], k: int,
                    dims: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """conv(pool_k(x)) == conv'(x): kernel (x) ones(k, k), stride and padding times k."""
    if k == 1:
        return w, stride, padding
    kh = k if dims == 2 else 1
    w = w.repeat(kh, axis=2).repeat(k, axis=3)
    return w, (stride[0] * kh, stride[1] * k), (padding[0] * kh, padding[1] * k)


def fan_in_bound(layer: IntLayer, lo: int, hi: int) -> int:
    """Worst case of max(|a|, |a + bias|) over inputs in [lo, hi] per element."""
    w = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.int64)
    top = np.maximum(w * hi, w * lo).sum(1)
    bot = np.minimum(w * hi, w * lo).sum(1)
    b = layer.bias.astype(np.int64)
    return int(max(np.abs(top).max(), np.abs(bot).max(), np.abs(top + b).max(), np.abs(bot + b).max()))


def build_loihi_net(graph: Any, input_levels: int | None = None,
                    input_range: tuple[float, float] | None = None, approximate: bool = False) -> LoihiNet:
    """The quantised integer network of ``graph`` (module docstring); raises ExportError.
    ``approximate``: deploy the nearest CUBA neuron where the graph's cannot run exactly."""
    meta = dict(graph.metadata or {})
    temporal = meta.get("input_encoding") == "temporal"
    levels = int(input_levels or meta.get("loihi_input_levels", 1 if temporal else INPUT_LEVELS))
    rng = tuple(input_range or meta.get("input_range", INPUT_RANGE))
    approximations: list[str] = []
    blocks, readout, model_in = read_blocks(graph, approximate, approximations)
    layers, gains = [], []
    lo, hi = (int(round(v * levels)) for v in rng)
    unit = 1.0 / levels
    for i, blk in enumerate(blocks):
        g = (unit if i == 0 else 1.0) * blk.pool[1]
        try:
            q = loihi_grid(blk.weight, blk.bias, blk.v_th, g, blk.spike)
        except ValueError as exc:
            raise ExportError(f"layer {blk.synapse}: {exc}") from None
        if blk.kind == "conv":
            w, st, pd = _fuse_conv_pool(q.weight, blk.stride, blk.padding, blk.pool[0], blk.pool_dims)
        else:
            w, st, pd = _fuse_dense_pool(q.weight, blk.in_shape, blk.pool[0], 1.0, blk.pool_dims), (1, 1), (0, 0)
        out = blk.out_shape if blk.kind == "dense" else _as2d(blk.out_shape)
        layer = IntLayer(blk.kind, w.astype(np.int64), q.bias, q.vth, v_decay_of(blk.lam), tuple(out),
                         stride=st, padding=pd, name=blk.synapse)
        bound = fan_in_bound(layer, lo, hi) if i == 0 else fan_in_bound(layer, 0, 1)
        if bound >= A_LIMIT:
            raise ExportError(
                f"layer {blk.synapse}: worst-case synaptic input {bound} reaches 2^17 = {A_LIMIT}; Lava's "
                "24-bit current u would wrap silently. Fix: fewer inputs per neuron (smaller "
                "kernel/channels/width), weight decay, or fewer input levels for the first layer")
        layers.append(layer)
        gains.append(q.gain)
    first = layers[0]
    in_shape = _as2d(model_in) if first.kind == "conv" else (int(np.prod(model_in)),)
    info = {"model_input_shape": tuple(model_in),
            "weight_bits_used": [round(float(np.log2(max(np.abs(l.weight).max(), 1)) + 1), 2) for l in layers]}
    return LoihiNet(layers, [b.neuron for b in blocks], in_shape, levels, (float(rng[0]), float(rng[1])),
                    readout, gains, [b.lam for b in blocks], int(meta.get("timesteps", 0) or 0), info,
                    approximations)
