"""Xylo's QAT grid: the values ``mapping.build_xylo_net`` writes, with straight-through rounding."""

from __future__ import annotations

import numpy as np
import torch

from ..grid import Quantised, Site, ste_round
from .limits import WEIGHT_MAX
from .mapping import dash_of, input_levels, leak_of, neuron_gain, quantise_rows

ASSUMED_ALPHA = 0.5   # Xylo's fastest synapse (dash_syn = 1), when the site does not say


class XyloGrid:
    """Xylo (snn2hw.export.xylo.mapping): per neuron a gain G with 8-bit weights
    ``round(G W g / alpha_eff)`` and an integer threshold ``G V_th``; leaks on the bit-shift grid
    ``1 - 2^-dash``; the readout's 8-bit weights ``round(G_out W)`` per class. The input becomes
    ``round(L x) / L`` events with L = floor(15 / max |x|) (``input_levels`` follows
    ``input_range``, which QAT sets from the data).

    A recurrent layer's gain covers its input and recurrent weights together; a ``Site`` holds
    one weight, so the recurrent model's QAT must pass both (an ``alpha`` and a ``weight_rec``
    attribute are read when present)."""

    def __init__(self) -> None:
        self.input_range: tuple[float, float] = (0.0, 1.0)

    @property
    def input_levels(self) -> int:
        return input_levels(self.input_range)

    def quantise(self, site: Site) -> Quantised:
        shape, b = site.weight.shape, site.bias
        w = site.weight.reshape(shape[0], -1)          # one row per output neuron (conv: per channel)
        if site.v_th is None:   # readout: 8-bit per class (the exporter may lower G_out for T)
            row = w.detach().abs().amax(1).double().numpy()
            g = torch.as_tensor(np.where(row > 0, WEIGHT_MAX / np.where(row > 0, row, 1), 1.0), dtype=w.dtype)
            return Quantised((ste_round(w * g[:, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX) / g[:, None]).reshape(shape), b)
        alpha = float(getattr(site, "alpha", None) or ASSUMED_ALPHA)
        a_eff = float(leak_of(dash_of(alpha)))
        w_rec = getattr(site, "weight_rec", None)
        n = w.shape[0]
        row = w.detach().abs().amax(1).double().numpy() * site.input_unit
        if w_rec is not None:
            row = np.maximum(row, w_rec.detach().abs().amax(1).double().numpy())
        row = np.maximum(row, b.detach().abs().double().numpy())
        theta, gain = neuron_gain(row, np.full(n, float(site.v_th)), np.full(n, a_eff))
        scale = torch.as_tensor(gain * site.input_unit / a_eff, dtype=w.dtype)
        w_q = quantise_rows(w, torch.as_tensor(gain, dtype=w.dtype), site.input_unit,
                            torch.full((n,), a_eff, dtype=w.dtype), ste_round) / scale[:, None]
        b_scale = torch.as_tensor(gain / a_eff, dtype=w.dtype)
        b_q = ste_round(b * b_scale).clamp(-WEIGHT_MAX, WEIGHT_MAX) / b_scale
        lam = None if site.lam is None else float(leak_of(dash_of(site.lam)))
        # V_th on the grid is theta / G = V_th exactly (G = theta / V_th): unchanged
        return Quantised(w_q.reshape(shape), b_q, float(site.v_th), lam)
