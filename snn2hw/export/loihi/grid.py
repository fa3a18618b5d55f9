"""Loihi's QAT grid: the values the exporters write (``mapping.build_loihi_net`` for chains,
``graph.build_loihi_graph`` for CUBA neurons and recurrence), with straight-through rounding, and
Lava's integer CUBA update (``LoihiCubaStep``) for QAT to run instead of the float CUBA step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ...core.neuron import CUBAState
from ..grid import Quantised, Site, ste_round
from .emulator import DECAY_UNIT, SHIFT, UV_MAX
from .mapping import INPUT_LEVELS, INPUT_RANGE, lam_effective, loihi_grid, quantise_bias, quantise_weight, v_decay_of


def _decayed(x: Tensor, decay: int) -> Tensor:
    """``trunc0(x (4096 - decay) / 4096)`` as Lava computes it (emulator.trunc_decay; exact in
    float64 for |x| < 2^24), backward as the multiplication."""
    smooth = x * ((DECAY_UNIT - decay) / DECAY_UNIT)
    return smooth + (torch.trunc(smooth) - smooth).detach()


@dataclass(frozen=True)
class LoihiCubaStep:
    """One Lava CUBA neuron step (emulator.cuba_step) in register units, on states kept in float
    units (``i = u_reg / (64 G)``, ``u = v_reg / (64 G)`` before the reset):

        u_reg = trunc0(u_reg (4096 - du) / 4096) + 64 round(G c)
        v_reg = sat24(trunc0(v_reg (1 - s[t-1]) (4096 - dv) / 4096) + u_reg)
        s     = v_reg > 64 vThMant

    ``c`` is the current the QAT synapses deliver (input, bias channel and W_rec on the grid, so
    ``G c`` is the integer sum Lava adds). Computed in float64: ``v_reg`` reaches 2^23. The spike
    passes the surrogate's gradient of ``(v_reg - 64 vThMant) / (64 G)``, i.e. of ``u - V_th``."""

    gain: float      # G
    du: int          # current decay, 4096: no memory
    dv: int          # voltage decay
    vth: int         # vThMant

    def __call__(self, c: Tensor, state: CUBAState,
                 spike_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, CUBAState]:
        unit = float(self.gain * (1 << SHIFT))       # register units per float unit
        wide = torch.float64
        a = ste_round(c.to(wide) * self.gain)
        u = _decayed(ste_round(state.i.to(wide) * unit), self.du) + a * (1 << SHIFT)
        v = ste_round(state.u.to(wide) * unit) * (1.0 - state.s.to(wide))
        v = (_decayed(v, self.dv) + u).clamp(-UV_MAX + 1, UV_MAX - 1)
        s = spike_fn(((v - (self.vth << SHIFT)) / unit).to(c.dtype))
        return s, CUBAState(u / unit, v / unit, s)


class LoihiGrid:
    """Loihi 2 via netx (snn2hw.export.loihi.mapping.loihi_grid): even 8-bit weights, 13-bit
    bias and an exact threshold per layer; the readout stays float (computed on the host).

    A CUBA site (``alpha`` given) is put on the graph path's grid (``graph.build_loihi_graph``):
    one gain G over its input weights (times the input unit) and its W_rec side by side, chosen
    with the bias on its 13-bit range; the bias then rides the two always-on input channels
    (``graph.split_bias``: rounded to even); du/dv on
    the 12-bit decay grid; and the neuron runs ``LoihiCubaStep``, so that the QAT forward
    computes Lava's spikes. Assumes a hard reset and the strict ``>`` spike (the export refuses
    a soft reset)."""

    def __init__(self) -> None:
        self.input_levels, self.input_range = INPUT_LEVELS, INPUT_RANGE

    def quantise(self, site: Site) -> Quantised:
        if site.v_th is None:
            return Quantised(site.weight, site.bias)
        if site.alpha is not None:
            return self._cuba(site)
        w, b = site.weight, site.bias
        grid = loihi_grid(w.detach().double().numpy(), b.detach().double().numpy(), site.v_th,
                          site.input_unit)
        s, g = grid.weight_scale, grid.gain
        w_q = quantise_weight(w, s, ste_round) / s
        b_q = quantise_bias(b, g, ste_round) / g
        lam = None if site.lam is None else lam_effective(site.lam)
        return Quantised(w_q, b_q, grid.vth / g, lam)

    def _cuba(self, site: Site) -> Quantised:
        """The graph path's integers for a CUBA neuron's synapse (class docstring)."""
        w, b, w_rec = site.weight, site.bias, site.weight_rec
        alpha = float(site.alpha)
        as_np = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
        cols = [as_np(w).reshape(w.shape[0], -1) * site.input_unit]
        if w_rec is not None:
            cols.append(as_np(w_rec))
        # G as graph.build_loihi_graph chooses it: the bias keeps its 13-bit range in the choice
        grid = loihi_grid(np.concatenate(cols, axis=1), as_np(b), float(site.v_th), 1.0)
        g = grid.gain
        w_q = quantise_weight(w, g * site.input_unit, ste_round) / (g * site.input_unit)
        # then it rides the bias channels as even weights (graph.split_bias): 13-bit, rounded to even
        b_q = 2 * ste_round(quantise_bias(b, g, ste_round) / 2) / g
        rec_q = None if w_rec is None else quantise_weight(w_rec, g, ste_round) / g
        lam = float(site.lam if site.lam is not None else 0.0)
        step = LoihiCubaStep(float(g), v_decay_of(alpha) if alpha > 0 else DECAY_UNIT, v_decay_of(lam), int(grid.vth))
        return Quantised(w_q, b_q, grid.vth / g, lam_effective(lam), rec_q, step)
