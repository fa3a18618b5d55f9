"""Loihi's QAT grid: the values ``mapping.build_loihi_net`` writes, with straight-through rounding."""

from __future__ import annotations

from ..grid import Quantised, Site, ste_round
from .mapping import INPUT_LEVELS, INPUT_RANGE, lam_effective, loihi_grid, quantise_bias, quantise_weight


class LoihiGrid:
    """Loihi 2 via netx (snn2hw.export.loihi.mapping.loihi_grid): even 8-bit weights, 13-bit
    bias and an exact threshold per layer; the readout stays float (computed on the host)."""

    def __init__(self) -> None:
        self.input_levels, self.input_range = INPUT_LEVELS, INPUT_RANGE

    def quantise(self, site: Site) -> Quantised:
        if site.v_th is None:
            return Quantised(site.weight, site.bias)
        w, b = site.weight, site.bias
        grid = loihi_grid(w.detach().double().numpy(), b.detach().double().numpy(), site.v_th,
                          site.input_unit)
        s, g = grid.weight_scale, grid.gain
        w_q = quantise_weight(w, s, ste_round) / s
        b_q = quantise_bias(b, g, ste_round) / g
        lam = None if site.lam is None else lam_effective(site.lam)
        return Quantised(w_q, b_q, grid.vth / g, lam)
