"""Speck's integer grid: 8-bit weights and biases, 16-bit thresholds and state.

Per core, one common scale ``s`` (the semantics of sinabs' ``discretize_conv_spike_``):

    s = min( fit8(W), fit8(b), fit16(min_v_mem, V_th) )
    fit_n(x) = (2^(n-1) - 1) / max(x)   if |min(x)| <= max(x) * 2^(n-1) / (2^(n-1) - 1)
               2^(n-1) / |min(x)|        otherwise
    W_int = round(s W),  b_int = round(s b),  V_th_int = round(s V_th),  min_v_int = round(s min_v_mem)

Scaling W, b and both thresholds of an IAF core by the same s leaves its spikes unchanged,
so each core is discretised on its own. ``min_v_mem`` (the clamp, the chip's
``threshold_low``) is chosen as ``-2^15 / s0`` with ``s0 = min(fit8(W), fit8(b), 32766 / V_th)``:
the int16 fit then never lowers the scale (a clamp at -V_th would cost up to 8 bits,
targets.md B.2) and the clamp lands on the state's own floor, -2^15.

Our neurons fire on ``v > V_th``; the chip (and sinabs) on ``v >= threshold_high``. With
integer weights, inputs and states, ``v > V_th_int`` is ``v >= V_th_int + 1``, so
``threshold_high = V_th_int + 1`` is exact for hard reset. For soft reset the chip then
subtracts V_th_int + 1 instead of V_th_int (a 1/V_th_int error, measured by the simulation);
that is why 32766 and not 32767 bounds V_th above. A graph that fires on ``>=`` itself
(sinabs') takes ``threshold_high = V_th_int``; a graph that clips the membrane (sinabs'
IF at ``-V_th``) gives ``min_v_mem`` instead of the one chosen above.

The first core receives events, not analog values: a direct-encoded frame x is sent as
``round(g x)`` events per pixel per step, and that core's weights are divided by g first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..grid import Quantised, Site, ste_round

WEIGHT_BITS = 8
STATE_BITS = 16
STATE_MIN = -(2 ** (STATE_BITS - 1))
THRESHOLD_MAX = 2 ** (STATE_BITS - 1) - 2   # room for the +1 of the strict-spike nudge
DIRECT_INPUT_GAIN = 16                      # events per pixel per step for a frame in [0, 1]


def fit_scale(x: np.ndarray | Tensor, bits: int) -> float:
    """The largest s such that s*x lies in the signed ``bits`` range (module docstring).

    float32 arithmetic, as sinabs computes it on float32 tensors (so scales agree bit for bit).
    """
    v = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float32)
    lo, hi = np.float32(-(2 ** (bits - 1))), np.float32(2 ** (bits - 1) - 1)
    vmin, vmax = v.min(), v.max()
    with np.errstate(divide="ignore"):
        if abs(vmin) <= abs(vmax) * abs(lo / hi):
            return float(abs(hi / vmax))
        return float(abs(lo / vmin))


def clamp_for(weight: np.ndarray, bias: np.ndarray, v_th: float) -> float:
    """The float ``min_v_mem`` that keeps full weight precision (module docstring)."""
    s0 = min(fit_scale(weight, WEIGHT_BITS), fit_scale(bias, WEIGHT_BITS),
             float(np.float32(THRESHOLD_MAX) / np.float32(abs(v_th))))
    return float(np.float32(STATE_MIN) / np.float32(s0))


def core_scale(weight: np.ndarray, bias: np.ndarray, v_th: float) -> tuple[float, float, str]:
    """(s, min_v_mem, which fit set s) for one core (module docstring)."""
    min_v = clamp_for(weight, bias, v_th)
    fits = {"weights": fit_scale(weight, WEIGHT_BITS), "biases": fit_scale(bias, WEIGHT_BITS),
            "thresholds": fit_scale(np.array([min_v, v_th]), STATE_BITS)}
    binding = min(fits, key=fits.get)
    return fits[binding], min_v, binding


def discretize_core(weight: np.ndarray, bias: np.ndarray, v_th: float,
                    input_gain: float = 1.0, min_v_mem: float | None = None) -> dict[str, Any]:
    """Integer parameters of one core; ``weight`` (C_out, C_in, k, k) in torch layout.

    Returns W_int, b_int, V_th_int, min_v_int (all ints), the scale, the float
    min_v_mem it was derived from (``min_v_mem`` when the graph clips the membrane) and
    which fit set the scale ("binding": when the biases do, the weights get fewer than 8
    bits). ValueError for a value that is not a finite number (no integer holds it).
    """
    w = np.asarray(weight, dtype=np.float32) / np.float32(input_gain)
    b = np.asarray(bias, dtype=np.float32)
    extra = [] if min_v_mem is None else [min_v_mem]
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b)) and np.all(np.isfinite([v_th, *extra]))):
        raise ValueError("weights, biases and thresholds must be finite numbers for the int8/int16 grid")
    s, min_v, binding = core_scale(w, b, v_th)
    if min_v_mem is not None:
        fits = {"weights": fit_scale(w, WEIGHT_BITS), "biases": fit_scale(b, WEIGHT_BITS),
                "thresholds": fit_scale(np.array([min_v_mem, v_th]), STATE_BITS)}
        binding = min(fits, key=fits.get)
        s, min_v = fits[binding], float(min_v_mem)
    # torch.round (half to even) as sinabs does, on float32 products as in its discretize_tensor
    rnd = lambda a: torch.round(torch.as_tensor(a, dtype=torch.float32) * s).to(torch.int64)  # noqa: E731
    return {"weight": rnd(w).numpy(), "bias": rnd(b).numpy(),
            "v_th": int(rnd(np.float32(v_th))), "min_v": int(rnd(np.float32(min_v))),
            "scale": float(s), "min_v_mem": float(min_v), "binding": binding}


class SpeckGrid:
    """Speck's grid for ``train --qat speck`` (snn2hw.export.grid.TargetGrid): the input as
    round(16 x) events, each core's weights, bias and threshold on its int8/int16 grid
    (``discretize_core`` with straight-through rounding); the host readout stays float.

    ``site.input_unit`` is the float value of one input event (1/16 for the frame, 1/k^2
    after an average pool), so ``W * input_unit`` is the chip's weight per event.
    """

    input_levels: int | None = DIRECT_INPUT_GAIN
    input_range: tuple[float, float] = (0.0, 1.0)

    def quantise(self, site: Site) -> Quantised:
        if site.v_th is None:
            return Quantised(site.weight, site.bias)
        u = float(site.input_unit)
        w_event = site.weight * u
        s, _, _ = core_scale(w_event.detach().float().numpy(), site.bias.detach().float().numpy(),
                             float(site.v_th))
        v_th_int = float(torch.round(torch.tensor(float(site.v_th), dtype=torch.float32) * s))
        # the chip fires on v_int >= V_th_int + 1: in float units v > (V_th_int + 1/2) / s, with
        # half a unit of margin so that float rounding of v cannot flip an integer tie
        return Quantised(ste_round(w_event * s) / (s * u), ste_round(site.bias * s) / s,
                         (v_th_int + 0.5) / s)
