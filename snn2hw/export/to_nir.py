"""The hub: a trained SpikingNetwork as a surrogate-free NIR graph (nir 1.0.4).

What the graph says (targets.md C):

* Surrogates are dropped: NIR neurons fire on the exact strict step ``v > v_thr``.
* tdBN (eval) is folded into the preceding synapse: ``BN(W x + b) = g W x + (g b + o)``
  with ``(g, o) = TDBatchNorm.fold_factors()``, computed in float64.
* LIF with leak ``lam < 1``: ``LIF(tau=dt/(1-lam), r=1/(1-lam), v_leak=0, v_threshold=V_th)``
  with ``dt = 1e-4``; forward Euler with step dt then gives exactly ``v <- lam v + I``.
  ``lam = 1``: ``IF(r=1, v_threshold=V_th)``, read per step as ``v <- v + r I``.
* nir 1.0.4 has no ``v_reset``: the reset (``zero`` = hard, ``subtract`` = soft) is in
  the graph metadata, as are dt, lam, the spike rule ``>``, the timesteps, the input
  encoding and the readout (``mean_current``: the logits are the mean over T of the
  last Affine's output). Each neuron node also carries ``{lam, v_th, reset}`` so that
  our importer restores the exact floats.
* Node names are the torch module paths with '.' written as '_' (``layers_3``,
  ``layers_5_out``; ``nir_node_name``): nirtorch 2.0 (snnTorch's and sinabs' importers) puts
  node names into a ``torch.nn.ModuleDict``, which refuses '.' and Python keywords. Spikes
  recorded with ``record_spikes`` on the trained model map to the neuron nodes through
  ``nir_node_name``. Files written before this (``layers.3``) still read.
* CUBA (``i <- alpha i + c``, then the LIF): ``CubaLIF(tau_syn=dt/(1-alpha), w_in=1/(1-alpha),
  tau_mem=dt/(1-lam), r=1/(1-lam), v_leak=0)``: NIR's Euler step at dt gives exactly
  ``i <- alpha i + c`` and ``v <- lam v + i``; node metadata ``{alpha, lam, v_th, reset}``.
  The node is named after the CUBA's LIF (``layers_3_lif``), where its spikes are recorded.
* A recurrent layer is written as snnTorch writes RLeaky/RSynaptic: its neuron node (named
  after its LIF: ``layers_3_neuron``, ``layers_3_neuron_lif`` for CUBA) and ``Linear(W_rec)``
  (``layers_3_recurrent``) with edges neuron -> recurrent -> neuron: NIR sums a node's inputs,
  and the cycle delivers ``s[t-1]``.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import nir
import numpy as np
import torch
from torch import nn

from ..version import __version__
from ..core.layers import CUBA, LIF, Pool, RecurrentSpiking, ResidualBlock, neuron_lif
from ..core.neuron import NIR_RESET_NAMES
from ..errors import ExportError
from ..models.network import SpikingNetwork
from ..models.walk import Rule, Step, walk

DT = 1e-4


def nir_node_name(module_path: str) -> str:
    """The NIR node name of the layer at torch ``module_path``: ``layers.5.out`` -> ``layers_5_out``.

    Every consumer accepts it: no '.', never a Python keyword (it starts with ``layers``)."""
    return module_path.replace(".", "_")


@dataclass
class _Chain:
    """The graph being built and where the walk stands in it."""

    dt: float
    nodes: dict[str, nir.NIRNode]
    edges: list[tuple[str, str]]
    src: str                        # the node the next layer reads from
    shape: tuple[int, ...]          # its per-sample output shape

    def append(self, step: Step, node: nir.NIRNode) -> None:
        name = nir_node_name(step.name)
        self.nodes[name] = node
        self.edges.append((self.src, name))
        self.src, self.shape = name, _out_shape(step.module, self.shape)


def _out_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output shape of ``layer`` (run once on zeros, eval mode)."""
    if isinstance(layer, LIF):
        return shape
    with torch.no_grad():
        if getattr(layer, "temporal", False):
            return tuple(layer(torch.zeros(1, 1, *shape)).shape[2:])
        return tuple(layer(torch.zeros(1, *shape)).shape[1:])


def _synapse(step: Step, chain: _Chain) -> None:
    """Affine / Conv node with the following tdBN folded in (float64 arithmetic)."""
    layer, shape = step.module, chain.shape
    w, b = step.folded(torch.float64)
    b = b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    w_np, b_np = w.numpy().astype(np.float32), b.numpy().astype(np.float32)
    if isinstance(layer, nn.Linear):
        node = nir.Affine(weight=w_np, bias=b_np)
    elif isinstance(layer, nn.Conv1d):
        node = nir.Conv1d(input_shape=int(shape[1]), weight=w_np, stride=int(layer.stride[0]),
                          padding=layer.padding if isinstance(layer.padding, str) else int(layer.padding[0]),
                          dilation=int(layer.dilation[0]), groups=int(layer.groups), bias=b_np)
    else:
        node = nir.Conv2d(input_shape=tuple(int(s) for s in shape[1:]), weight=w_np,
                          stride=tuple(int(s) for s in layer.stride),
                          padding=layer.padding if isinstance(layer.padding, str) else tuple(int(p) for p in layer.padding),
                          dilation=tuple(int(d) for d in layer.dilation), groups=int(layer.groups), bias=b_np)
    chain.append(step, node)


def _neuron_node(lif: LIF, shape: tuple[int, ...], dt: float) -> nir.NIRNode:
    ones = np.ones(shape, dtype=np.float64)
    meta = {"lam": float(lif.lam), "v_th": float(lif.v_th), "reset": NIR_RESET_NAMES[lif.reset]}
    if lif.lam == 1.0:
        return nir.IF(r=ones, v_threshold=lif.v_th * ones, metadata=meta)
    return nir.LIF(tau=dt / (1.0 - lif.lam) * ones, r=ones / (1.0 - lif.lam), v_leak=0.0 * ones,
                   v_threshold=lif.v_th * ones, metadata=meta)


def _cuba_node(cuba: CUBA, shape: tuple[int, ...], dt: float, where: str) -> nir.CubaLIF:
    lif = cuba.lif
    if not (0.0 <= cuba.alpha < 1.0 and 0.0 <= lif.lam < 1.0):
        raise ExportError(f"{where}: CUBA with alpha={cuba.alpha}, lam={lif.lam} has no NIR CubaLIF (its time "
                          "constants dt/(1-alpha), dt/(1-lam) would be infinite); retrain with alpha, lam < 1")
    ones = np.ones(shape, dtype=np.float64)
    meta = {"alpha": float(cuba.alpha), "lam": float(lif.lam), "v_th": float(lif.v_th),
            "reset": NIR_RESET_NAMES[lif.reset]}
    return nir.CubaLIF(tau_syn=dt / (1.0 - cuba.alpha) * ones, tau_mem=dt / (1.0 - lif.lam) * ones,
                       r=ones / (1.0 - lif.lam), v_leak=0.0 * ones, v_threshold=lif.v_th * ones,
                       w_in=ones / (1.0 - cuba.alpha), metadata=meta)


def _any_neuron_node(neuron: nn.Module, shape: tuple[int, ...], dt: float, where: str) -> nir.NIRNode:
    return _cuba_node(neuron, shape, dt, where) if isinstance(neuron, CUBA) else _neuron_node(neuron, shape, dt)


def _lif_path(module: nn.Module, path: str) -> str:
    """The module path of the LIF inside ``module`` (``record_spikes`` records spikes there)."""
    lif = neuron_lif(module.neuron if isinstance(module, RecurrentSpiking) else module)
    return next(f"{path}.{n}" if n else path for n, m in module.named_modules() if m is lif)


def _neuron(step: Step, chain: _Chain) -> None:
    chain.append(step, _neuron_node(step.module, chain.shape, chain.dt))


def _cuba(step: Step, chain: _Chain) -> None:
    name = nir_node_name(_lif_path(step.module, step.name))
    chain.nodes[name] = _cuba_node(step.module, chain.shape, chain.dt, step.where)
    chain.edges.append((chain.src, name))
    chain.src = name


def _recurrent(step: Step, chain: _Chain) -> None:
    layer: RecurrentSpiking = step.module
    name = nir_node_name(_lif_path(layer, step.name))
    rec = nir_node_name(f"{step.name}.recurrent")
    chain.nodes[name] = _any_neuron_node(layer.neuron, chain.shape, chain.dt, step.where)
    w = layer.recurrent.weight.detach().to(torch.float64).numpy().astype(np.float32)
    chain.nodes[rec] = nir.Linear(weight=w)
    chain.edges += [(chain.src, name), (name, rec), (rec, name)]
    chain.src = name


def _global_pool(step: Step, chain: _Chain) -> None:
    layer, shape = step.module, chain.shape
    out = layer.output_size if isinstance(layer.output_size, tuple) else (layer.output_size,) * 2
    if tuple(out) != (1, 1):
        raise ExportError(f"{step.where}: AdaptiveAvgPool2d to {out} has no NIR node; "
                          "only global pooling (1, 1) maps")
    k = np.array(shape[1:], dtype=np.int64)
    chain.append(step, nir.AvgPool2d(kernel_size=k, stride=k, padding=np.zeros(2, dtype=np.int64)))


def _pool(step: Step, chain: _Chain) -> None:
    layer, shape = step.module, chain.shape
    if layer.mode == "max":
        raise ExportError(f"{step.where}: max pooling has no NIR node and no neuromorphic target runs it; "
                          "retrain with --pool avg or --pool sum")
    if layer.dims == 1:
        # NIR has no 1-D pooling: a depthwise Conv1d with kernel 1/k (avg) or 1 (sum) is the same map.
        c = shape[0]
        w = np.full((c, 1, layer.k), 1.0 / layer.k if layer.mode == "avg" else 1.0, dtype=np.float32)
        node = nir.Conv1d(input_shape=int(shape[1]), weight=w, stride=layer.k, padding=0, dilation=1,
                          groups=c, bias=np.zeros(c, dtype=np.float32), metadata={"pool": layer.mode})
    else:
        k = np.array([layer.k, layer.k], dtype=np.int64)
        cls = nir.AvgPool2d if layer.mode == "avg" else nir.SumPool2d
        node = cls(kernel_size=k, stride=k, padding=np.zeros(2, dtype=np.int64))
    chain.append(step, node)


def _flatten(step: Step, chain: _Chain) -> None:
    layer = step.module
    if layer.start_dim != 1:
        raise ExportError(f"{step.where}: only Flatten(start_dim=1) maps to NIR")
    chain.append(step, nir.Flatten(input_type={"input": np.array(chain.shape)}, start_dim=0,
                                   end_dim=layer.end_dim - 1 if layer.end_dim > 0 else layer.end_dim))


def _residual(step: Step, chain: _Chain) -> None:
    # NIR sums the inputs of a node: body and shortcut both feed the block's neuron.
    src, shape = chain.src, chain.shape
    step.walk_inside("body", chain)
    body = chain.src
    chain.src, chain.shape = src, shape
    step.walk_inside("shortcut", chain)
    short = chain.src
    out, out_shape = nir_node_name(f"{step.name}.out"), _out_shape(step.module, shape)
    chain.nodes[out] = _any_neuron_node(step.module.out, out_shape, chain.dt, step.where)
    chain.edges += [(body, out), (short, out)]
    chain.src, chain.shape = out, out_shape


# torch layer type -> rule appending its NIR node (tdBN is folded by the walk; Identity is skipped).
TO_NIR: dict[type, Rule] = {
    nn.Linear: _synapse,
    nn.Conv1d: _synapse,
    nn.Conv2d: _synapse,
    LIF: _neuron,
    CUBA: _cuba,
    RecurrentSpiking: _recurrent,
    Pool: _pool,
    nn.AdaptiveAvgPool2d: _global_pool,
    nn.Flatten: _flatten,
    ResidualBlock: _residual,
}


def model_to_nir(model: SpikingNetwork, dt: float = DT, temporal: bool = False) -> nir.NIRGraph:
    """The surrogate-free, BN-folded NIR graph of ``model`` (see module docstring).

    ``temporal``: the inputs are event frames (T, B, ...) rather than one static
    frame repeated T times (direct encoding); recorded in the metadata.
    Raises ExportError naming the layer for constructs NIR cannot express.
    """
    cfg = model.config
    for name, m in model.named_modules():
        if isinstance(m, LIF) and m.reset not in NIR_RESET_NAMES:
            raise ExportError(f"{name}: reset {m.reset!r} (GSG's Eq. 4, the threshold subtracted after the "
                              f"leak) has no NIR or target equivalent; retrain with --reset hard or soft")
    was_training = model.training
    model.eval()  # shape probing must not touch BN running statistics
    try:
        shape = tuple(int(s) for s in cfg.input_shape)
        chain = _Chain(dt, {"input": nir.Input(input_type={"input": np.array(shape)})}, [], "input", shape)
        walk(model.layers, TO_NIR, chain, rules_name="snn2hw.export.to_nir.TO_NIR")
    finally:
        model.train(was_training)
    nodes, edges = chain.nodes, chain.edges
    nodes["output"] = nir.Output(output_type={"output": np.array(chain.shape)})
    edges.append((chain.src, "output"))
    lifs = model.lif_layers()
    lams = {float(m.lam) for m in lifs}
    metadata: dict[str, Any] = {
        "producer": f"snn2hw {__version__}",
        "dt": float(dt),
        "lam": lams.pop() if len(lams) == 1 else -1.0,  # -1: differs per layer (see node metadata)
        "v_th": float(cfg.v_th),
        "reset": NIR_RESET_NAMES[cfg.reset],
        "spike": ">",
        "timesteps": int(cfg.timesteps),
        "readout": "mean_current",
        # rate/latency: the encoder runs on the host before the chip (readers must feed its events)
        "input_encoding": "temporal" if temporal else cfg.encoding,
        "arch": cfg.arch,
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)



# ---- flavours: the same network, written the way another library's importer reads NIR ----

def graph_copy(graph: nir.NIRGraph, rename: Callable[[str], str] = str) -> nir.NIRGraph:
    """A shallow copy of ``graph`` (node objects shared, nodes renamed by ``rename``), built
    without nir >= 1.0.5's type check (a flavour may shape neuron parameters to broadcast)."""
    kw = {"type_check": False} if "type_check" in inspect.signature(nir.NIRGraph.__init__).parameters else {}
    return nir.NIRGraph(nodes={rename(k): v for k, v in graph.nodes.items()},
                        edges=[(rename(a), rename(b)) for a, b in graph.edges],
                        metadata=dict(graph.metadata or {}), **kw)


def pooling_as(graph: nir.NIRGraph, mode: str) -> nir.NIRGraph:
    """A copy of ``graph`` whose 2-D pooling nodes are all ``mode`` ('sum' or 'avg') pooling,
    the factor k^2 moved into the next node with weights: sum = k^2 avg (exact in float32 for
    k a power of 2). For importers with only one of the two (sinabs: sum, snnTorch: avg)."""
    new_cls, other = (nir.SumPool2d, nir.AvgPool2d) if mode == "sum" else (nir.AvgPool2d, nir.SumPool2d)
    g = graph_copy(graph)
    succ = dict(g.edges)
    for name, node in list(g.nodes.items()):
        if not isinstance(node, other):
            continue
        k = np.asarray(node.kernel_size, dtype=np.int64).reshape(-1)
        area = float(k[0] * k[-1])
        g.nodes[name] = new_cls(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
        nxt = succ.get(name)
        while nxt is not None and not hasattr(g.nodes[nxt], "weight"):
            nxt = succ.get(nxt)
        if nxt is None:
            raise ExportError(f"NIR node {name!r}: {type(node).__name__} with no weights after it to move "
                              f"its factor {area:g} into; the reader has no {type(node).__name__}: use --target nir")
        after = copy.copy(g.nodes[nxt])  # the caller's graph keeps its weights
        w = np.asarray(after.weight, dtype=np.float64)
        after.weight = (w / area if mode == "sum" else w * area).astype(np.float32)
        g.nodes[nxt] = after
    return g


def sinabs_tau(lam: float) -> float:
    """The float32 tau (in steps) with ``exp(-1/tau) == float32(lam)`` in float32, as sinabs
    computes its decay (``LIF.alpha_mem_calculated``); ExportError if no float32 near
    ``-1/ln(lam)`` gives lam exactly."""
    target = torch.tensor(lam, dtype=torch.float32)
    t0 = np.float32(-1.0 / np.log(lam))
    near = [t0]
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        t = t0
        for _ in range(64):
            t = np.nextafter(t, direction)
            near.append(t)
    for t in sorted(near, key=lambda c: abs(float(c) - float(t0))):
        if torch.exp(-1.0 / torch.tensor(t)) == target:
            return float(t)
    raise ExportError(f"no float32 tau gives sinabs the leak lam={lam} exactly; use --target nir")


def _sinabs_neuron(node: nir.NIRNode, name: str) -> nir.NIRNode:
    meta = dict(getattr(node, "metadata", {}) or {})
    if "lam" not in meta:
        raise ExportError(f"NIR node {name!r} has no snn2hw neuron metadata (lam, v_th); the sinabs "
                          "flavour is written from graphs snn2hw made: export the checkpoint instead")
    lam, v_th = float(meta["lam"]), float(meta["v_th"])
    shape = np.asarray(node.v_threshold).shape
    if lam != 1.0 and len(shape) > 1:
        # (C, 1, 1): sinabs' LIF check `any(v_leak) != 0` fails on (C, H, W); it broadcasts (C, 1, 1).
        # nir >= 1.0.5 then needs nir.read(path, type_check=False) (its types differ from (C, H, W)).
        shape = (shape[0],) + (1,) * (len(shape) - 1)
    one = np.ones(shape, dtype=np.float32)
    # sinabs fires on v >= threshold, ours on v > V_th: the next float32 up is the same rule
    fire = np.nextafter(np.float32(v_th), np.float32(np.inf)) * one
    if lam == 1.0:
        return nir.IF(r=one, v_threshold=fire, metadata=meta)
    return nir.LIF(tau=np.float32(sinabs_tau(lam)) * one, r=(one / np.float32(1.0 - lam)).astype(np.float32),
                   v_leak=0 * one, v_threshold=fire, metadata=meta)


def sinabs_flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """A copy of our ``graph`` that ``sinabs.from_nir`` reads as the same network.

    * LIF: ``tau`` in steps with ``exp(-1/tau) == lam`` in float32 (sinabs' decay; it ignores
      dt and r), ``r = 1/(1-lam)`` and metadata ``dt = tau (1 - lam)`` so that an Euler reader
      still gets lam when all layers share it; parameters of conv neurons shaped (C, 1, 1).
    * ``v_threshold = nextafter(V_th, +inf)`` in float32: sinabs' ``v >= thr`` is then ours ``v > V_th``.
    * AvgPool2d -> SumPool2d with 1/k^2 folded into the next weights (sinabs has no AvgPool2d);
      Linear -> Affine with zero bias (sinabs has no Linear).

    What NIR cannot say is set after loading (``export.interop.load_in_sinabs`` does it):
    SingleSpike, MembraneReset() (hard) or MembraneSubtract(subtract_value=V_th) (soft),
    min_v_mem=None. Node metadata keeps lam and V_th, so snn2hw reads the file exactly too.
    """
    g = graph_copy(graph)
    for name, node in list(g.nodes.items()):
        if isinstance(node, (nir.LIF, nir.IF)):
            g.nodes[name] = _sinabs_neuron(node, name)
        elif isinstance(node, nir.Linear):
            w = np.asarray(node.weight, dtype=np.float32)
            g.nodes[name] = nir.Affine(weight=w, bias=np.zeros(w.shape[0], dtype=np.float32))
    g = pooling_as(g, "sum")
    lams = {float(n.metadata["lam"]) for n in g.nodes.values() if isinstance(n, (nir.LIF, nir.IF))}
    g.metadata["flavour"] = "sinabs"
    g.metadata["tau_unit"] = "steps: v <- exp(-1/tau) v + I (sinabs); lam, v_th per node in metadata"
    if len(lams) == 1 and 1.0 not in lams:
        lam = lams.pop()
        g.metadata["dt"] = sinabs_tau(lam) * (1.0 - lam)
    return g
