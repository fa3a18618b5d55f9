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
    if p.reset == "hard":
        u = p.lam * state.u * (1.0 - state.s) + c
    elif p.reset == "soft":
        u = p.lam * (state.u - p.v_th * state.s) + c
    elif p.reset == "soft_nodecay":
        u = p.lam * state.u + c - p.v_th * state.s
    else:
        raise ValueError(f"reset must be one of {LIF_RESETS}, got {p.reset!r}")
    s = spike_fn(u - p.v_th)
    return s, LIFState(u, s)


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
