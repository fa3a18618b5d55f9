"""Our NIR files in the libraries people load them with: sinabs ``from_nir`` and snnTorch
``import_from_nir``, and running what they build on our sample layout.

``ours=True`` (the default) applies what NIR cannot say and these importers otherwise guess
differently (measured in docs/interop.md):

* sinabs: the graph is read in its sinabs flavour (``to_nir.sinabs_flavour``: tau in steps,
  ``v >= nextafter(V_th)``, avg pool folded), then per neuron ``SingleSpike``,
  ``MembraneReset()`` (hard) or ``MembraneSubtract(subtract_value=V_th)`` (soft) and
  ``min_v_mem=None``; sinabs' own defaults are MultiSpike, subtract and an IAF floor at -V_th.
* snnTorch: sum pooling is read as AvgPool2d with k^2 moved into the next weights (the
  importer has no SumPool2d); ``Flatten`` gets the batch axis back (the importer passes NIR's start_dim
  unchanged), ``IF`` becomes ``Leaky(beta=1)`` (the importer writes beta=0.9 and a
  tuple-returning neuron) and the reset is the node's metadata (the importer always
  resets to zero); node names with '.' (files before snn2hw 0.x wrote ``layers.3``) are
  renamed to '_' (nirtorch's ModuleDict refuses '.').

``ours=False`` loads the graph as the library does by itself: the producer's own reading,
used as the ``--check`` reference for graphs sinabs or snnTorch wrote.

Both libraries are imported inside the functions (optional dependencies).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError
from .to_nir import graph_copy, pooling_as, sinabs_flavour

GraphSource = str | Path | nir.NIRGraph


def _graph(source: GraphSource) -> nir.NIRGraph:
    return source if isinstance(source, nir.NIRGraph) else nir.read(Path(source))


def _undotted(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Node names with '.' written as '_' (how snn2hw names nodes since it met nirtorch 2.0)."""
    if not any("." in n for n in graph.nodes):
        return graph
    return graph_copy(graph, lambda n: n.replace(".", "_"))


def _neuron_setting(graph: nir.NIRGraph, name: str) -> tuple[float, str]:
    """(V_th, 'zero' | 'subtract') of a neuron node: its metadata, else the graph's."""
    node = graph.nodes[name]
    meta = {**(graph.metadata or {}), **(getattr(node, "metadata", {}) or {})}
    v_th = float(meta.get("v_th", float(np.asarray(node.v_threshold).reshape(-1)[0])))
    return v_th, str(meta.get("reset", "subtract"))


# ---- sinabs ----

def load_in_sinabs(source: GraphSource, timesteps: int, ours: bool = True) -> nn.Module:
    """``sinabs.from_nir`` of a NIR file or graph, for inputs of ``timesteps`` steps.

    ``ours``: read our graph in its sinabs flavour and set the three neuron settings NIR
    cannot carry (module docstring), so that sinabs computes what snn2hw computes. The
    returned module takes (B*T, ...) sample-major inputs; ``run_sinabs`` does that.
    Each neuron module gets ``nir_node`` (its node name)."""
    import sinabs
    from sinabs.activation import MembraneReset, MembraneSubtract, SingleSpike

    graph = _undotted(_graph(source))
    if ours and (graph.metadata or {}).get("flavour") != "sinabs":
        graph = sinabs_flavour(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = sinabs.from_nir(graph, num_timesteps=int(timesteps))
    for name, node in graph.nodes.items():
        if not isinstance(node, (nir.IF, nir.LIF)):
            continue
        m = getattr(net, name)
        m.nir_node = name
        if ours:
            v_th, reset = _neuron_setting(graph, name)
            m.spike_fn = SingleSpike
            m.reset_fn = MembraneReset() if reset == "zero" else MembraneSubtract(subtract_value=v_th)
            m.min_v_mem = None
    return net


def run_sinabs(net: nn.Module, x: Tensor, timesteps: int, temporal: bool = False
               ) -> tuple[dict[str, Tensor], Tensor]:
    """Run a ``load_in_sinabs`` module on ``x`` (static (B, ...) repeated T times, or
    time-major (T, B, ...)): spikes per neuron node (T, B, ...) and the readout (B, K), the
    mean over T of the last node's output. States are reset first."""
    T = int(timesteps)
    frames = x if temporal else x.unsqueeze(0).expand(T, *x.shape)
    B = frames.shape[1]
    flat = frames.transpose(0, 1).reshape(B * T, *frames.shape[2:])   # sinabs: sample-major
    rec: dict[str, Tensor] = {}
    hooks = []
    for m in net.modules():
        if hasattr(m, "nir_node"):
            if hasattr(m, "reset_states"):
                m.reset_states()
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, key=m.nir_node: rec.__setitem__(key, o.detach())))
    try:
        with torch.no_grad():
            out = net(flat.float())
    finally:
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, tuple) else out
    spikes = {k: v.reshape(B, T, *v.shape[1:]).transpose(0, 1) for k, v in rec.items()}
    return spikes, out.reshape(B, T, -1).mean(1)


# ---- snnTorch ----

def load_in_snntorch(source: GraphSource, ours: bool = True) -> nn.Module:
    """snnTorch's ``import_from_nir`` of a NIR file or graph (its prints silenced).

    ``ours``: fix the importer's Flatten, IF and reset readings (module docstring) so that
    snnTorch computes what snn2hw computes. Neuron modules get ``nir_node``; run it with
    ``run_snntorch`` (one call per step, states in the modules)."""
    import snntorch as snn
    from snntorch.import_nir import import_from_nir

    graph = _undotted(_graph(source))
    if ours:
        graph = pooling_as(graph, "avg")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = import_from_nir(graph)
    for name, node in graph.nodes.items():
        m = net.get_submodule(name) if hasattr(net, name) else None
        if m is None:
            continue
        if ours and isinstance(node, nir.Flatten):
            m.start_dim = m.start_dim + 1 if m.start_dim >= 0 else m.start_dim
            m.end_dim = m.end_dim + 1 if m.end_dim >= 0 else m.end_dim
        if not isinstance(node, (nir.IF, nir.LIF)):
            continue
        if ours:
            v_th, reset = _neuron_setting(graph, name)
            if isinstance(node, nir.IF):
                m = snn.Leaky(beta=1.0, threshold=v_th, init_hidden=True, reset_delay=False)
                setattr(net, name, m)
            m.reset_mechanism = reset
            # Leaky binds its update in __init__: the setter above does not rebind it
            m.state_function = m._base_zero if reset == "zero" else m._base_sub
        m.nir_node = name
    return net


def run_snntorch(net: nn.Module, x: Tensor, timesteps: int, temporal: bool = False
                 ) -> tuple[dict[str, Tensor], Tensor]:
    """Run a ``load_in_snntorch`` module step by step on ``x`` (static (B, ...) or time-major
    (T, B, ...)): spikes per neuron node (T, B, ...) and the mean readout (B, K)."""
    neurons = [m for m in net.modules() if hasattr(m, "nir_node")]
    for m in neurons:
        m.reset_mem()
    rec: dict[str, list[Tensor]] = {m.nir_node: [] for m in neurons}
    hooks = [m.register_forward_hook(
        lambda mod, i, o, key=m.nir_node: rec[key].append((o[0] if isinstance(o, tuple) else o).detach()))
        for m in neurons]
    outs = []
    try:
        with torch.no_grad():
            for t in range(int(timesteps)):
                y = net((x[t] if temporal else x).float())
                outs.append((y[0] if isinstance(y, tuple) else y).float())
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.stack(v).float() for k, v in rec.items()}, torch.stack(outs).mean(0)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries this module loads graphs in ('' when absent)."""
    from importlib import metadata

    out = {}
    for pkg in ("sinabs", "snntorch", "nirtorch", "nir"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = ""
    return out


def require(pkg: str) -> Any:
    """Import ``pkg`` or raise ExportError naming it (sinabs and snnTorch are optional)."""
    try:
        return __import__(pkg)
    except ImportError:
        raise ExportError(f"{pkg} is not installed; install it to load NIR graphs in it") from None
