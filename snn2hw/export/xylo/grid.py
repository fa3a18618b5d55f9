"""Xylo's QAT grid: the values ``mapping.build_xylo_net`` writes, with straight-through rounding,
and the Xylo neuron's integer update (``XyloStep``) for QAT to run instead of the float CUBA step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ...core.neuron import CUBAState
from ..grid import Quantised, Site, ste_round
from .limits import MAX_HIDDEN_SPIKES, STATE_MAX, STATE_MIN, THRESHOLD_MAX, WEIGHT_MAX
from .mapping import (OUTPUT_DASH_MEM, OUTPUT_DASH_SYN, dash_of, input_levels, leak_of, neuron_gain,
                      quantise_rows)

ASSUMED_ALPHA = 0.5   # Xylo's fastest synapse (dash_syn = 1), when the site does not say


def _ste(exact: Tensor, smooth: Tensor) -> Tensor:
    """``exact`` forward, the gradient of ``smooth`` backward."""
    return smooth + (exact - smooth).detach()


def _sat(x: Tensor) -> Tensor:
    return x.clamp(STATE_MIN, STATE_MAX)


def _decayed(v: Tensor, dash: Tensor) -> Tensor:
    """``v - decay(v, dash)`` as xylosim computes it (``v >> dash``, at least one unit towards
    0; emulator.decay), backward as ``v (1 - 2^-dash)``."""
    shift = torch.floor(v * 2.0 ** -dash)
    shift = torch.where((shift == 0) & (v != 0), torch.sign(v), shift)
    return _ste(v - shift, v * (1.0 - 2.0 ** -dash))


@dataclass(frozen=True)
class XyloStep:
    """One Xylo hidden neuron step (emulator.py) in integer units, on states kept in float units
    (``i = Isyn / G``, ``u = Vmem / G`` before the reset, ``s`` the spike count):

        Isyn = sat(Isyn + round(G c / alpha_eff));  Isyn -= decay(Isyn, dash_syn)
        Vmem = sat(Vmem - n[t-1] threshold);  Vmem = sat(Vmem + sat(Isyn - decay(Vmem, dash_mem)))
        n = min(Vmem // threshold, 31) where Vmem >= threshold, else 0

    ``c`` is the current the QAT synapses deliver (their grid values in float units: ``G c /
    alpha_eff`` is the integer sum the chip adds). The count passes the surrogate's gradient
    of ``(Vmem - theta) / G`` (threshold = theta + 1, theta = G V_th) plus ``1 / threshold`` per
    unit of Vmem above the threshold (bursts). Xylo saturates after
    each addition, this step after the sum: they differ only where the emulator reports
    saturations."""

    gain: Tensor          # G per neuron
    alpha_eff: Tensor
    dash_syn: Tensor
    dash_mem: Tensor
    threshold: Tensor     # theta + 1, integer units

    def __call__(self, c: Tensor, state: CUBAState,
                 spike_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, CUBAState]:
        g = self.gain.to(c.dtype)
        isyn = ste_round(state.i * g)                       # exact integers (|state| <= 2^15)
        isyn = _decayed(_sat(isyn + ste_round(c * g / self.alpha_eff.to(c.dtype))), self.dash_syn)
        v = _sat(ste_round(state.u * g) - state.s * self.threshold)
        v = _sat(v + _sat(isyn - (v - _decayed(v, self.dash_mem))))
        count = torch.where(v >= self.threshold, torch.clamp(torch.floor(v / self.threshold), max=MAX_HIDDEN_SPIKES),
                            torch.zeros_like(v))
        # backward: the surrogate for the first spike, straight through the count's floor above it
        # (a bursting neuron's count grows by one per threshold of Vmem; the surrogate alone is 0 there)
        more = torch.clamp(v / self.threshold - 1.0, 0.0, MAX_HIDDEN_SPIKES - 1.0)
        s = _ste(count, spike_fn((v - (self.threshold - 1)) / g) + more)
        return s, CUBAState(isyn / g, v / g, s)


class XyloGrid:
    """Xylo (snn2hw.export.xylo.mapping): per neuron a gain G with 8-bit weights
    ``round(G W g / alpha_eff)`` and an integer threshold ``G V_th``; leaks on the bit-shift grid
    ``1 - 2^-dash``; the readout's 8-bit weights ``round(G_out W)`` per class. The input becomes
    ``round(L x) / L`` events with L = floor(15 / max |x|) (``input_levels`` follows
    ``input_range``, which QAT sets from the data).

    A recurrent layer's gain covers its input, recurrent and bias weights together (the site's
    ``weight_rec``), as the mapping's. A CUBA site (``alpha`` given) also gets the Xylo neuron
    step (``XyloStep``), so that the QAT forward computes the chip's spikes."""

    def __init__(self) -> None:
        self.input_range: tuple[float, float] = (0.0, 1.0)

    @property
    def input_levels(self) -> int:
        return input_levels(self.input_range)

    def quantise(self, site: Site) -> Quantised:
        shape, b = site.weight.shape, site.bias
        w = site.weight.reshape(shape[0], -1)          # one row per output neuron (conv: per channel)
        if site.v_th is None:   # readout: 8-bit per class (the exporter may lower G_out for T)
            row = w.detach().abs().amax(1).double().cpu().numpy()
            g = torch.as_tensor(np.where(row > 0, WEIGHT_MAX / np.where(row > 0, row, 1), 1.0),
                                dtype=w.dtype, device=w.device)
            return Quantised((ste_round(w * g[:, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX) / g[:, None]).reshape(shape), b)
        dash_syn = dash_of(site.alpha if site.alpha is not None else ASSUMED_ALPHA)
        a_eff = float(leak_of(dash_syn))
        n, w_rec = w.shape[0], site.weight_rec
        row = w.detach().abs().amax(1).double().cpu().numpy() * site.input_unit
        if w_rec is not None:
            row = np.maximum(row, w_rec.detach().abs().amax(1).double().cpu().numpy())
        row = np.maximum(row, b.detach().abs().double().cpu().numpy())
        theta, gain = neuron_gain(row, np.full(n, float(site.v_th)), np.full(n, a_eff))
        as_t = lambda a: torch.as_tensor(a, dtype=w.dtype, device=w.device)  # noqa: E731
        g_t, a_t = as_t(gain), torch.full((n,), a_eff, dtype=w.dtype, device=w.device)
        scale = as_t(gain * site.input_unit / a_eff)
        w_q = quantise_rows(w, g_t, site.input_unit, a_t, ste_round) / scale[:, None]
        rec_q = None if w_rec is None else quantise_rows(w_rec, g_t, 1.0, a_t, ste_round) / as_t(gain / a_eff)[:, None]
        b_scale = as_t(gain / a_eff)
        b_q = ste_round(b * b_scale).clamp(-WEIGHT_MAX, WEIGHT_MAX) / b_scale
        lam = None if site.lam is None else float(leak_of(dash_of(site.lam)))
        step = None
        if site.alpha is not None:
            dash_mem = dash_of(site.lam if site.lam is not None else 0.0)
            step = XyloStep(g_t, as_t(a_eff), as_t(float(dash_syn)), as_t(float(dash_mem)), as_t(theta + 1.0))
        # V_th on the grid is theta / G = V_th exactly (G = theta / V_th): unchanged
        return Quantised(w_q.reshape(shape), b_q, float(site.v_th), lam, rec_q, step)


def readout_step(gain: Tensor) -> XyloStep:
    """The output neurons as ``mapping.build_xylo_net`` writes them: integrators (``dash_syn_out``
    1, ``dash_mem_out`` 15, threshold 32767: no spike below saturation) adding ``round(G_out c)``
    per step, ``c`` the current of readout weights ``round(G_out W) / G_out`` (``alpha_eff`` 1:
    the mapping does not divide the readout's weights by the synapse's leak). After T steps the
    host's logits are ``(Vmem + Isyn) / (G_out T) + b`` = ``(state.u + state.i) / T + b``."""
    one = torch.ones_like(gain)
    return XyloStep(gain, one, one * OUTPUT_DASH_SYN, one * OUTPUT_DASH_MEM, one * THRESHOLD_MAX)
