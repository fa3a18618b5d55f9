"""What a Speck (DynapCNN) chip can run, checked on the NIR graph before anything is written.

The chip is 9 cores; each core is one ``Conv -> IAF -> SumPool`` layer (targets.md B.2):

* neurons are integrate-and-fire (no multiplicative leak: lam must be 1);
* square kernels <= 16, stride in {1, 2, 4, 8}, padding 0..7, <= 1024 features;
  a ``Linear`` layer is a conv whose kernel is the whole (H, W) input, so it needs H == W;
* pooling (sum, square, stride = kernel, 1/2/4) is applied on the way to the next core;
  average pooling becomes sum pooling with the next layer's weights divided by k^2;
* memory per core (sinabs ``DynapcnnLayer.memory_summary``):
      kernel = C_in * 2^(ceil(log2(kH*kW)) + ceil(log2 C_out))
      neuron = C_out * 2^(ceil(log2 H_out) + ceil(log2 W_out))     (conv output, before pooling)
      bias   = C_out
  against the per-core limits in ``CORE_LIMITS``; layers are assigned to cores by a
  bipartite matching (any assignment where every layer fits its core);
* <= 9 layers, input <= 128 x 128; a chain, or a chain with identity residual blocks
  (``residual.py``: the two spike streams join through sinabs' ``Merge`` on disjoint channel
  ranges, and the merged core's kernel is ``[I | W2]``); conv shortcuts and other branching
  are refused; a core sends its spikes to at most 2 cores (``residual.MAX_DESTINATIONS``);
* neurons are read by ``nir_reading`` (the producer's meaning). The chip fires on
  ``v >= threshold_high`` (so both ``>`` and ``>=`` are exact on integers), resets to 0 or
  by subtraction and clips at ``threshold_low``; it cannot reset to another value or, as
  we map it, emit several spikes per step: refused, or with ``approximate`` replaced by
  one spike and a reset to 0 (listed in ``SpeckPlan.approximations``).

The last weight layer without a neuron after it (our non-spiking readout, the mean over T of
its current) is computed on the host from the spike counts the chip sends out:
``logits = W_r . pool(mean_t s) + b_r`` equals the mean of the per-step readout currents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import nir
import numpy as np

from ...errors import ExportError
from ..from_nir import _pair, chain_order, graph_plan
from ..nir_reading import check_weights, producer_of, read_input, read_neuron
from . import residual

class CoreLimits(NamedTuple):
    """The memories of one core, in words (sinabs ``chips/dynapcnn.py`` get_constraints)."""

    kernel_memory: int
    neuron_memory: int
    bias_memory: int

    def fits(self, memory: dict[str, int]) -> bool:
        """Whether a layer needing ``memory`` (``layer_memory``) fits this core."""
        return (memory["kernel"] <= self.kernel_memory and memory["neuron"] <= self.neuron_memory
                and memory["bias"] <= self.bias_memory)


CORE_LIMITS: tuple[CoreLimits, ...] = (
    CoreLimits(16 * 1024, 64 * 1024, 1024),
    CoreLimits(16 * 1024, 64 * 1024, 1024),
    CoreLimits(16 * 1024, 64 * 1024, 1024),
    CoreLimits(32 * 1024, 32 * 1024, 1024),
    CoreLimits(32 * 1024, 32 * 1024, 1024),
    CoreLimits(64 * 1024, 16 * 1024, 1024),
    CoreLimits(64 * 1024, 16 * 1024, 1024),
    CoreLimits(16 * 1024, 16 * 1024, 1024),
    CoreLimits(16 * 1024, 16 * 1024, 1024),
)
MAX_KERNEL = 16
MAX_FEATURES = 1024
STRIDES = (1, 2, 4, 8)
MAX_PADDING = 7
POOLS = (1, 2, 4)
MAX_INPUT = 128
MAX_OUTPUT = 64


@dataclass
class SpeckLayer:
    """One chip layer (a core): conv (or linear-as-conv) -> IAF -> sum pool."""

    index: int                       # position in the chain of chip layers
    weight_node: str                 # NIR node names, for messages and spike keys
    neuron_node: str
    linear: bool                     # an Affine node (a conv with kernel (H, W) on chip)
    weight: np.ndarray               # (C_out, C_in, k, k), float32, 1/k^2 of an avg pool folded in
    bias: np.ndarray                 # (C_out,)
    stride: int
    padding: tuple[int, int]
    in_shape: tuple[int, int, int]   # (C, H, W)
    neuron_shape: tuple[int, int, int]
    pool: int                        # sum pooling applied to the spikes (1: none)
    v_th: float
    reset: str                       # "hard" | "soft"
    spike_geq: bool = False          # fires on v >= V_th (the chip's own rule), else v > V_th
    v_min: float | None = None       # the graph's membrane clip (threshold_low), None: ours
    sources: tuple[int, ...] = ()    # the cores whose spikes it receives (Merge-added); (): the input
    channels: tuple[int, int] | None = None   # (offset, count) of its own output channels, None: all
    parts: list[tuple[int, np.ndarray]] | None = None   # merged core: (source, its kernel) before the merge

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.neuron_shape
        return (c, h // self.pool, w // self.pool)

    @property
    def memory(self) -> dict[str, int]:
        return layer_memory(self.weight.shape, self.neuron_shape)


@dataclass
class SpeckPlan:
    """The chain of chip layers, the host readout and what the check found."""

    input_shape: tuple[int, int, int]
    layers: list[SpeckLayer]
    readout: tuple[np.ndarray, np.ndarray] | None   # host Affine (W, b) on the flattened output
    readout_node: str | None
    timesteps: int
    temporal: bool
    mapping: dict[int, int] = field(default_factory=dict)   # layer index -> core
    warnings: list[str] = field(default_factory=list)
    graph: nir.NIRGraph | None = None   # what it was read from: verify's float sinabs model imports it
    approximations: list[str] = field(default_factory=list)   # what --approximate changed


def _clog2(n: int) -> int:
    """ceil(log2 n) for n >= 1, exactly (integer arithmetic)."""
    return (int(n) - 1).bit_length()


def layer_memory(weight_shape: tuple[int, ...], neuron_shape: tuple[int, int, int]) -> dict[str, int]:
    """Kernel / neuron / bias memory of one core (module docstring formulas)."""
    c_out, c_in, kh, kw = (int(v) for v in weight_shape)
    f, h, w = (int(v) for v in neuron_shape)
    return {"kernel": c_in * 2 ** (_clog2(kh * kw) + _clog2(c_out)),
            "neuron": f * 2 ** (_clog2(h) + _clog2(w)),
            "bias": c_out}


def fitting_cores(memory: dict[str, int]) -> list[int]:
    """Cores whose kernel, neuron and bias memories all hold this layer."""
    return [i for i, core in enumerate(CORE_LIMITS) if core.fits(memory)]


def assign_cores(options: list[list[int]]) -> dict[int, int] | None:
    """A layer -> core assignment where each layer gets one of its options and no core
    is used twice (bipartite matching by augmenting paths); None if none exists."""
    owner: dict[int, int] = {}

    def place(layer: int, seen: set[int]) -> bool:
        free = [c for c in options[layer] if c not in owner]
        for core in free[:1] + [c for c in options[layer] if c in owner]:
            if core in seen:
                continue
            seen.add(core)
            if core not in owner or place(owner[core], seen):
                owner[core] = layer
                return True
        return False

    for layer in range(len(options)):
        if not place(layer, set()):
            return None
    return {layer: core for core, layer in sorted(owner.items(), key=lambda kv: kv[1])}


def chain_nodes(graph: nir.NIRGraph) -> list[str]:
    """Node names from input to output (the hub's ``chain_order``); refuses branches."""
    try:
        return chain_order(graph)
    except ExportError as exc:
        raise ExportError(f"speck: {exc}") from None


def graph_steps(graph: nir.NIRGraph) -> list:
    """The hub's ``graph_plan``: node names and residual blocks ``(body, shortcut, merge)``."""
    try:
        return graph_plan(graph)
    except ExportError as exc:
        raise ExportError(f"speck: {exc}") from None


def _as_chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 1:
        return (shape[0], 1, 1)   # a vector is C channels of 1 x 1 pixels on chip
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2])
    raise ExportError(f"speck: input of shape {shape} is not (C, H, W) or (C,); Speck runs 2-D "
                      "convolutions on (C, H, W) frames: use a 2-D dataset")


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


WEIGHT_NODES = (nir.Conv2d, nir.Affine, nir.Linear)
NEURON_NODES = (nir.IF, nir.LIF)
POOL_NODES = (nir.SumPool2d, nir.AvgPool2d)


def build_plan(graph: nir.NIRGraph, approximate: bool = False) -> SpeckPlan:
    """Read the graph as chip layers; raise ExportError (layer, reason, fix) at the first
    construct Speck cannot run (``approximate``: see the module docstring). Nothing here
    depends on samna.

    Steps, in the order their refusals come: the chain and its input, the cores node by
    node, the host readout, the chip-wide limits, the layer -> core assignment."""
    meta = dict(getattr(graph, "metadata", {}) or {})
    meta.update(producer=producer_of(graph), approximate=approximate, approximations=[])
    steps = graph_steps(graph)
    shape: tuple[int, ...] = read_input(graph).shape
    input_shape = _chip_input(shape)
    layers, trailing = _read_cores(graph, steps[1:], shape, meta)
    readout, readout_node = _host_readout(trailing)
    _check_chip(layers)
    mapping = _map_cores(layers)
    return SpeckPlan(input_shape, layers, readout, readout_node, int(meta.get("timesteps", 1)),
                     meta.get("input_encoding") == "temporal", mapping, _bias_warnings(layers), graph,
                     meta["approximations"])


def _chip_input(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The model input as the chip's (C, H, W) input, within its size."""
    input_shape = _as_chw(shape)
    if input_shape[1] > MAX_INPUT or input_shape[2] > MAX_INPUT:
        raise ExportError(f"speck: input {input_shape[1]}x{input_shape[2]} exceeds the chip's "
                          f"{MAX_INPUT}x{MAX_INPUT}: downsample the input")
    return input_shape


def _read_cores(graph: nir.NIRGraph, steps: list, shape: tuple[int, ...], meta: dict[str, Any]
                ) -> tuple[list[SpeckLayer], dict[str, Any] | None]:
    """The ``steps`` (node names, residual blocks) as chip layers (weight -> neuron -> pooling
    each; a block's sum as a merged core, ``residual.join``), and the weight layer left
    without a neuron at its end (the host readout's candidate) or None."""
    layers: list[SpeckLayer] = []
    pending: dict[str, Any] | None = None    # a weight node waiting for its neuron
    pool_gain = 1.0                          # 1/k^2 of avg pools, folded into the next weights
    last = "input"

    def visit(name: str) -> None:
        nonlocal pending, pool_gain, shape
        node = graph.nodes[name]
        if isinstance(node, (nir.Input, nir.Output)):
            return
        if pending is not None and not isinstance(node, NEURON_NODES):
            _refuse_after_weight(name, node, pending)
        if isinstance(node, WEIGHT_NODES):
            pending = _weight(name, node, shape, pool_gain)
            pool_gain = 1.0
        elif isinstance(node, NEURON_NODES):
            layers.append(_core(name, node, pending, len(layers), meta))
            layers[-1].sources = (len(layers) - 2,) if len(layers) > 1 else ()
            shape = layers[-1].neuron_shape
            pending = None
        elif isinstance(node, POOL_NODES):
            pool_gain /= _add_pool(name, node, layers)
            shape = layers[-1].out_shape
        elif isinstance(node, nir.Flatten):
            pass   # the chip keeps (C, H, W); a linear layer after it reads the map whole
        else:
            raise ExportError(f"speck: layer {name} is a {type(node).__name__}, which Speck cannot run "
                              "(supported: Conv2d, Affine, IF, SumPool2d/AvgPool2d, Flatten)")

    for step in steps:
        if isinstance(step, str):
            visit(step)
            last = step
            continue
        origin = residual.check_block(step, last, layers)
        for name in step[0] + [step[2]]:
            visit(name)
        residual.join(layers, origin, step[2])
        shape, last = layers[-1].neuron_shape, step[2]
    return layers, pending


def _refuse_after_weight(name: str, node: nir.NIRNode, pending: dict[str, Any]) -> None:
    """A weight layer must feed a neuron directly: each core is conv -> IAF -> pool."""
    if isinstance(node, POOL_NODES):
        raise ExportError(f"speck: layer {name} pools before the neuron of {pending['name']}; "
                          "a Speck core pools the spikes after its neuron: retrain with "
                          "--carrier spike")
    raise ExportError(f"speck: layer {name} ({type(node).__name__}) follows {pending['name']} "
                      "without a neuron in between; each Speck core is conv -> IAF")


def _core(name: str, node: nir.NIRNode, pending: dict[str, Any] | None, index: int,
          meta: dict[str, Any]) -> SpeckLayer:
    """The chip layer of the weight layer ``pending`` and its neuron ``node``: an IAF with
    one threshold, the weights within the core's limits (a foreign IF's gain r folded in)."""
    if pending is None:
        raise ExportError(f"speck: neuron layer {name} has no conv/linear layer before it; "
                          "each Speck core is conv -> IAF")
    rd = read_neuron(name, node, meta, meta["producer"])
    gain = _one_value(name, rd.gain, "input gain r", "fold r into the weights before export")
    if np.any(rd.drive != 0):
        raise ExportError(f"speck: layer {name} has v_leak != 0; Speck neurons have no leak potential")
    if gain != 1.0:
        pending["weight"], pending["weight_flat"] = pending["weight"] * gain, pending["weight_flat"] * gain
        pending["bias"] = pending["bias"] * gain
    _check_core(pending)
    lam = float(np.min(np.asarray(rd.lam, dtype=np.float64)))
    if lam != 1.0:
        raise ExportError(f"speck: layer {name} has leak lam={lam:g}; Speck neurons are IAF: "
                          "retrain with --lam 1")
    _approximate(name, rd, meta)
    v_min = None if rd.v_min is None else _one_value(name, rd.v_min, "membrane clips", "")
    return SpeckLayer(index, pending["name"], name, pending["linear"], pending["weight"], pending["bias"],
                      pending["stride"], pending["padding"], pending["in_shape"], pending["out"], 1,
                      _one_value(name, rd.v_th, "thresholds", "export a model with a single V_th per layer"),
                      rd.reset, rd.spike_geq, v_min)


def _one_value(name: str, a: Any, what: str, fix: str) -> float:
    """The single value of a per-layer parameter; a core has one of each."""
    a = np.asarray(a, dtype=np.float64)
    if a.size and not np.all(a == a.flat[0]):
        raise ExportError(f"speck: layer {name} has per-neuron {what}; a Speck core has one"
                          + (f": {fix}" if fix else ""))
    return float(a.flat[0])


def _approximate(name: str, rd: Any, meta: dict[str, Any]) -> None:
    """Refuse what a core cannot run (several spikes per step, a reset to v_reset != 0), or
    with ``meta['approximate']`` record the nearest core neuron (one spike, reset to 0)."""
    missing = [d for d in rd.differences() if "spikes per step" in d or "v_reset" in d]
    if not missing:
        return
    if not meta["approximate"]:
        raise ExportError(f"speck: layer {name}: {', '.join(missing)}, which a Speck core as mapped here "
                          "cannot run (one spike per step, reset to 0 or by subtraction). Fix: pass "
                          "--approximate to deploy the nearest core neuron and measure the loss")
    meta["approximations"].append(f"layer {name}: {', '.join(missing)} -> one spike per step"
                                  + (", reset to 0" if rd.reset == "hard" else ""))


def _add_pool(name: str, node: nir.NIRNode, layers: list[SpeckLayer]) -> int:
    """Pool the spikes of the last core by ``node``; return what the next weights are divided
    by (k^2 for an average pool, which the chip runs as a sum pool; 1 for a sum pool)."""
    k = _pool(name, node, layers)
    layers[-1].pool *= k
    if layers[-1].pool not in POOLS:
        raise ExportError(f"speck: pooling after {layers[-1].neuron_node} adds up to "
                          f"{layers[-1].pool}x{layers[-1].pool}; the chip pools by 1, 2 or 4")
    return k * k if isinstance(node, nir.AvgPool2d) else 1


def _host_readout(trailing: dict[str, Any] | None) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """(W, b) and the node name of the readout the host computes, or (None, None); only a
    linear layer can run there."""
    if trailing is None:
        return None, None
    if not trailing["linear"]:
        raise ExportError(f"speck: the last layer {trailing['name']} is a conv without a neuron; "
                          "only a linear readout can run on the host")
    return (trailing["weight_flat"], trailing["bias"]), trailing["name"]


def _check_chip(layers: list[SpeckLayer]) -> None:
    """The chip-wide limits: at least one and at most one core per layer, the output map size."""
    if not layers:
        raise ExportError("speck: the graph has no spiking layer to put on the chip")
    if len(layers) > len(CORE_LIMITS):
        raise ExportError(f"speck: the network has {len(layers)} spiking layers; the chip has "
                          f"{len(CORE_LIMITS)} cores: use at most {len(CORE_LIMITS)} conv/linear+neuron layers")
    last = layers[-1].neuron_shape
    if last[1] > MAX_OUTPUT or last[2] > MAX_OUTPUT:
        raise ExportError(f"speck: layer {layers[-1].neuron_node} sends a {last[1]}x{last[2]} map to the "
                          f"host; the chip's output is at most {MAX_OUTPUT}x{MAX_OUTPUT}: pool or stride more")


def _map_cores(layers: list[SpeckLayer]) -> dict[int, int]:
    """Layer index -> core: the cores each layer fits, then one core per layer."""
    options = []
    for lay in layers:
        mem = lay.memory
        fits = fitting_cores(mem)
        if not fits:
            best = min(CORE_LIMITS, key=lambda c: max(mem["kernel"] / c.kernel_memory,
                                                      mem["neuron"] / c.neuron_memory))
            raise ExportError(
                f"speck: layer {lay.weight_node} needs kernel memory {mem['kernel']} and neuron memory "
                f"{mem['neuron']} (bias {mem['bias']}); no core holds it (the closest has "
                f"{best.kernel_memory}/{best.neuron_memory}): reduce its channels, kernel or map size")
        options.append(fits)
    mapping = assign_cores(options)
    if mapping is None:
        raise ExportError(f"speck: each of the {len(layers)} layers fits some core ({options}) but no "
                          "assignment gives every layer its own core: shrink the largest layers")
    return mapping


def _bias_warnings(layers: list[SpeckLayer]) -> list[str]:
    """What the chip runs differently from the model without refusing it: biases."""
    biased = [lay.weight_node for lay in layers if np.any(lay.bias != 0)]
    if not biased:
        return []
    return [f"layers {', '.join(biased)} have biases (folded BN offsets); Speck adds a bias "
            "as a leak on its own clock, not once per time step (vendor docs advise against "
            "biases): the simulation adds it per step"]


def _pool(name: str, node: nir.NIRNode, layers: list[SpeckLayer]) -> int:
    if not layers:
        raise ExportError(f"speck: pooling layer {name} comes before any neuron; Speck pools spikes "
                          "after a core's neuron")
    kh, kw = _pair(node.kernel_size)
    sh, sw = _pair(node.stride)
    ph, pw = _pair(node.padding)
    if kh != kw or (sh, sw) != (kh, kw) or (ph, pw) != (0, 0):
        raise ExportError(f"speck: pooling {name} is {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw}; "
                          "Speck pools square, stride = kernel, no padding: use --pool avg/sum with k=2")
    return kh


def _weight(name: str, node: nir.NIRNode, shape: tuple[int, ...], gain: float) -> dict[str, Any]:
    """A conv/affine node as a chip conv: weights (C_out, C_in, k, k), stride, padding, shapes."""
    check_weights(name, node)
    w = np.asarray(node.weight, dtype=np.float32) * np.float32(gain)
    b = np.asarray(getattr(node, "bias", np.zeros(w.shape[0])), dtype=np.float32)
    res: dict[str, Any] = {"name": name, "bias": b, "weight_flat": w.reshape(w.shape[0], -1),
                           "linear": isinstance(node, (nir.Affine, nir.Linear)), "node": node}
    if res["linear"]:
        c, h, wd = _as_chw(tuple(shape))
        if w.shape[1] != c * h * wd:
            raise ExportError(f"speck: linear layer {name} takes {w.shape[1]} inputs but receives "
                              f"{c}x{h}x{wd}")
        res.update(weight=w.reshape(w.shape[0], c, h, wd), stride=1, padding=(0, 0),
                   in_shape=(c, h, wd), out=(w.shape[0], 1, 1))
        return res
    if len(shape) != 3:
        raise ExportError(f"speck: conv layer {name} receives a {len(shape)}-D input; expected (C, H, W)")
    kh, kw = w.shape[2:]
    sh, sw = _pair(node.stride)
    if isinstance(node.padding, str):
        pad = (0, 0) if node.padding == "valid" else (kh // 2, kw // 2)
    else:
        pad = _pair(node.padding)
    c, h, wd = shape
    res.update(weight=w, stride=sh, stride2=(sh, sw), padding=pad, in_shape=(c, h, wd),
               out=(w.shape[0], _conv_out(h, kh, sh, pad[0]), _conv_out(wd, kw, sw, pad[1])))
    return res


def _check_core(res: dict[str, Any]) -> None:
    """The per-core limits of a weight layer that feeds a neuron (runs on the chip)."""
    name, w, node = res["name"], res["weight"], res["node"]
    kh, kw = w.shape[2:]
    if res["linear"] and kh != kw:
        raise ExportError(f"speck: linear layer {name} reads a non-square {kh}x{kw} map (after a "
                          "flatten); Speck runs it as a square-kernel conv: make the map square")
    if not res["linear"]:
        if kh != kw:
            raise ExportError(f"speck: layer {name} has a non-square {kh}x{kw} kernel; Speck kernels "
                              "are square: use --kernel-size k (k x k)")
        if _pair(node.dilation) != (1, 1) or int(node.groups) != 1:
            raise ExportError(f"speck: layer {name} has dilation {_pair(node.dilation)} / groups "
                              f"{node.groups}; Speck convs are dense with dilation 1")
        sh, sw = res["stride2"]
        if sh != sw or sh not in STRIDES:
            raise ExportError(f"speck: layer {name} has stride {sh}x{sw}; Speck strides are square, "
                              f"one of {STRIDES}")
        if max(res["padding"]) > MAX_PADDING:
            raise ExportError(f"speck: layer {name} has padding {res['padding']}; Speck pads "
                              f"0..{MAX_PADDING}")
    if kh > MAX_KERNEL:
        raise ExportError(f"speck: layer {name} needs a {kh}x{kw} kernel; Speck kernels are at most "
                          f"{MAX_KERNEL}x{MAX_KERNEL}: pool/stride more before it")
    c_out, c_in = w.shape[:2]
    if max(c_out, c_in) > MAX_FEATURES:
        raise ExportError(f"speck: layer {name} has {c_in} -> {c_out} features; a Speck core handles "
                          f"at most {MAX_FEATURES}")


def mapping_table(plan: SpeckPlan) -> str:
    """Markdown: each chip layer, its core, shapes and memory against the core's limits."""
    rows = ["| layer | NIR nodes | in (C,H,W) | kernel | neurons (C,H,W) | pool | core | "
            "kernel mem | neuron mem | bias mem |", "|---|---|---|---|---|---|---|---|---|---|"]
    for lay in plan.layers:
        core = plan.mapping[lay.index]
        km, nm, bm = CORE_LIMITS[core]
        mem = lay.memory
        k = lay.weight.shape[2]
        rows.append(f"| {lay.index} | {lay.weight_node} -> {lay.neuron_node} | {lay.in_shape} | "
                    f"{k}x{k}/{lay.stride}{' (linear)' if lay.linear else ''} | {lay.neuron_shape} | "
                    f"{lay.pool} | {core} | {mem['kernel']} / {km} | {mem['neuron']} / {nm} | "
                    f"{mem['bias']} / {bm} |")
    if plan.readout is not None:
        rows.append(f"\nHost readout: {plan.readout_node} ({plan.readout[0].shape[1]} -> "
                    f"{plan.readout[0].shape[0]}) on the spike counts of the last core"
                    f"{' after ' + str(plan.layers[-1].pool) + 'x sum pooling' if plan.layers[-1].pool > 1 else ''}.")
    return "\n".join(rows)
