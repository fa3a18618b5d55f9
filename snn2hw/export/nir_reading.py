"""What a NIR graph's nodes mean, by who wrote them: read once here for the torch rebuild
(``from_nir``) and for every target's mapper, so that all of them run the same neuron.

NIR leaves things to convention that producers fill in differently (docs/targets.md C):

| producer | LIF leak, per step | input gain | reset | spike | extras |
|---|---|---|---|---|---|
| ``snn2hw`` | node metadata ``lam`` | 1 | metadata | metadata | exact floats |
| ``nir`` | Euler step of dt: ``1 - dt/tau`` | ``r dt/tau`` | ``subtract`` | ``>`` | |
| ``snntorch`` | ``beta = 1 - dt/tau``, dt 1e-4 | ``r dt/tau`` (written 1) | ``zero`` (not exported) | ``>`` | |
| ``sinabs`` | ``exp(-1/tau)``, tau in steps | 1 (``r`` written 1, ignored) | ``subtract`` | MultiSpike | IF clipped at ``-v_threshold`` |

Graph metadata (``reset``, ``spike``, ``dt``) and node metadata override a producer's
defaults; a ``v_reset`` (a node attribute, as newer NIR writes it, or node metadata) is
a reset to that value. ``tau = inf`` is a neuron without leak (lam = 1) whose input gain
is the limit of ``r dt / tau`` along the writer's convention ``r = tau/dt`` (snnTorch's
``Leaky(beta=1)``), i.e. 1. Every parameter is checked here (finite, V_th > 0,
0 <= lam <= 1): a value with no meaning is refused naming the node and the fix, never
turned into NaN or integer garbage further on.

The producer is the graph metadata's ``producer`` ("snn2hw ...", "snntorch", "sinabs",
"nir"), which ``export.api`` sets from ``--producer``; a graph without metadata whose
neurons have sinabs' layout (IF nodes, every r = 1, v_leak = 0, tau >= 1 step) is read
as sinabs' (``detect_producer``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np
import torch

from ..core.neuron import RESET_FROM_NIR
from ..errors import ExportError
from .to_nir import DT   # snnTorch's fixed dt, ours too; graphs without metadata 'dt' are read with it

PRODUCERS = ("nir", "snntorch", "sinabs")   # --producer choices (snn2hw graphs say their own)
INPUT_ENCODINGS = {"direct": "direct", "events": "temporal"}   # --input-encoding -> metadata
SPIKE_RULES = (">", ">=")
# per producer: (reset, spike rule, MultiSpike, IF clip at -v_threshold, dt when no metadata)
_DEFAULTS = {"snn2hw": ("subtract", ">", False, False, DT), "nir": ("subtract", ">", False, False, DT),
             "snntorch": ("zero", ">", False, False, DT), "sinabs": ("subtract", ">=", True, True, 1.0)}


def where(name: str) -> str:
    """'layer 3 (NIR node 'layers_3_out')' for our node names (and the older 'layers.3.out'),
    else the node name."""
    m = re.match(r"layers[._](\d+)", name)
    return f"layer {m.group(1)} (NIR node {name!r})" if m else f"NIR node {name!r}"


def producer_of(graph: nir.NIRGraph) -> str:
    """One of ``_DEFAULTS``: the metadata's ``producer``, else ``detect_producer``."""
    said = str((graph.metadata or {}).get("producer", "")).strip().lower()
    for name in _DEFAULTS:
        if said.startswith(name):
            return name
    return detect_producer(graph)


def detect_producer(graph: nir.NIRGraph) -> str:
    """'sinabs' for a graph without reading metadata laid out as sinabs writes it (nodes
    named 'input', 'output' and by torch module path '0', '1.2'; at least one IF, which
    snnTorch never writes; every r == 1, v_leak == 0 and tau >= 1, a time constant in
    steps); else 'nir'. Conservative: --producer wins."""
    if any(k in (graph.metadata or {}) for k in ("producer", "dt", "reset", "spike", "lam")):
        return "nir"   # the writer said how to read it
    for name, node in graph.nodes.items():   # sinabs names nodes by torch module path
        io_name = {nir.Input: "input", nir.Output: "output"}.get(type(node))
        sinabs_name = name == io_name if io_name else re.fullmatch(r"\d+(\.\w+)*", name) is not None
        if not sinabs_name:
            return "nir"
    neurons = [n for n in graph.nodes.values() if isinstance(n, (nir.IF, nir.LIF))]
    if not any(isinstance(n, nir.IF) for n in neurons) or not all(isinstance(n, (nir.IF, nir.LIF)) for n in neurons):
        return "nir"
    for n in neurons:
        if not np.all(np.asarray(n.r, np.float64) == 1.0):
            return "nir"
        if isinstance(n, nir.LIF) and not (np.all(np.asarray(n.v_leak, np.float64) == 0)
                                           and np.all(np.asarray(n.tau, np.float64) >= 1)):
            return "nir"
    return "sinabs"


def _array(name: str, node: Any, attr: str) -> np.ndarray:
    """A node field as float64; ExportError naming the node if it is not a finite number."""
    try:
        a = np.asarray(getattr(node, attr), dtype=np.float64)
    except (TypeError, ValueError):
        raise ExportError(f"{where(name)}: {attr} is not numeric; fix the graph's writer") from None
    return a


def _refuse_nonfinite(name: str, kind: str, attr: str, a: np.ndarray, fix: str) -> None:
    if not np.all(np.isfinite(a)):
        bad = a[~np.isfinite(a)].ravel()[0]
        raise ExportError(f"{where(name)} ({kind}): {attr} = {bad} is not a finite number; {fix}")


def check_weights(name: str, node: Any) -> None:
    """Refuse a synapse node (Affine, Linear, Conv, Scale) with a NaN or infinite value."""
    kind = type(node).__name__
    for attr in ("weight", "bias", "scale"):
        if getattr(node, attr, None) is not None:
            _refuse_nonfinite(name, kind, attr, _array(name, node, attr),
                              "fix the training run that produced it (weights must be finite)")


def _scalar_or_tensor(a: np.ndarray) -> float | torch.Tensor:
    a = np.asarray(a, dtype=np.float64)
    if a.size and np.all(a == a.flat[0]):
        return float(a.flat[0])
    return torch.as_tensor(a, dtype=torch.float32)


@dataclass
class NeuronReading:
    """A LIF/IF node as ``core.neuron`` runs it: ``c = gain * I + drive`` feeds
    ``LIFParams(lam, v_th, reset, v_reset, spike_geq, multi_spike, v_min)``.
    Arrays are float64 shaped like the node's neurons or scalars."""

    lam: float | torch.Tensor
    v_th: float | torch.Tensor
    gain: np.ndarray
    drive: np.ndarray
    reset: str                                  # "hard" | "soft"
    v_reset: float | torch.Tensor = 0.0
    spike_geq: bool = False
    multi_spike: bool = False
    v_min: float | torch.Tensor | None = None
    producer: str = "nir"
    notes: list[str] = field(default_factory=list)

    @property
    def unit_input(self) -> bool:
        """Whether the input reaches the neuron unchanged (gain 1, no drive)."""
        return bool(np.allclose(self.gain, 1.0, rtol=1e-6, atol=0) and np.all(self.drive == 0))

    def differences(self) -> list[str]:
        """How this neuron differs from snn2hw's own (strict, one spike, reset to 0, no clip):
        what a target without these options would have to approximate."""
        out = []
        if self.reset == "soft":
            out.append("reset by subtraction")
        if self.reset == "hard" and not (isinstance(self.v_reset, float) and self.v_reset == 0):
            out.append(f"reset to v_reset = {self.v_reset} (not 0)")
        if self.multi_spike:
            out.append("several spikes per step (MultiSpike)")
        if self.v_min is not None:
            out.append("membrane clipped from below (min_v_mem)")
        return out


def read_neuron(name: str, node: Any, graph_meta: dict[str, Any], producer: str) -> NeuronReading:
    """``node`` (LIF or IF) as its ``producer`` meant it (module docstring); ExportError
    naming the node, the reason and the fix for values with no meaning."""
    kind = type(node).__name__
    local = dict(getattr(node, "metadata", None) or {})
    reset_default, spike_default, multi, clip_if, dt_default = _DEFAULTS[producer]
    v_th_raw = _array(name, node, "v_threshold")
    notes: list[str] = []
    if "lam" in local:  # written by snn2hw: the exact floats, input gain 1
        lam_a = np.asarray(float(local["lam"]))
        v_th_a = np.asarray(float(local.get("v_th", v_th_raw.flat[0])))
        gain, drive = np.ones(()), np.zeros(())
    elif isinstance(node, nir.IF):
        lam_a, v_th_a, drive = np.ones(()), v_th_raw, np.zeros(())
        gain = _array(name, node, "r")
        _refuse_nonfinite(name, kind, "r", gain, "write the input gain as a finite r")
        if producer == "sinabs":
            gain = _sinabs_r(name, kind, gain)
    else:
        lam_a, gain, drive = _leak(name, node, graph_meta, producer, dt_default, notes)
        v_th_a = v_th_raw
    _refuse_nonfinite(name, kind, "v_threshold", v_th_a, "give a finite threshold > 0")
    if np.any(v_th_a <= 0):
        raise ExportError(f"{where(name)} ({kind}): v_threshold = {v_th_a.min():g} <= 0 fires on no "
                          "input at all; give a threshold > 0")
    if not np.all((lam_a >= 0) & (lam_a <= 1)):   # NaN included; tau < dt was refused before
        raise ExportError(f"{where(name)} ({kind}): node metadata lam = {lam_a.ravel()[0]:g} is not a "
                          "leak per step in [0, 1]; fix the metadata 'lam'")
    for attr, a in (("input gain", gain), ("v_leak drive", drive)):
        _refuse_nonfinite(name, kind, attr, a, "give finite r and v_leak")
    rule = str(local.get("spike", graph_meta.get("spike", spike_default)))
    if rule not in SPIKE_RULES:
        raise ExportError(f"{where(name)}: spike rule {rule!r} is unknown; metadata 'spike' must be "
                          f"one of {SPIKE_RULES}")
    reset, v_reset = _reset(name, node, local, graph_meta, reset_default)
    v_th = _scalar_or_tensor(v_th_a)
    clip = (-v_th if isinstance(v_th, float) else -v_th.clone()) if clip_if and isinstance(node, nir.IF) else None
    return NeuronReading(_scalar_or_tensor(lam_a), v_th, gain, drive, reset, v_reset,
                         rule == ">=" or multi, multi, clip, producer, notes)


def read_cuba(name: str, node: Any, graph_meta: dict[str, Any],
              producer: str) -> tuple[float | torch.Tensor, NeuronReading]:
    """A CubaLIF node as ``core.neuron.cuba_step`` runs it: ``(alpha, reading)`` with
    ``i <- alpha i + gain * I`` and the membrane of ``reading`` (``read_neuron``) after it.

    snn2hw graphs: node metadata ``alpha`` and ``lam`` (exact floats, gain 1). Otherwise
    NIR's Euler step at dt: ``alpha = 1 - dt/tau_syn`` and the input gain
    ``(dt/tau_syn) w_in (dt/tau_mem) r`` moved before the (linear) filter; ``v_leak`` must be 0
    (its drive enters after the filter, where no input gain can put it)."""
    local = dict(getattr(node, "metadata", None) or {})
    dt = float(graph_meta.get("dt", _DEFAULTS[producer][4]))
    tau_syn, w_in, v_leak = (_array(name, node, a) for a in ("tau_syn", "w_in", "v_leak"))
    if np.any(v_leak != 0):
        raise ExportError(f"{where(name)} (CubaLIF): v_leak != 0 drives the membrane behind the synaptic "
                          "filter, which snn2hw's CUBA neuron has no term for; write v_leak = 0")
    if "alpha" in local:
        alpha_a, syn_gain = np.asarray(float(local["alpha"])), np.ones(())
    else:
        _refuse_nonfinite(name, "CubaLIF", "tau_syn", tau_syn, "give a finite tau_syn >= dt")
        _refuse_nonfinite(name, "CubaLIF", "w_in", w_in, "give a finite w_in")
        if np.any(tau_syn < dt):
            raise ExportError(f"{where(name)} (CubaLIF): tau_syn {tau_syn.min():g} < dt {dt:g} (alpha < 0); "
                              "give tau_syn >= dt or the graph metadata {'dt': ...} in the writer's unit")
        alpha_a, syn_gain = 1.0 - dt / tau_syn, dt / tau_syn * w_in
    membrane = nir.LIF(tau=_array(name, node, "tau_mem"), r=_array(name, node, "r") * syn_gain,
                       v_leak=v_leak, v_threshold=_array(name, node, "v_threshold"), metadata=local)
    if getattr(node, "v_reset", None) is not None:
        membrane.metadata = {**local, "v_reset": node.v_reset}
    reading = read_neuron(name, membrane, graph_meta, producer)
    if not np.all((alpha_a >= 0) & (alpha_a < 1)):
        raise ExportError(f"{where(name)} (CubaLIF): alpha = {alpha_a.ravel()[0]:g} is not a synaptic "
                          "decay per step in [0, 1); fix tau_syn or the metadata 'alpha'")
    return _scalar_or_tensor(alpha_a), reading


def _sinabs_r(name: str, kind: str, r: np.ndarray) -> np.ndarray:
    """sinabs writes r = 1 and ignores r when reading: any other r is not sinabs' graph."""
    if not np.all(r == 1.0):
        raise ExportError(f"{where(name)} ({kind}): r = {r.ravel()[0]:g}, but sinabs writes r = 1 and "
                          "ignores r; this is not a sinabs graph: drop --producer sinabs")
    return np.ones(())


def _leak(name: str, node: Any, meta: dict[str, Any], producer: str, dt_default: float,
          notes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lam, input gain, drive) of a LIF node without snn2hw metadata."""
    kind = "LIF"
    tau, r, v_leak = (_array(name, node, a) for a in ("tau", "r", "v_leak"))
    for attr, a in (("tau", tau), ("r", r), ("v_leak", v_leak)):
        if np.any(np.isnan(a)):
            _refuse_nonfinite(name, kind, attr, a, "fix the graph's writer")
    _refuse_nonfinite(name, kind, "v_leak", v_leak, "give a finite v_leak")
    if np.any(tau <= 0):
        raise ExportError(f"{where(name)} (LIF): tau = {tau.min():g} <= 0 has no meaning; give tau > 0 "
                          "(tau = inf for no leak)")
    if producer == "sinabs":  # tau in steps, v = exp(-1/tau) v + I, computed in float32 as sinabs does
        if np.any(v_leak != 0):
            raise ExportError(f"{where(name)} (LIF): v_leak != 0, which sinabs cannot write or read; "
                              "drop --producer sinabs")
        _sinabs_r(name, kind, r)
        lam = torch.exp(-1.0 / torch.as_tensor(tau, dtype=torch.float32)).double().numpy()
        return lam, np.ones(()), np.zeros(())
    dt = float(meta.get("dt", dt_default))
    if not (math.isfinite(dt) and dt > 0):
        raise ExportError(f"NIR metadata dt = {dt} is not a positive number; give the time step in "
                          "the writer's unit")
    if np.any(tau < dt):
        raise ExportError(f"{where(name)} (LIF): tau {tau.min():g} < dt {dt:g}, so the Euler step is "
                          "unstable (lam < 0); give the graph metadata {'dt': ...} in the writer's unit")
    leakless = np.isinf(tau)
    if np.any(leakless & np.isfinite(r)):
        raise ExportError(f"{where(name)} (LIF): tau = inf with finite r gives input gain r dt/tau = 0 "
                          "(the neuron never moves); write IF(r) for a neuron without leak, or "
                          "r = tau/dt = inf as snnTorch does")
    if np.any(np.isinf(r) & ~leakless):
        raise ExportError(f"{where(name)} (LIF): r = inf with finite tau is an infinite input gain; "
                          "give a finite r")
    k = np.where(leakless, 0.0, dt / np.where(leakless, 1.0, tau))
    gain = np.where(leakless, 1.0, k * np.where(leakless, 0.0, r))
    if np.any(leakless):
        notes.append(f"{where(name)}: tau = r = inf read as no leak (lam = 1) with input gain 1, the "
                     "limit of r dt/tau along r = tau/dt (snnTorch's Leaky(beta=1))")
    return 1.0 - k, gain, k * v_leak


def _reset(name: str, node: Any, local: dict, meta: dict, default: str) -> tuple[str, float | torch.Tensor]:
    """(our reset name, hard reset value): node metadata, a v_reset, graph metadata, default."""
    v_reset = getattr(node, "v_reset", None)
    if v_reset is None:
        v_reset = local.get("v_reset")
    said = local.get("reset", meta.get("reset") if v_reset is None else "zero")
    said = str(said if said is not None else default)
    reset = RESET_FROM_NIR.get(said, said if said in ("hard", "soft") else None)
    if reset is None:
        raise ExportError(f"{where(name)}: metadata reset = {said!r}; expected 'zero' or 'subtract'")
    if v_reset is None or reset == "soft":
        return reset, 0.0
    try:
        a = np.asarray(v_reset, dtype=np.float64)
    except (TypeError, ValueError):
        raise ExportError(f"{where(name)}: v_reset is not numeric; fix the graph's writer") from None
    _refuse_nonfinite(name, type(node).__name__, "v_reset", a, "give a finite reset value")
    return reset, _scalar_or_tensor(a)


@dataclass
class InputReading:
    """The per-sample input shape of a graph and what reading it took."""

    shape: tuple[int, ...]
    timesteps: int | None = None        # a time axis found in the Input shape (events)
    notes: list[str] = field(default_factory=list)


_SAME_RANK = (nir.SumPool2d, nir.AvgPool2d, nir.IF, nir.LIF, nir.Scale)


def read_input(graph: nir.NIRGraph) -> InputReading:
    """The Input node's shape without a batch axis (snnTorch writes ``(1, 1, 8, 8)`` before
    a Conv2d taking ``(1, 8, 8)``) or, with metadata ``input_encoding: temporal``, a time
    axis (sinabs writes ``(T, N)`` for (B, T, N) samples); ExportError when the Input has a
    leading dim the first synapse cannot take."""
    starts = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(starts) != 1:
        raise ExportError(f"the NIR graph has {len(starts)} Input nodes; snn2hw needs exactly one")
    start = starts[0]
    types = graph.nodes[start].input_type
    shape = tuple(int(v) for v in np.asarray(next(iter(types.values()))).reshape(-1))
    first = _first_synapse(graph, start)
    if first is None:
        return InputReading(shape)
    name, node, rank, takes = first
    if len(shape) != rank + 1 or not takes(shape[1:]):
        return InputReading(shape)
    lead = shape[0]
    desc = f"{where(name)} ({type(node).__name__}) takes {rank}-D samples"
    if lead == 1:
        return InputReading(shape[1:], None, [f"{where(start)}: Input shape {shape} includes a batch "
                                              f"axis ({desc}); read as {shape[1:]}"])
    if (graph.metadata or {}).get("input_encoding") == "temporal":
        return InputReading(shape[1:], lead, [f"{where(start)}: Input shape {shape} leads with time "
                                              f"T = {lead} (events; {desc}); read as {shape[1:]}"])
    raise ExportError(f"{where(start)}: Input shape {shape} has a leading dim {lead} more than "
                      f"{where(name)} ({type(node).__name__}) takes; if it is time (sinabs writes (T, N)), pass --input-encoding events; if it "
                      "is the batch axis, write the Input shape without it")


def _first_synapse(graph: nir.NIRGraph, start: str) -> tuple | None:
    """(name, node, sample rank it takes, shape check) of the first weight node on the path
    from ``start`` through rank-preserving nodes; None if a Flatten or a branch comes first."""
    succ: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    cur = start
    for _ in range(len(graph.nodes)):
        nxt = succ.get(cur, [])
        if len(nxt) != 1:
            return None
        cur = nxt[0]
        node = graph.nodes[cur]
        if isinstance(node, (nir.Affine, nir.Linear)):
            n_in = int(np.asarray(node.weight).shape[1])
            return cur, node, 1, lambda s, n=n_in: int(np.prod(s)) == n
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            c_in = int(np.asarray(node.weight).shape[1]) * int(node.groups)
            rank = 2 if isinstance(node, nir.Conv1d) else 3
            return cur, node, rank, lambda s, c=c_in: s[0] == c
        if not isinstance(node, _SAME_RANK):
            return None
    return None
