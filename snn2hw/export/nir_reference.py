"""The ``--from-nir --check`` reference: what the graph's producer computes, not our reading.

``producer_reference(graph, producer)`` picks, in order:

1. the producing library's own simulation when it is installed: sinabs ``from_nir`` (its
   defaults: MultiSpike, subtract reset, IAF floor at -V_th) or snnTorch ``import_from_nir``;
2. otherwise ``EulerReference``: a small simulator written from the NIR node definitions
   (nir/ir/*.py docstrings), numpy float64, forward Euler at the graph's dt. It shares no
   code with ``from_nir`` (our reader), so agreement with it says something.
3. a graph snn2hw wrote from a trained model is checked against that model (``export.api``);
   a graph snn2hw wrote, read from a file, against the NIR definitions.

Definitions used (NIR 1.0.4; 1.0.8's ``v_reset`` is honoured when present):

* LIF: ``tau dv/dt = (v_leak - v) + R I``: ``v += dt/tau (v_leak - v + R I)``; CubaLIF
  adds ``tau_syn dI/dt = -I + w_in S`` integrated first; LI: the LIF without spikes.
* IF: ``dv/dt = R I`` has no time constant; every consumer we know (sinabs IAF, Lava,
  snn2hw) integrates it per step, ``v += R I``: so does this.
* ``z = v > v_threshold`` (``>=`` where the metadata says ``spike: '>='``, node over graph: a
  producer's convention NIR 1.0.4 cannot state); reset ``v -= v_threshold`` (1.0.4), or ``v = v_reset`` (node field),
  or what the metadata says (``reset: zero | subtract``, node over graph: 1.0.4 has no field).
* Affine ``W x + b``, Linear, Scale, Conv1d/Conv2d (torch's conv semantics, as NIR specifies),
  SumPool2d, AvgPool2d, Flatten (batch excluded). A node's input is the sum of its
  predecessors' outputs this step; an edge closing a cycle carries the previous step's value.
* The readout is the mean over T of the output node's input (the convention of our files).

dt: the metadata's ``dt``; else the producer's convention (snnTorch 1e-4 s, sinabs 1 step);
else 1.0 with the name saying so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ExportError
from .nir_reading import producer_of
from .base import Samples
from .reference import Reference, run_batched

SNNTORCH_DT = 1e-4   # snnTorch's export_to_nir hard-codes it (tau = dt / (1 - beta))


def detect_producer(graph: nir.NIRGraph) -> str:
    """'snn2hw', 'sinabs', 'snntorch' or '' (unknown). The metadata and sinabs' layout are read
    as the exporter reads them (``nir_reading.producer_of``: one detector, so the reference and
    the export never guess differently); snnTorch's own signature, LIFs with ``r == tau / 1e-4``
    (its dt fixed at 1e-4 s), only picks which library simulates the reference."""
    who = producer_of(graph)
    if who != "nir":
        return who
    lifs = [n for n in graph.nodes.values() if isinstance(n, (nir.LIF, nir.CubaLIF))]
    taus = [np.asarray(getattr(n, "tau", getattr(n, "tau_mem", 1.0)), dtype=np.float64) for n in lifs]
    if lifs and all(np.allclose(np.asarray(n.r, np.float64), t / SNNTORCH_DT, rtol=1e-6) or np.all(np.isinf(t))
                    for n, t in zip(lifs, taus)):
        return "snntorch"
    return ""


# ---- the NIR definitions, Euler at dt ----

def _arr(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


@dataclass
class _Neuron:
    """One neuron node's parameters in the form the Euler step uses."""

    kind: str                  # 'lif' | 'if' | 'li' | 'cuba'
    params: dict[str, np.ndarray]
    reset: str                 # 'subtract' | 'zero' | 'value'
    geq: bool = False          # the producer's spike rule is v >= v_threshold (metadata spike: '>=')


def _neuron(node: Any, graph_reset: str | None, graph_spike: str | None = None) -> _Neuron:
    meta = getattr(node, "metadata", {}) or {}
    geq = str(meta.get("spike", graph_spike or ">")).strip() == ">="
    v_reset = getattr(node, "v_reset", None)
    reset = "value" if v_reset is not None else str(meta.get("reset", graph_reset or "subtract"))
    p = {k: _arr(getattr(node, k)) for k in ("tau", "tau_mem", "tau_syn", "r", "v_leak", "v_threshold", "w_in")
         if getattr(node, k, None) is not None}
    if v_reset is not None:
        p["v_reset"] = _arr(v_reset)
    kind = {nir.LIF: "lif", nir.IF: "if", nir.LI: "li", nir.CubaLIF: "cuba"}[type(node)]
    return _Neuron(kind, p, reset, geq)


def _step_neuron(n: _Neuron, x: np.ndarray, state: dict[str, np.ndarray], dt: float) -> np.ndarray:
    p, v = n.params, state.get("v", np.zeros_like(x))
    if n.kind == "if":
        v = v + p["r"] * x
    else:
        if n.kind == "cuba":
            i = state.get("i", np.zeros_like(x))
            i = i + dt / p["tau_syn"] * (-i + p.get("w_in", 1.0) * x)
            state["i"], x = i, i
        tau = p["tau"] if "tau" in p else p["tau_mem"]
        with np.errstate(divide="ignore", invalid="ignore"):  # tau = inf: no leak, no input (NIR's limit)
            v = v + np.where(np.isinf(tau), 0.0, dt / tau) * (p["v_leak"] - v + p["r"] * x)
    if n.kind == "li":
        state["v"] = v
        return v
    z = ((v >= p["v_threshold"]) if n.geq else (v > p["v_threshold"])).astype(np.float64)
    if n.reset == "zero":
        v = v * (1 - z)
    elif n.reset == "value":
        v = np.where(z > 0, p["v_reset"], v)
    else:
        v = v - z * p["v_threshold"]
    state["v"] = v
    return z


def _stateless(node: Any) -> Callable[[np.ndarray], np.ndarray]:
    """(B, ...) -> (B, ...) for a node without state (torch for the conv arithmetic only)."""
    t = lambda a: torch.as_tensor(_arr(a))  # noqa: E731
    if isinstance(node, (nir.Affine, nir.Linear)):
        w, b = _arr(node.weight), _arr(getattr(node, "bias", 0.0))
        return lambda x: x @ w.T + b
    if isinstance(node, nir.Scale):
        return lambda x: x * _arr(node.scale)
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        conv = F.conv1d if isinstance(node, nir.Conv1d) else F.conv2d
        pad = node.padding if isinstance(node.padding, str) else tuple(np.atleast_1d(node.padding).astype(int))
        pad = pad.decode() if isinstance(pad, bytes) else pad
        kw = dict(stride=tuple(np.atleast_1d(node.stride).astype(int)), padding=pad,
                  dilation=tuple(np.atleast_1d(node.dilation).astype(int)), groups=int(node.groups))
        return lambda x: conv(t(x), t(node.weight), t(node.bias).reshape(-1), **kw).numpy()
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        k, s, p = (tuple(np.atleast_1d(v).astype(int)) for v in (node.kernel_size, node.stride, node.padding))
        scale = 1.0 if isinstance(node, nir.AvgPool2d) else float(k[0] * k[-1])
        return lambda x: F.avg_pool2d(t(x), k, s, p, count_include_pad=True).numpy() * scale
    if isinstance(node, nir.Flatten):
        start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return lambda x: torch.flatten(t(x), start, end).numpy()
    if isinstance(node, (nir.Input, nir.Output)):
        return lambda x: x
    raise ExportError(f"NIR node of type {type(node).__name__}: the NIR reference simulator does not know "
                      "it; run --check with the producing library installed")


class EulerReference:
    """The graph run from the NIR definitions (module docstring), one Euler step of ``dt``
    per time step, numpy float64."""

    def __init__(self, graph: nir.NIRGraph, dt: float) -> None:
        self.graph, self.dt = graph, float(dt)
        self.name = f"nir definitions (Euler, dt={self.dt:g})"
        md = graph.metadata or {}
        self.neurons = {k: _neuron(n, md.get("reset"), md.get("spike")) for k, n in graph.nodes.items()
                        if isinstance(n, (nir.LIF, nir.IF, nir.LI, nir.CubaLIF))}
        self.ops = {k: _stateless(n) for k, n in graph.nodes.items() if k not in self.neurons}
        self.order, self.back = self._order()
        self.preds: dict[str, list[str]] = {}
        for a, b in graph.edges:
            self.preds.setdefault(b, []).append(a)

    def _order(self) -> tuple[list[str], set[tuple[str, str]]]:
        """Depth-first order from the Input nodes; edges reaching an unfinished node close a cycle."""
        succ: dict[str, list[str]] = {}
        for a, b in self.graph.edges:
            succ.setdefault(a, []).append(b)
        done, active, post, back = set(), set(), [], set()

        def visit(n: str) -> None:
            active.add(n)
            for m in succ.get(n, []):
                if m in active:
                    back.add((n, m))
                elif m not in done:
                    visit(m)
            active.discard(n)
            done.add(n)
            post.append(n)

        for n, node in self.graph.nodes.items():
            if isinstance(node, nir.Input) and n not in done:
                visit(n)
        return post[::-1], back

    def run(self, x: Tensor, timesteps: int, temporal: bool,
            inputs: dict[str, tuple[int, ...]] | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Spikes per spiking node (T, B, ...) and the readout (B, K) on ``x``; ``inputs``, when
        given, receives each node's per-sample input shape."""
        xs = x.double().numpy()
        out_names = [k for k, n in self.graph.nodes.items() if isinstance(n, nir.Output)]
        states: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.neurons}
        prev: dict[str, np.ndarray] = {}
        spikes: dict[str, list[np.ndarray]] = {k: [] for k, n in self.neurons.items() if n.kind != "li"}
        readout = []
        for t in range(int(timesteps)):
            now: dict[str, np.ndarray] = {}
            for name in self.order:
                node = self.graph.nodes[name]
                if isinstance(node, nir.Input):
                    h = xs[t] if temporal else xs
                else:
                    parts = [(prev if (a, name) in self.back else now).get(a) for a in self.preds.get(name, [])]
                    parts = [p for p in parts if p is not None]
                    h = sum(parts[1:], parts[0]) if parts else np.zeros(1)
                if inputs is not None:
                    inputs[name] = tuple(np.shape(h)[1:])
                if name in self.neurons:
                    h = _step_neuron(self.neurons[name], h, states[name], self.dt)
                    if name in spikes:
                        spikes[name].append(h)
                else:
                    h = self.ops[name](h)
                now[name] = h
            readout.append(now[out_names[0]])
            prev = now
        return ({k: torch.as_tensor(np.stack(v)).float() for k, v in spikes.items()},
                torch.as_tensor(np.mean(readout, 0)).float().reshape(xs.shape[1] if temporal else xs.shape[0], -1))


def node_input_shapes(graph: nir.NIRGraph, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each node's per-sample input shape, found by running the graph once on zeros."""
    shapes: dict[str, tuple[int, ...]] = {}
    EulerReference(graph, 1.0).run(torch.zeros(1, *input_shape), 1, False, shapes)
    return shapes


# ---- the producer's own simulation ----

class LibraryReference:
    """A graph loaded in the library that wrote it, with that library's own defaults."""

    def __init__(self, graph: nir.NIRGraph, library: str, version: str) -> None:
        self.graph, self.library = graph, library
        self.name = {"sinabs": f"sinabs from_nir {version}",
                     "snntorch": f"snntorch import_from_nir {version}"}[library]

    def run(self, x: Tensor, timesteps: int, temporal: bool) -> tuple[dict[str, Tensor], Tensor]:
        from .interop import load_in_sinabs, load_in_snntorch, run_sinabs, run_snntorch

        graph = copy.deepcopy(self.graph)   # importers rewrite the graph they are given (snnTorch nests cycles)
        if self.library == "sinabs":
            return run_sinabs(load_in_sinabs(graph, timesteps, ours=False), x, timesteps, temporal)
        return run_snntorch(load_in_snntorch(graph, ours=False), x, timesteps, temporal)


class ProducerReference:
    """What ``producer_reference`` returns: ``name`` (written to verification.json as
    ``details.reference``) and ``run(samples) -> Reference``."""

    def __init__(self, sim: EulerReference | LibraryReference, fallback: EulerReference) -> None:
        self.sim, self.fallback, self.name = sim, fallback, sim.name

    def run(self, samples: Samples) -> Reference:
        """The reference on ``samples``; if the producing library cannot load or run the graph,
        the NIR definitions, and ``name`` says why."""
        T, temporal = samples.timesteps, samples.temporal
        axis = 1 if temporal else 0
        try:
            spikes, output = run_batched(lambda xb: self.sim.run(xb, T, temporal), samples.x, axis, 256, (1, 0))
        except Exception as exc:  # the library's own failure: reported in the name, not hidden
            if self.sim is self.fallback:
                raise
            why = (str(exc).splitlines() or [""])[0][:100]
            self.name = f"{self.fallback.name}; {self.sim.name} failed: {type(exc).__name__}: {why}"
            spikes, output = run_batched(lambda xb: self.fallback.run(xb, T, temporal), samples.x, axis, 256, (1, 0))
        return Reference(spikes, output, self.name)


def producer_reference(graph: nir.NIRGraph, producer: str | None = None) -> ProducerReference:
    """The reference a ``--from-nir --check`` compares the artefact with (module docstring).

    ``producer``: 'sinabs', 'snntorch', 'snn2hw', 'nir' (force the NIR definitions) or None
    (detect from the graph). The producing library is used when it is installed."""
    from .interop import library_versions

    who = (producer or detect_producer(graph) or "").lower()
    versions = library_versions()
    md = graph.metadata or {}
    dt = float(md["dt"]) if "dt" in md else {"snntorch": SNNTORCH_DT, "sinabs": 1.0}.get(who, 1.0)
    euler = EulerReference(graph, dt)
    if who in ("sinabs", "snntorch") and versions.get(who):
        return ProducerReference(LibraryReference(graph, who, versions[who]), euler)
    return ProducerReference(euler, euler)
