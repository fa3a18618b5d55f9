"""NIR graph -> a torch SpikingNetwork (surrogate-free, eval mode).

Reads our own graphs exactly (node metadata restores lam, V_th and the reset),
and feed-forward graphs written by other frameworks with NIR 1.0.4 semantics:

* ``LIF``: tau v' = (v_leak - v) + r I, Euler step dt:
  ``v <- (1 - dt/tau) v + (dt/tau)(r I + v_leak)``, i.e. lam = 1 - dt/tau and the
  current ``c = (dt r/tau) I + (dt/tau) v_leak`` (a ``Gain`` layer when not 1, 0).
* ``IF``: per step ``v <- v + r I`` (how NIR consumers read it; no dt).
* spike ``v > v_threshold``; reset by subtraction unless the metadata says
  ``reset: zero``. dt comes from the metadata, else 1e-4 with a warning.
* Graphs of other producers (snnTorch, sinabs; ``--producer``) are read as they meant
  them, every parameter checked, and a batch (or, for events, time) axis in the Input
  shape is dropped: ``nir_reading`` says how, for this module and every target.
* Affine, Linear, Scale, Conv1d, Conv2d, SumPool2d, AvgPool2d, Flatten (batch
  excluded from start_dim/end_dim), Input, Output; chains, and residual blocks (two
  chains from one node summed by a neuron node) as ``core.layers.ResidualBlock``.
* ``CubaLIF`` as ``core.layers.CUBA`` (``nir_reading.read_cuba``); a neuron node with a
  cycle neuron -> Affine/Linear -> same neuron (snnTorch's RLeaky/RSynaptic, our srnn)
  as ``core.layers.RecurrentSpiking``: the cycle delivers the spikes of the step before.

The neuron update is ``snn2hw.core.neuron`` (through ``core.layers.LIF``) with the
exact Heaviside step. The readout is the mean over T of the last node's output.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.layers import CUBA, LIF, Pool, RecurrentSpiking, ResidualBlock, neuron_lif
from ..core.neuron import RESET_FROM_NIR
from ..core.surrogate import heaviside
from ..errors import ExportError, notice
from ..models.config import ModelConfig
from ..models.network import SpikingNetwork, record_spikes
from .nir_reading import check_weights, producer_of, read_cuba, read_input, read_neuron, where
from .to_nir import nir_node_name


class Gain(nn.Module):
    """Per-neuron ``y = g * x + b`` (NIR ``Scale``; LIF input gain and v_leak drive)."""

    def __init__(self, g: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("g", torch.as_tensor(np.asarray(g), dtype=torch.float32))
        self.register_buffer("b", torch.as_tensor(np.asarray(b), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.g + self.b


class Pool2d(nn.Module):
    """Sum or average pooling with any kernel, stride and zero padding (NIR pooling nodes)."""

    def __init__(self, mode: str, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int]) -> None:
        super().__init__()
        self.mode, self.kernel, self.stride, self.padding = mode, kernel, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        y = F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)
        return y * (self.kernel[0] * self.kernel[1]) if self.mode == "sum" else y


class NIRNetwork(SpikingNetwork):
    """A SpikingNetwork rebuilt from NIR; ``node_names`` maps module paths of its
    neuron layers to the NIR node names, ``metadata`` is the graph's."""

    def __init__(self, config: ModelConfig, layers: list[nn.Module], node_names: dict[str, str],
                 metadata: dict[str, Any], notes: list[str] | None = None) -> None:
        super().__init__(config, layers)
        self.node_names = node_names
        self.metadata = metadata
        self.notes = list(notes or [])   # how the graph was read (nir_reading), for the user


def _pair(v: Any) -> tuple[int, int]:
    a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
    return (a[0], a[0]) if len(a) == 1 else (a[0], a[1])


def _padding(v: Any, dims: int) -> Any:
    if isinstance(v, (str, bytes)):
        return v.decode() if isinstance(v, bytes) else v
    a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
    return a[0] if dims == 1 else (_pair(a))


class _Ctx:
    def __init__(self, meta: dict[str, Any], producer: str) -> None:
        self.meta, self.producer = meta, producer
        self.notes: list[str] = []
        self.graph: nir.NIRGraph | None = None   # the whole graph (recurrent nodes are read beside their neuron)


def _affine(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    check_weights(name, node)
    w = np.asarray(node.weight, dtype=np.float32)
    bias = getattr(node, "bias", None)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w))
        if bias is not None:
            lin.bias.copy_(torch.as_tensor(np.asarray(bias, dtype=np.float32)).reshape(-1))
    return [lin]


def _conv(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    check_weights(name, node)
    w = np.asarray(node.weight, dtype=np.float32)
    dims = w.ndim - 2
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    one = (lambda v: int(np.atleast_1d(v)[0])) if dims == 1 else _pair
    conv = cls(w.shape[1] * int(node.groups), w.shape[0], w.shape[2:], stride=one(node.stride),
               padding=_padding(node.padding, dims), dilation=one(node.dilation),
               groups=int(node.groups), bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(w))
        conv.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)).reshape(-1))
    return [conv]


def _pool(mode: str) -> Callable[[Any, str, _Ctx], list[nn.Module]]:
    def convert(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
        k, s, p = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
        if k[0] == k[1] and k == s and p == (0, 0):
            return [Pool(mode, k[0], 2)]  # the layer our models train with
        return [Pool2d(mode, k, s, p)]
    return convert


def _flatten(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    start, end = int(node.start_dim), int(node.end_dim)
    return [nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)]


def _scale(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    check_weights(name, node)
    return [Gain(node.scale, np.zeros_like(np.asarray(node.scale)))]


def _neuron(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    """A Gain (when the input gain is not 1 or v_leak drives) and the LIF of ``nir_reading``."""
    rd = read_neuron(name, node, ctx.meta, ctx.producer)
    ctx.notes += rd.notes
    layers: list[nn.Module] = []
    if not rd.unit_input:
        shape = np.asarray(node.v_threshold).shape
        layers.append(Gain(np.broadcast_to(rd.gain, shape).copy(), np.broadcast_to(rd.drive, shape).copy()))
    lif = LIF(1.0, 1.0, rd.reset)
    lif.lam, lif.v_th = rd.lam, rd.v_th  # floats or per-neuron tensors (LIFParams broadcasts)
    lif.v_reset, lif.spike_geq, lif.multi_spike, lif.v_min = rd.v_reset, rd.spike_geq, rd.multi_spike, rd.v_min
    lif.spike_strategy = heaviside  # surrogate-free: the exact step
    return layers + [lif]


def _cuba(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    """A Gain (input gain not 1) and the CUBA of ``nir_reading.read_cuba``."""
    alpha, rd = read_cuba(name, node, ctx.meta, ctx.producer)
    ctx.notes += rd.notes
    layers: list[nn.Module] = []
    if not rd.unit_input:
        shape = np.asarray(node.v_threshold).shape
        layers.append(Gain(np.broadcast_to(rd.gain, shape).copy(), np.zeros(shape)))
    cuba = CUBA(0.0, 1.0, 1.0, rd.reset)
    cuba.alpha = alpha
    lif = cuba.lif
    lif.lam, lif.v_th = rd.lam, rd.v_th
    lif.v_reset, lif.spike_geq, lif.multi_spike, lif.v_min = rd.v_reset, rd.spike_geq, rd.multi_spike, rd.v_min
    lif.spike_strategy = heaviside
    return layers + [cuba]


def _recurrent(graph: nir.NIRGraph, name: str, rec: str, modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` ([Gain,] neuron) of node ``name`` closed by the cycle through ``rec``: NIR
    sums the neuron's inputs, so the input gain scales W_rec's rows as well."""
    node, neuron = graph.nodes[rec], modules[-1]
    if not isinstance(node, (nir.Affine, nir.Linear)):
        raise ExportError(f"{where(rec)} closes a cycle on {name!r} but is a {type(node).__name__}; "
                          "only an Affine/Linear from a neuron back to itself is read as recurrence")
    check_weights(rec, node)
    w = np.asarray(node.weight, dtype=np.float64)
    w = np.diag(w) if w.ndim == 1 else w
    n = int(np.prod(np.asarray(graph.nodes[name].v_threshold).shape))
    if w.shape != (n, n):
        raise ExportError(f"{where(rec)}: recurrent weight of shape {w.shape} on {n} neurons of {name!r}")
    bias = np.asarray(getattr(node, "bias", None) if getattr(node, "bias", None) is not None else 0.0)
    lif = neuron_lif(neuron)
    if isinstance(neuron, CUBA) and not lif.params.native:
        raise ExportError(f"{where(name)}: a recurrent CubaLIF with a reset value, '>=' or a clip is not "
                          "run by snn2hw's CUBA step; write v_reset = 0 and the spike rule '>'")
    gain = np.ones(n)
    head = modules[:-1]
    if head:
        gain = np.broadcast_to(head[0].g.double().numpy(), (n,))
        head[0].b += torch.as_tensor(gain * bias, dtype=torch.float32)
    elif np.any(bias != 0):
        head = [Gain(np.ones(n), np.broadcast_to(bias, (n,)).copy())]
    layer = RecurrentSpiking(n, neuron)
    with torch.no_grad():
        layer.recurrent.weight.copy_(torch.as_tensor(gain[:, None] * w, dtype=torch.float32))
    return head + [layer]


def recurrent_edges(graph: nir.NIRGraph) -> dict[str, str]:
    """``{neuron: recurrent node}`` for each cycle neuron -> Affine/Linear -> same neuron
    (the recurrent node has that neuron as its only input and output)."""
    succ: dict[str, list[str]] = {}
    preds: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
        preds.setdefault(b, []).append(a)
    neurons = (nir.LIF, nir.IF, nir.CubaLIF)
    return {preds[r][0]: r for r in graph.nodes
            if preds.get(r) and preds[r] == succ.get(r) and len(preds[r]) == 1
            and isinstance(graph.nodes[preds[r][0]], neurons)}


def without_recurrence(graph: nir.NIRGraph, rec: dict[str, str] | None = None) -> nir.NIRGraph:
    """``graph`` without the recurrent nodes of ``rec`` (default ``recurrent_edges``) and their
    edges: the feed-forward skeleton that chain and residual planners walk."""
    rec = recurrent_edges(graph) if rec is None else rec
    loops = set(rec.values())
    return nir.NIRGraph(nodes={k: v for k, v in graph.nodes.items() if k not in loops},
                        edges=[(a, b) for a, b in graph.edges if a not in loops and b not in loops],
                        metadata=graph.metadata, **_no_type_check())


def _no_type_check() -> dict:
    return {"type_check": False} if "type_check" in inspect.signature(nir.NIRGraph.__init__).parameters else {}


def _unsupported(node: Any, name: str, ctx: _Ctx) -> list[nn.Module]:
    raise ExportError(f"{where(name)} is a {type(node).__name__}, which snn2hw cannot run: "
                      "supported are LIF, IF, Affine, Linear, Scale, Conv1d, Conv2d, SumPool2d, "
                      "AvgPool2d, Flatten")


# NIR node type -> converter (node, name, ctx) -> torch layers; one line per type.
CONVERTERS: dict[type, Callable[[Any, str, _Ctx], list[nn.Module]]] = {
    nir.Affine: _affine,
    nir.Linear: _affine,
    nir.Conv1d: _conv,
    nir.Conv2d: _conv,
    nir.SumPool2d: _pool("sum"),
    nir.AvgPool2d: _pool("avg"),
    nir.Flatten: _flatten,
    nir.Scale: _scale,
    nir.LIF: _neuron,
    nir.IF: _neuron,
    nir.CubaLIF: _cuba,
}


def chain_order(graph: nir.NIRGraph, why: str = "this target runs feed-forward chains only",
                fix: str = "use an architecture without skip connections (--model mlp or conv)") -> list[str]:
    """Node names from Input to Output; ExportError (``why``, ``fix``) if the graph is not a chain."""
    succ: dict[str, list[str]] = {}
    preds: dict[str, int] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
        preds[b] = preds.get(b, 0) + 1
    for n, k in preds.items():
        if k > 1:
            raise ExportError(f"{where(n)} sums {k} inputs (a residual or branching graph); {why}: {fix}")
    for n, s in succ.items():
        if len(s) > 1:
            raise ExportError(f"{where(n)} feeds {len(s)} nodes (a branching graph); {why}: {fix}")
    starts = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(starts) != 1:
        raise ExportError(f"the NIR graph has {len(starts)} Input nodes; snn2hw needs exactly one")
    order, cur = [starts[0]], starts[0]
    while cur in succ:
        cur = succ[cur][0]
        if cur in order:
            raise ExportError(f"the NIR graph has a cycle through node {cur!r} (recurrence is not supported)")
        order.append(cur)
    if not isinstance(graph.nodes[order[-1]], nir.Output):
        raise ExportError(f"the NIR chain ends at {order[-1]!r}, not at an Output node")
    if len(order) != len(graph.nodes):
        missing = sorted(set(graph.nodes) - set(order))
        raise ExportError(f"NIR nodes {missing[:4]} are not on the Input -> Output chain")
    return order


def graph_plan(graph: nir.NIRGraph) -> list:
    """The graph as steps from Input to Output: a node name, or a residual block
    ``(branch_a, branch_b, merge)`` where two chains from one node meet in ``merge``
    (a neuron node, which sums them; a branch may be empty: identity shortcut).
    ExportError for anything else (nested branches, cycles, several inputs)."""
    succ: dict[str, list[str]] = {}
    preds: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
        preds.setdefault(b, []).append(a)
    starts = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(starts) != 1:
        raise ExportError(f"the NIR graph has {len(starts)} Input nodes; snn2hw needs exactly one")

    def branch(first: str, origin: str) -> tuple[list[str], str]:
        names, cur = [], first
        while len(preds.get(cur, [])) < 2:
            if len(succ.get(cur, [])) != 1:
                raise ExportError(f"{where(cur)} inside a branch from {origin!r} does not lead to a single "
                                  "merge node; only residual blocks (two chains meeting in a neuron) are rebuilt")
            names.append(cur)
            cur = succ[cur][0]
        return names, cur

    steps: list = []
    seen: set[str] = set()
    cur = starts[0]
    steps.append(cur)
    while succ.get(cur):
        nxt = succ[cur]
        if len(nxt) == 1 and len(preds.get(nxt[0], [])) == 1:
            cur = nxt[0]
            step: object = cur
        elif len(nxt) == 2:  # a residual block: two chains (one may be empty) meeting in one node
            (a, merge), (b, merge_b) = branch(nxt[0], cur), branch(nxt[1], cur)
            if merge != merge_b or len(preds[merge]) != 2:
                raise ExportError(f"the branches from {where(cur)} do not meet in one node with 2 inputs; "
                                  "only residual blocks are rebuilt")
            if not isinstance(graph.nodes[merge], (nir.LIF, nir.IF)):
                raise ExportError(f"{where(merge)} sums 2 inputs but is a {type(graph.nodes[merge]).__name__}; "
                                  "a residual block must end in a LIF/IF neuron")
            step, cur = (a, b, merge), merge
        elif len(nxt) == 1:
            raise ExportError(f"{where(nxt[0])} sums {len(preds[nxt[0]])} inputs that do not form a residual "
                              "block with its input; snn2hw rebuilds chains and residual blocks only")
        else:
            raise ExportError(f"{where(cur)} feeds {len(nxt)} nodes; snn2hw rebuilds chains and residual blocks only")
        if cur in seen:
            raise ExportError(f"the NIR graph has a cycle through node {cur!r} (recurrence is not supported)")
        seen.add(cur)
        steps.append(step)
    if not isinstance(graph.nodes[cur], nir.Output):
        raise ExportError(f"the NIR graph ends at {cur!r}, not at an Output node")
    covered = {n for st in steps for n in ([st] if isinstance(st, str) else st[0] + st[1] + [st[2]])}
    if covered != set(graph.nodes):
        raise ExportError(f"NIR nodes {sorted(set(graph.nodes) - covered)[:4]} are not on the Input -> Output path")
    return steps


def _convert(graph: nir.NIRGraph, name: str, ctx: _Ctx, names: dict[int, str],
             rec: dict[str, str] | None = None) -> list[nn.Module]:
    node = graph.nodes[name]
    if isinstance(node, (nir.Input, nir.Output)):
        return []
    if isinstance(node, nir.NIRGraph):
        raise ExportError(f"{where(name)} is a nested graph; flatten it before importing")
    modules = CONVERTERS.get(type(node), _unsupported)(node, name, ctx)
    names.update({id(m): name for mod in modules for m in mod.modules() if isinstance(m, LIF)})
    if rec and name in rec:
        modules = _recurrent(ctx.graph, name, rec[name], modules)
    return modules


def nir_to_network(graph: nir.NIRGraph, timesteps: int | None = None) -> NIRNetwork:
    """Rebuild ``graph`` as a NIRNetwork in eval mode (see module docstring).

    ``timesteps`` overrides the metadata's; one of them must exist.
    """
    md = dict(graph.metadata or {})
    producer = producer_of(graph)
    if "dt" not in md and producer == "nir" and any(isinstance(n, nir.LIF) for n in graph.nodes.values()):
        notice("NIR graph has no metadata 'dt'; assuming dt = 1e-4 s (snnTorch's convention)")
    if RESET_FROM_NIR.get(str(md.get("reset", "subtract"))) is None:
        raise ExportError(f"NIR metadata reset={md.get('reset')!r}; expected 'zero' or 'subtract'")
    encoding = md.get("input_encoding", "direct")
    if encoding in ("rate", "latency"):
        raise ExportError(f"the NIR graph's input is {encoding}-encoded on the host before the chip, and "
                          "snn2hw's targets are checked with static frames, which would run it as direct "
                          "encoding; export a model trained with --set encoding=direct (or on event data)")
    source_input = read_input(graph)
    T = int(timesteps or md.get("timesteps", 0) or source_input.timesteps or 0)
    if T < 1:
        raise ExportError("the NIR graph's metadata gives no 'timesteps': pass --timesteps N")
    ctx = _Ctx(md, producer)
    ctx.graph = graph
    ctx.notes += source_input.notes
    if producer == "sinabs" and "producer" not in md:
        ctx.notes.append("read as a sinabs graph (its layout: IF nodes with r = 1, no metadata): tau in "
                         "steps, MultiSpike, IF clipped at -v_threshold; --producer nir reads it by NIR's equations")
    rec = recurrent_edges(graph)
    steps = graph_plan(without_recurrence(graph, rec) if rec else graph)
    layers: list[nn.Module] = []
    by_id: dict[int, str] = {}
    for step in steps:
        if isinstance(step, str):
            layers += _convert(graph, step, ctx, by_id, rec)
            continue
        branch_a, branch_b, merge = step
        out = _convert(graph, merge, ctx, by_id)
        if len(out) != 1:
            raise ExportError(f"{where(merge)}: a residual block's neuron must have input gain 1 and no v_leak")
        body = [m for n in branch_a for m in _convert(graph, n, ctx, by_id)]
        shortcut = [m for n in branch_b for m in _convert(graph, n, ctx, by_id)]
        if len(body) < len(shortcut):
            body, shortcut = shortcut, body
        layers.append(ResidualBlock(body, shortcut, out[0]))
    container = nn.ModuleList(layers)
    node_names = {f"layers.{path}": by_id[id(m)] for path, m in container.named_modules() if id(m) in by_id}
    input_shape = source_input.shape
    with torch.no_grad():
        probe = torch.zeros(1, 1, *input_shape)
        for m in layers:
            probe = m(probe) if getattr(m, "temporal", False) else m(probe.flatten(0, 1)).unflatten(0, (1, 1))
    lifs = [m for m in container.modules() if isinstance(m, LIF)]
    first = lifs[0] if lifs else None
    cfg = ModelConfig(
        arch="conv" if any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in layers) else "mlp",
        input_shape=input_shape, num_classes=int(np.prod(probe.shape[2:])), timesteps=T,
        lam=float(first.lam) if first is not None and isinstance(first.lam, float) and 0 < first.lam <= 1 else 1.0,
        v_th=float(first.v_th) if first is not None and isinstance(first.v_th, float) else 1.0,
        reset=first.reset if first is not None else "hard", tdbn=False)
    net = NIRNetwork(cfg, layers, node_names, md, ctx.notes)
    net.eval()
    return net


def node_spikes(model: SpikingNetwork, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Run ``model`` on ``x``; return spikes per NIR node name (T, B, ...) and the
    readout (B, K). Works for a NIRNetwork and for a trained SpikingNetwork (whose
    NIR node names are ``nir_node_name`` of its module paths); the spike step is the exact
    Heaviside."""
    names = getattr(model, "node_names", None)
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    saved = [m.spike_strategy for m in lifs]
    was_training = model.training
    model.eval()
    try:
        for m in lifs:
            m.spike_strategy = heaviside
        with torch.no_grad(), record_spikes(model) as rec:
            out = model(x)
    finally:
        for m, s in zip(lifs, saved):
            m.spike_strategy = s
        model.train(was_training)
    spikes = {(names.get(k, k) if names is not None else nir_node_name(k)): torch.cat(v, 1) for k, v in rec.items()}
    return spikes, out
