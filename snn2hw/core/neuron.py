"""The discrete LIF neuron, written once; every model, exporter reference and
noise simulation calls these functions.

Per step, with synaptic current ``c[t]`` (methods.md):

    hard reset:  u[t] = lam * u[t-1] * (1 - s[t-1]) + c[t]
    soft reset:  u[t] = lam * (u[t-1] - V_th * s[t-1]) + c[t]
    soft_nodecay: u[t] = lam * u[t-1] + c[t] - V_th * s[t-1]   (GSG Eq. 4; no NIR
                 name, so no exporter takes it; same as soft when lam = 1)
    spike:       s[t] = H(u[t] - V_th),  strict (u == V_th gives no spike)

``lam = 1`` is IAF. ``u[0] = 0``. The spike function maps ``x = u - V_th`` to
``s``; the default is the exact step, training passes a surrogate spike.

Neurons read from other frameworks' graphs (``export.from_nir``) may differ in four
ways, each an option of ``LIFParams`` whose default is the neuron above:

    v_reset      hard reset sets u to v_reset, not 0:  u[t] = lam * (u[t-1] (1 - f) + v_reset f) + c[t]
    spike_geq    fire on u >= V_th (sinabs, Speck) instead of u > V_th
    multi_spike  s = floor(u / V_th) where u > 0 (sinabs' MultiSpike: several spikes per
                 step, soft reset removes s V_th); f = [s > 0] in the hard reset
    v_min        after the reset, u is clipped from below: relu(u - v_min) + v_min,
                 written as sinabs computes it (min_v_mem) so that its graphs read bit for bit

The current-based (CUBA) neuron puts a first-order synaptic filter before the
same LIF update:

    synaptic current:  i[t] = alpha * i[t-1] + c[t],   i[0] = 0
    membrane, spike:   the LIF update above with i[t] in place of c[t]

``alpha = 0`` is the LIF neuron, exactly (``0 * i + c == c`` in floating point).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .surrogate import heaviside

# Our reset names and NIR's (graph metadata; nir 1.0.4 has no v_reset field): the one
# table that the exporters, importers and target mappings read.
NIR_RESET_NAMES = {"hard": "zero", "soft": "subtract"}
RESET_FROM_NIR = {nir_name: ours for ours, nir_name in NIR_RESET_NAMES.items()}
RESETS = tuple(NIR_RESET_NAMES)
RESET_BY_NAME = {**RESET_FROM_NIR, **{r: r for r in RESETS}}  # either spelling -> ours
# Training-side resets: the exportable ones plus GSG's (threshold subtracted undecayed).
LIF_RESETS = RESETS + ("soft_nodecay",)

SpikeFn = Callable[[Tensor], Tensor]


class LIFParams(NamedTuple):
    """Neuron constants; floats or tensors broadcastable to the state (mismatch)."""

    lam: float | Tensor = 0.5
    v_th: float | Tensor = 1.0
    reset: str = "hard"
    v_reset: float | Tensor = 0.0          # hard reset value (NIR v_reset)
    spike_geq: bool = False                # fire on u >= V_th instead of u > V_th
    multi_spike: bool = False              # s = floor(u / V_th) spikes per step where u > 0
    v_min: float | Tensor | None = None    # clip after the reset (sinabs min_v_mem)

    @property
    def native(self) -> bool:
        """True for snn2hw's own neuron (the module docstring's first equations): the
        options at their defaults, so the fused kernel and every target apply."""
        return (not self.spike_geq and not self.multi_spike and self.v_min is None
                and isinstance(self.v_reset, (int, float)) and self.v_reset == 0)


class LIFState(NamedTuple):
    u: Tensor  # membrane potential compared with V_th at the last step
    s: Tensor  # spikes emitted at the last step


def initial_state(like: Tensor) -> LIFState:
    zero = torch.zeros_like(like)
    return LIFState(zero, zero)


def lif_step(
    c: Tensor, state: LIFState, p: LIFParams, spike_fn: SpikeFn = heaviside
) -> tuple[Tensor, LIFState]:
    """One LIF update; returns the spikes and the new state."""
    if p.reset not in LIF_RESETS:
        raise ValueError(f"reset must be one of {LIF_RESETS}, got {p.reset!r}")
    if not p.native:
        u = p.lam * _carried(state, p) + c
    elif p.reset == "hard":
        u = p.lam * state.u * (1.0 - state.s) + c
    elif p.reset == "soft":
        u = p.lam * (state.u - p.v_th * state.s) + c
    else:  # soft_nodecay (GSG Eq. 4): the threshold is subtracted after the leak
        u = p.lam * state.u + c - p.v_th * state.s
    x = u - p.v_th
    if p.multi_spike:  # sinabs' MultiSpike, its exact expression (no surrogate gradient)
        s = (u > 0) * torch.div(u, p.v_th, rounding_mode="trunc")
    else:
        s = spike_fn(x)
        if p.spike_geq:  # x == 0 exactly when u == V_th: the tie the strict step leaves out
            s = torch.where(x == 0, torch.ones_like(s), s)
    return s, LIFState(u, s)


def _carried(state: LIFState, p: LIFParams) -> Tensor:
    """The membrane after the reset of the last step, before the leak (module docstring)."""
    if p.reset == "soft":
        kept = state.u - p.v_th * state.s
    else:
        fired = (state.s > 0).to(state.s.dtype) if p.multi_spike else state.s
        kept = state.u * (1.0 - fired) + p.v_reset * fired
    if p.v_min is not None:
        kept = torch.relu(kept - p.v_min) + p.v_min
    return kept


def lif_sequence(
    currents: Tensor,
    p: LIFParams,
    spike_fn: SpikeFn = heaviside,
    record_membrane: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Run ``lif_step`` over the leading time axis of ``currents`` (T, ...).

    Returns the spikes (T, ...) and, if asked, the membrane potentials u[t]
    that were compared with the threshold (T, ...).
    """
    state = initial_state(currents[0])
    spikes, membrane = [], []
    for c in currents:
        s, state = lif_step(c, state, p, spike_fn)
        spikes.append(s)
        if record_membrane:
            membrane.append(state.u)
    u_all = torch.stack(membrane) if record_membrane else None
    return torch.stack(spikes), u_all


class CUBAParams(NamedTuple):
    """CUBA constants: the synaptic decay ``alpha`` and the LIF constants after it."""

    alpha: float | Tensor = 0.5
    lam: float | Tensor = 0.5
    v_th: float | Tensor = 1.0
    reset: str = "hard"

    @property
    def lif(self) -> LIFParams:
        return LIFParams(self.lam, self.v_th, self.reset)


class CUBAState(NamedTuple):
    i: Tensor  # synaptic current of the last step
    u: Tensor  # membrane potential compared with V_th at the last step
    s: Tensor  # spikes emitted at the last step


def cuba_initial_state(like: Tensor) -> CUBAState:
    zero = torch.zeros_like(like)
    return CUBAState(zero, zero, zero)


def cuba_step(
    c: Tensor, state: CUBAState, p: CUBAParams, spike_fn: SpikeFn = heaviside
) -> tuple[Tensor, CUBAState]:
    """One CUBA update: filter the current, then ``lif_step`` on it."""
    i = p.alpha * state.i + c
    s, lif = lif_step(i, LIFState(state.u, state.s), p.lif, spike_fn)
    return s, CUBAState(i, lif.u, lif.s)


def synaptic_current(currents: Tensor, alpha: float | Tensor) -> Tensor:
    """``i[t] = alpha * i[t-1] + c[t]`` over the leading time axis (T, ...), ``i[0] = 0``.

    The filter does not depend on the spikes, so a feed-forward CUBA layer runs
    it over all of T first and then the LIF loop (fused or not) on ``i``: the
    same numbers, bit for bit, as ``cuba_step`` per step (the same expression,
    evaluated in the same order).
    """
    i = torch.zeros_like(currents[0])
    out = []
    for c in currents:
        i = alpha * i + c
        out.append(i)
    return torch.stack(out)
