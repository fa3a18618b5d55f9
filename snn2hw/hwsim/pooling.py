"""A lowered LIF layer and the avg/sum pooling after it in one pass (``core/fusion.py``).

``graph.run`` hands a ``Neuron`` followed by a ``Stateless`` :class:`Pool` to
:func:`lif_pool` where the LIF is the nominal, exact-Heaviside one on every chip
(no per-chip constants, no quantised state, no noise, no target step): the compiled
kernel runs the LIF and pools its spikes without writing them, and counts, in the
same pass, what ``fused.counted_lif`` counts for hwsim (the LIF's own spikes per
unit, before pooling, and its membrane changes). The pooled output is the one the
separate ops give, bit for bit, so the next synapse's counts are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import _kernel
from ..core.fusion import LIFArgs, PoolArgs, bn_lif_pool, lif_pool_counted
from ..core.layers import Pool, no_global_hooks, plain_module
from ..core.surrogate import Triangle

# fused_lif's surrogate arguments; unused without gradients (the exact step runs)
_NO_PARAM, _EXACT = torch.zeros(()), Triangle()


def pool_args(module: nn.Module, reset: str, x: Tensor) -> PoolArgs | None:
    """The pooling ``module`` as the fused op takes it, or None where the LIF (``reset``)
    and ``module`` must run apart: ``module`` is a plain avg/sum :class:`Pool` (no hooks,
    its class's forward) over the spatial axes of ``x`` (T, B, C, channels, *spatial),
    CPU float32/64, the compiled kernel present, the reset hard or soft."""
    if type(module) is not Pool or module.mode == "max" or reset not in ("hard", "soft"):
        return None
    if not (plain_module(module) and no_global_hooks()):
        return None  # a hook or a replaced forward must see the pool run by itself
    if x.dim() not in (5, 6) or module.dims != x.dim() - 4 or min(x.shape[4:]) < module.k:
        return None
    if not _kernel.available(x):
        return None
    return PoolArgs(module.mode, module.k, module.dims)


def lif_pool(lam: float, v_th: float, reset: str, pool: PoolArgs, x: Tensor, counted: bool
             ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """(pooled spikes (T, B, C, channels, *spatial // k), and with ``counted`` the LIF's
    counts as ``graph.Observer`` gets them: spikes per unit (channels x spatial, summed over
    T, B and C) and membrane changes (int64, 0-dim); else None) of the LIF driven by the
    currents ``x`` (T, B, C, channels, *spatial), for which ``pool_args`` gave ``pool``."""
    T, B, C = x.shape[:3]
    z = x.reshape(T, B * C, *x.shape[3:])  # planes (sample, chip, channel)
    if not z[0].is_contiguous():  # a frame broadcast over T (time stride 0) is read as it is
        z = z.contiguous()
    hard = reset == "hard"
    if counted:
        pooled, per_unit, changes = lif_pool_counted(z, float(lam), float(v_th), hard, pool)
        counts = (per_unit, changes)
    else:
        pooled = bn_lif_pool(z, None, LIFArgs(_NO_PARAM, float(lam), float(v_th), hard, _EXACT), pool)
        counts = None
    return pooled.view(T, B, C, *pooled.shape[2:]), counts
