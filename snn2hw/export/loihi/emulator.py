"""A numpy integer emulator of Lava's fixed-point CUBA blocks (targets.md A.2).

It predicts, spike for spike, what ``lava.lib.dl.netx`` runs in
``Loihi2SimCfg(select_tag='fixed_pt')`` (``PyLifModelBitAcc``,
``PyLifResetModelBitAcc``, ``PyDenseModelBitAcc``, ``PyConvModel``). Per step,
for every neuron of a block, in this order:

    a      = sum_j W_int[i, j] * s_in[j]           (synapse; integers)
    u      = wrap24(trunc0(u * (4096 - iDecay) / 4096) + (a << 6))
    v      = sat24(trunc0(v * (4096 - vDecay) / 4096) + u + (bias << 6))
    s      = v > (vThMant << 6)                     (strict)
    v[s]   = 0                                      (hard reset; u is not reset)

``trunc0`` rounds toward zero; ``wrap24`` wraps u into the signed 24-bit range
(values above 2^23 lose 2^24, values at or below -2^23 gain 2^24, as Lava
does); ``sat24`` clips v to +-(2^23 - 1).

Two ways to run it:

* ``run_samples``: each sample from zero state, no latency (the semantics the
  float model has); this is what Lava computes for sample n once the stream
  layout below is undone.
* ``run_stream``: Lava's own timeline on a stream of frames: 1 step of latency
  per block (a synapse sends at step t what it accumulated at t-1) and
  ``LIFReset`` zeroing u and v of block k at the 1-based steps t with
  ``t % R == (reset_offset + 1 + k) % R``.

``make_stream`` / ``unstream`` lay N samples of T frames end to end with
``R = T`` and ``reset_offset = 1``: block k then resets exactly at the step it
processes frame 0 of a sample, so Lava's stream equals ``run_samples``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

UV_MAX = 1 << 23          # u and v are signed 24-bit
SHIFT = 6                 # activation, bias (bias_exp) and threshold MSB alignment
DECAY_UNIT = 4096         # decays are 12-bit fractions


@dataclass
class IntLayer:
    """One netx block (synapse + CUBA neurons) with every value an integer.

    ``weight`` is (out, in) for dense (input flattened in PyTorch C, H, W
    order) or PyTorch OIHW cross-correlation for conv. ``out_shape`` is
    (out,) or (C, H, W). ``name`` is the source layer it came from.
    """

    kind: str                       # "dense" | "conv"
    weight: np.ndarray
    bias: np.ndarray                # (out,) or (C,); zeros if the layer has none
    vth: int                        # vThMant
    v_decay: int                    # vDecay, 0..4096
    out_shape: tuple[int, ...]
    i_decay: int = DECAY_UNIT       # iDecay; 4096 = the current keeps no memory
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    name: str = ""


def trunc_decay(x: np.ndarray, decay: int) -> np.ndarray:
    """trunc0(x * (4096 - decay) / 4096), computed as Lava does (|x| >> 12, sign restored)."""
    prod = x.astype(np.int64) * (DECAY_UNIT - int(decay))
    return np.sign(prod) * (np.abs(prod) >> 12)


def _conv(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """Integer cross-correlation, x (B, I, H, W), w (O, I, kH, kW) -> (B, O, H', W')."""
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))
    win = win[:, :, ::stride[0], ::stride[1]]
    return np.einsum("bihwyx,oiyx->bohw", win, w, optimize=True)


def synapse(layer: IntLayer, s: np.ndarray) -> np.ndarray:
    """Synaptic input a (B, *out_shape), int64, of spikes or graded input s (B, *in_shape)."""
    s = s.astype(np.int64)
    w = layer.weight.astype(np.int64)
    if layer.kind == "dense":
        return s.reshape(len(s), -1) @ w.T
    return _conv(s, w, layer.stride, layer.padding)


def cuba_step(u: np.ndarray, v: np.ndarray, a: np.ndarray, layer: IntLayer,
              bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CUBA update; returns (u, v, s) with v already reset where s."""
    u = trunc_decay(u, layer.i_decay) + (a << SHIFT)
    u = np.where(u > UV_MAX, u - 2 * UV_MAX, u)
    u = np.where(u <= -UV_MAX, u + 2 * UV_MAX, u)
    v = trunc_decay(v, layer.v_decay) + u + (bias << SHIFT)
    v = np.clip(v, -UV_MAX + 1, UV_MAX - 1)
    s = v > (int(layer.vth) << SHIFT)
    return u, np.where(s, 0, v), s


def _bias_view(layer: IntLayer) -> np.ndarray:
    b = layer.bias.astype(np.int64)
    return b.reshape((-1,) + (1,) * (len(layer.out_shape) - 1))


def run_samples(layers: list[IntLayer], x: np.ndarray) -> list[np.ndarray]:
    """Spikes (T, B, *shape) of every block for integer input x (T, B, *in_shape),
    every sample from zero state, without latency."""
    T, B = x.shape[:2]
    spikes, s = [], x
    for layer in layers:
        a = synapse(layer, s.reshape((T * B,) + s.shape[2:])).reshape((T, B) + layer.out_shape)
        bias = _bias_view(layer)
        u = v = np.zeros((B,) + layer.out_shape, np.int64)
        out = np.zeros((T, B) + layer.out_shape, np.int8)
        for t in range(T):
            u, v, st = cuba_step(u, v, a[t], layer, bias)
            out[t] = st
        spikes.append(out)
        s = out
    return spikes


def run_stream(layers: list[IntLayer], stream: np.ndarray, reset_interval: int = 0,
               reset_offset: int = 0) -> list[np.ndarray]:
    """Lava's timeline: spikes (S, *shape) of every block for a stream (S, *in_shape),
    one frame per step, with 1 step of latency per block and netx's LIFReset."""
    S = stream.shape[0]
    spikes, s = [], stream
    for k, layer in enumerate(layers):
        a = np.zeros((S,) + layer.out_shape, np.int64)
        a[1:] = synapse(layer, s[:-1])      # sent one step after it was accumulated
        bias = _bias_view(layer)
        u = v = np.zeros(layer.out_shape, np.int64)
        out = np.zeros((S,) + layer.out_shape, np.int8)
        phase = (reset_offset + 1 + k) % reset_interval if reset_interval else None
        for i in range(S):
            if phase is not None and (i + 1) % reset_interval == phase:
                u = v = np.zeros(layer.out_shape, np.int64)
            u, v, st = cuba_step(u, v, a[i], layer, bias)
            out[i] = st
        spikes.append(out)
        s = out
    return spikes


STREAM_RESET_OFFSET = 1  # netx reset_offset that aligns block resets with frame 0


def make_stream(x: np.ndarray, num_blocks: int) -> tuple[np.ndarray, int, int]:
    """Lay samples x (T, N, *in_shape) end to end: (stream, reset_interval, reset_offset).

    Frame j of sample n goes to 0-based step n*T + j; ``num_blocks`` zero
    steps at the end let the last sample leave the last block.
    """
    T, N = x.shape[:2]
    body = np.swapaxes(x, 0, 1).reshape((N * T,) + x.shape[2:])
    tail = np.zeros((num_blocks,) + x.shape[2:], x.dtype)
    return np.concatenate([body, tail]), T, STREAM_RESET_OFFSET


def unstream(spikes: np.ndarray, block: int, T: int, N: int) -> np.ndarray:
    """Block ``block``'s stream spikes (S, *shape) -> (T, N, *shape): frame j of
    sample n leaves block k at 0-based step n*T + j + k + 1."""
    start = block + 1
    body = spikes[start:start + N * T]
    return np.swapaxes(body.reshape((N, T) + spikes.shape[1:]), 0, 1)


# ---- graphs (graph.LoihiGraph: Lava LIF processes joined by Dense / DelayDense) ----

def _graph_step(u: np.ndarray, v: np.ndarray, a: np.ndarray, du: int, dv: int, vth: int,
                bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layer = IntLayer("dense", np.zeros((0, 0)), bias, vth, dv, (len(bias),), i_decay=du)
    return cuba_step(u, v, a, layer, bias.astype(np.int64))


def run_graph_stream(net: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Lava's timeline of a ``graph.LoihiGraph`` for integer input x (T, B, input_size):
    spikes (S, B, size) per neuron, S = T + depth, every sample from zero state.

    Step i (0-based): the input port emits frame x[i] (zeros after T); a connection
    from src to dst with ``delay`` d delivers ``W s_src[i - 1 - d]`` to dst (Dense sends
    at step i what it received at i - 1; DelayDense d steps later still); each LIF sums
    what its connections deliver and runs ``cuba_step``. Recurrent edges are just edges.
    """
    T, B = x.shape[:2]
    S = T + net.depth
    spikes: dict[str, np.ndarray] = {"input": np.zeros((S, B, x.shape[2]), np.int64)}
    spikes["input"][:T] = x
    for n in net.neurons:
        spikes[n.name] = np.zeros((S, B, n.size), np.int8)
    state = {n.name: (np.zeros((B, n.size), np.int64), np.zeros((B, n.size), np.int64)) for n in net.neurons}
    weights = [(e.src, e.dst, e.weight.astype(np.int64), e.delay) for e in net.edges]
    for i in range(S):
        a = {n.name: np.zeros((B, n.size), np.int64) for n in net.neurons}
        for src, dst, w, d in weights:
            j = i - 1 - d
            if j >= 0:
                a[dst] += spikes[src][j].astype(np.int64) @ w.T
        for n in net.neurons:
            u, v = state[n.name]
            u, v, s = _graph_step(u, v, a[n.name], n.du, n.dv, n.vth, n.bias)
            state[n.name] = (u, v)
            spikes[n.name][i] = s
    del spikes["input"]
    return spikes


def run_graph(net: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Spikes (T, B, size) per neuron aligned with the float model: neuron n's Lava step
    i is frame i - depth(n) (``run_graph_stream``)."""
    T = x.shape[0]
    stream = run_graph_stream(net, x)
    return {n.name: stream[n.name][n.depth:n.depth + T] for n in net.neurons}
