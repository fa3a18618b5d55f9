"""tdBN -> LIF -> pooling as one autograd Function over the compiled kernel.

The same numbers as running ``TDBatchNorm``, the fused LIF (``fused.py``, exact
Heaviside spike) and ``Pool`` (avg or sum, kernel = stride = k) one after the
other, with two full passes over T x B x C x H x W fewer each way:

- forward: the kernel reads the raw synapse output z and computes tdBN's
  ``c = BN(z) * (scale * weight) + bias`` itself, with the per-channel
  ``BN(z) = z * alpha + beta`` rounded as torch's CPU ``batch_norm`` rounds it
  (one fma where torch uses one: ``batch_norm_rounds_with_fma`` measures it),
  ``alpha = invstd``, ``beta = -mean * invstd`` from torch's own statistics
  (``torch.batch_norm_update_stats``, which also updates the running mean and
  unbiased variance as ``F.batch_norm`` does). Binary spikes are pooled in the
  kernel: window sums are exact integers, divided by k^d as ``avg_pool`` does
  (sum pooling multiplies back by k^d as ``Pool.forward`` does); rows and
  columns past the last whole window are dropped (floor). No full-size spike
  tensor is written.
- backward: the kernel takes the pooled gradient, spreads it over each window
  as ``avg_pool``'s backward does, runs ``fused.py``'s BPTT and sums, per
  plane, ``gc`` and ``gc * BN(z)``: bias and weight gradients, and the two
  batch terms of the BN backward
  ``dz = invstd w' (gc - mean(gc) - BN(z) mean(gc BN(z)))`` (training; eval:
  ``invstd w' gc``), applied in one more pass.

Without a tdBN (the direct-encoded first layer, one frame broadcast over T)
only the LIF and the pooling are fused, and backward recomputes x from the
frame as ``FusedLIF`` does. ``layers.run_layers`` decides where this applies.

ASGL's dual-mode value (``LIFArgs.value``, not binary) runs its own kernel pair
(``asgl_pool_forward/backward``): ``FusedLIF``'s compiled dual-mode step on the
same uniforms (drawn here as ``fused._dual_mode_forward`` draws them), windows
summed row-major in the value type and divided by k^d as torch's CPU
``avg_pool2d`` does, so the pooled values are the unfused ones bit for bit.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _kernel
from .fused import DualModeValue, backward_once, dual_mode_keys, graph_reused
from .surrogate import SurrogateShape


class TDBNArgs(NamedTuple):
    """A ``TDBatchNorm``'s state: ``c = BN(z) * (scale * weight) + bias``."""

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    scale: float
    eps: float
    momentum: float
    training: bool


class LIFArgs(NamedTuple):
    """The LIF of ``fused_lif``: surrogate ``shape`` with parameter ``p``; reset hard, soft,
    or with ``nodecay`` GSG's soft_nodecay (``u = lam u + c - V_th s``). ``value`` None: the
    exact Heaviside spike; else ASGL's dual-mode value (``fused.DualModeValue``, shape
    ``AsglRect`` at ``p``, its clamped width: hard or soft reset, no recorded membrane)."""

    p: Tensor
    lam: float
    v_th: float
    hard: bool
    shape: SurrogateShape
    nodecay: bool = False
    value: DualModeValue | None = None

    @property
    def reset_code(self) -> int:
        """The pool kernel's code of this reset (``_kernel.POOL_RESETS``)."""
        return _kernel.POOL_RESETS["soft_nodecay" if self.nodecay else "hard" if self.hard else "soft"]


class PoolArgs(NamedTuple):
    """``Pool(mode, k, dims)`` with mode avg or sum; k = 1: no pooling."""

    mode: str
    k: int
    dims: int


@functools.cache
def batch_norm_rounds_with_fma(dtype: torch.dtype) -> bool:
    """Whether torch's CPU ``batch_norm`` computes ``z * alpha + beta`` with one rounding
    (fma; its vectorised kernels on AVX2/AVX-512) rather than two, measured on this build."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, 256, generator=g, dtype=dtype) * 3.0
    mean, var = torch.randn(3, generator=g, dtype=dtype), torch.rand(3, generator=g, dtype=dtype) + 0.5
    ref = F.batch_norm(z, mean, var, None, None, False, 0.0, 1e-5)
    invstd = 1.0 / torch.sqrt(var + 1e-5)
    return not torch.equal(ref, z * invstd.view(1, -1, 1) + (0.0 - mean * invstd).view(1, -1, 1))


def _layout(z: Tensor, pool: PoolArgs | None) -> _kernel.PlaneLayout:
    T, B, C, *spatial = z.shape
    H, W = (1, spatial[0]) if len(spatial) == 1 else spatial
    k = pool.k if pool is not None else 1
    return _kernel.PlaneLayout(T, B * C, C, H, W, 1 if len(spatial) == 1 else k, k)


def _pool_scale(pool: PoolArgs | None) -> tuple[float, float]:
    """(divisor, multiplier) of the window sum: avg_pool divides by k^d, sum pooling
    multiplies that back by k^d (0: no multiplication)."""
    if pool is None:
        return 1.0, 0.0
    kd = float(pool.k ** pool.dims)
    return kd, kd if pool.mode == "sum" else 0.0


def _compiled_stats(z: Tensor) -> bool:
    """Whether ``_kernel.bn_stats`` gives torch's training statistics of ``z`` (T, B, C, ...)
    bit for bit: float32 (its sums in double, whose order then hides in the float's
    rounding; a float64 sum's order shows) with planes of more than one value (torch reads
    (N, C, 1) as channels-last, with float sums), contiguous, the kernel present."""
    return z.dtype == torch.float32 and z[0, 0, 0].numel() > 1 and z.is_contiguous() and _kernel.available(z)


def _bn_coefficients(z: Tensor, bn: TDBNArgs) -> tuple[Tensor, Tensor, int]:
    """(coef (C, 4): alpha, beta, w' = scale * weight, bias; invstd (C,); the kernel's mode:
    2 with torch's fma, else 1), with the running statistics updated in training exactly as
    ``F.batch_norm`` updates them."""
    mode = 2 if batch_norm_rounds_with_fma(z.dtype) else 1
    with torch.no_grad():
        if bn.training:
            if bn.running_mean is None and bn.running_var is None and _compiled_stats(z):
                # no buffers to update (the FDG's copies): statistics and rows compiled, as below
                coef, invstd = _kernel.bn_coefficients(z.flatten(0, 1), bn.weight, bn.bias, bn.scale, bn.eps)
                return coef, invstd, mode
            mean, var = torch.batch_norm_update_stats(z.flatten(0, 1), bn.running_mean, bn.running_var, bn.momentum)
            invstd = (1.0 / torch.sqrt(var.double() + bn.eps)).to(z.dtype)  # torch's save_invstd
        else:
            mean, invstd = bn.running_mean, 1.0 / torch.sqrt(bn.running_var + bn.eps)
        coef = torch.stack([invstd, 0.0 - mean * invstd, bn.scale * bn.weight, bn.bias]).t().contiguous()
    return coef.to(z.dtype), invstd, mode


class FusedBNLIFPool(torch.autograd.Function):
    """``Pool(LIF(TDBatchNorm(z)))`` (module docstring); z (T, B, C, L) or (T, B, C, H, W),
    time-major; without ``bn`` possibly one frame broadcast over T (time stride 0)."""

    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor | None, bias: Tensor | None, p: Tensor,  # type: ignore[override]
                bn: TDBNArgs | None, lif: LIFArgs, pool: PoolArgs | None, membrane: bool):
        lay = _layout(z, pool)
        div, mul = _pool_scale(pool)
        coef, invstd, mode = None, None, 0
        if bn is not None:
            coef, invstd, mode = _bn_coefficients(z, bn)
        ctx.consts = (bn, lif, pool, lay, div, mul, mode, tuple(z.shape))
        ctx.reused = graph_reused()  # backward overwrites the saved x: on a copy if it runs again
        if lif.value is not None:  # ASGL: its values s and x kept, as FusedLIF keeps them
            pooled, s, x = _dual_mode_pool(z, coef, mode, lay, div, mul, lif, keep_x=True)
            ctx.save_for_backward(z, x, coef, invstd, p, None, s)
            return pooled.view(*z.shape[:3], *_out_spatial(z, pool))
        # soft_nodecay: x kept, the plain kernel that would recompute it has no such reset
        broadcast = z.shape[0] > 1 and z.stride(0) == 0 and not lif.nodecay
        # with u recorded, backward takes x = u - V_th from it (as FusedLIF): x is not kept
        pooled, x, u = _kernel.pool_forward(z.flatten(1), coef, mode, lay, div, mul, lif.lam, lif.v_th, lif.reset_code,
                                            keep_x=not (broadcast or membrane), keep_u=membrane)
        # broadcast frame: backward recomputes x from it (T times less memory, as FusedLIF)
        ctx.save_for_backward(z[:1] if broadcast else z, x, coef, invstd, p, u, None)
        pooled = pooled.view(*z.shape[:3], *_out_spatial(z, pool))
        return (pooled, u.view(z.shape)) if membrane else pooled

    @staticmethod
    def backward(ctx, gp: Tensor, gext: Tensor | None = None):  # type: ignore[override]
        z, x, coef, invstd, p, u, s = ctx.saved_tensors
        bn, lif, pool, lay, div, mul, mode, shape = ctx.consts
        if ctx.reused:
            x = x.clone() if x is not None else None
        else:
            backward_once(ctx, "FusedBNLIFPool")
        if s is not None:  # ASGL: x is the saved one, overwritten by the gradient of c
            gc, grad_p, sums = _kernel.asgl_pool_backward(
                gp.reshape(lay.T, -1), x, s, float(p), z.flatten(1) if mode else None, coef, mode, lay, div, mul,
                lif.lam, lif.v_th, lif.hard, ctx.needs_input_grad[3])
        else:
            if u is not None:  # x exactly as the kernel computed it from u; fresh: pool_backward overwrites it
                x = u - lif.v_th
            elif x is None:  # the frame: x again, exactly as the forward computed it
                frame = z.expand(shape).flatten(1)
                x = _kernel.forward(frame, lif.lam, lif.v_th, lif.hard, spikes=False, keep_x=True)[1]
            x = x.view(lay.T, lay.P, lay.H, lay.W)
            gc, grad_p, sums = _kernel.pool_backward(
                gp.reshape(lay.T, -1), x, p, lif.shape, z.flatten(1) if mode else None, coef, mode, lay, div, mul,
                lif.lam, lif.v_th, lif.reset_code, ctx.needs_input_grad[3], gext)
        gc = gc.view(shape)
        grad_w = grad_b = None
        if bn is not None:
            s = sums.view(-1, lay.C, 2).sum(0)  # per channel: (sum gc, sum gc BN(z)), float64
            g = invstd.double() * coef[:, 2].double()  # invstd * w'
            kk = torch.stack([g, torch.zeros_like(g), torch.zeros_like(g)], 1)
            if bn.training:
                n = lay.T * (lay.P // lay.C) * lay.H * lay.W
                kk[:, 1], kk[:, 2] = -g * s[:, 1] / n, -g * s[:, 0] / n
            gc = _kernel.bn_input_grad(gc.flatten(0, 1), z.flatten(0, 1), coef, kk, mode, lay.C).view(shape)
            grad_w = (s[:, 1] * bn.scale).to(coef.dtype)
            grad_b = s[:, 0].to(coef.dtype)
        return gc, grad_w, grad_b, grad_p, None, None, None, None


def _dual_mode_pool(z: Tensor, coef: Tensor | None, mode: int, lay: _kernel.PlaneLayout, div: float, mul: float,
                    lif: LIFArgs, keep_x: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(pooled, s, x if ``keep_x``) of the run with ASGL's dual-mode value ``lif.value``, its
    mask's keys drawn as ``fused._dual_mode_forward`` draws them (one per step, same generator)."""
    p = lif.value.p
    return _kernel.asgl_pool_forward(z.flatten(1), coef, mode, lay, div, mul, lif.lam, lif.v_th, lif.hard,
                                     float(lif.value.alpha), p, dual_mode_keys(lay.T, p), keep_x)


def _out_spatial(z: Tensor, pool: PoolArgs | None) -> list[int]:
    k = pool.k if pool is not None else 1
    return [s // k for s in z.shape[3:]]


def bn_lif_pool(z: Tensor, bn: TDBNArgs | None, lif: LIFArgs, pool: PoolArgs | None,
                membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``Pool(LIF(TDBatchNorm(z)))`` in one pass, (T, B, C, *spatial // k), with the numbers of
    the three modules run in turn (module docstring). Needs the compiled kernel and CPU
    float32/64 ``z`` (T, B, C, L) or (T, B, C, H, W) contiguous per step; ``bn`` None: no
    tdBN (then ``z`` may be one frame broadcast over T); ``pool`` None: spikes. With
    ``membrane`` also the LIF's potentials u (z's shape), as ``fused_lif(..., membrane=True)``
    records them (PSG's PDA): ``(pooled, u)``, u differentiable."""
    if lif.value is not None and (membrane or lif.nodecay):
        raise ValueError("bn_lif_pool: ASGL's dual-mode value runs with a hard or soft reset, no membrane")
    weight = bn.weight if bn is not None else None
    bias = bn.bias if bn is not None else None
    if bn is not None:
        z = z.contiguous()  # the kernel and the BN backward read it as (T, B, C, ...) in memory
    needs_grad = any(t is not None and t.requires_grad for t in (z, weight, bias, lif.p))
    if torch.is_grad_enabled() and needs_grad:
        return FusedBNLIFPool.apply(z, weight, bias, lif.p, bn, lif, pool, membrane)
    lay = _layout(z, pool)
    div, mul = _pool_scale(pool)
    coef, mode = None, 0
    if bn is not None:
        coef, _, mode = _bn_coefficients(z, bn)
    if lif.value is not None:
        return _dual_mode_pool(z, coef, mode, lay, div, mul, lif, keep_x=False)[0].view(
            *z.shape[:3], *_out_spatial(z, pool))
    pooled, _, u = _kernel.pool_forward(z.flatten(1), coef, mode, lay, div, mul, lif.lam, lif.v_th, lif.reset_code,
                                        keep_x=False, keep_u=membrane)
    pooled = pooled.view(*z.shape[:3], *_out_spatial(z, pool))
    return (pooled, u.view(z.shape)) if membrane else pooled


def lif_pool_counted(z: Tensor, lam: float, v_th: float, hard: bool, pool: PoolArgs
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Inference: ``(Pool(LIF(z)), spikes per unit, membrane changes)`` in one pass, with
    hwsim's counts of the LIF as ``fused.counted_lif`` gives them (``_kernel.forward_counted``):
    the LIF's own spikes before pooling, summed over T, B and the channels' samples per unit
    (C x spatial), and the number of (t >= 1, neuron) at which u changed. Needs the compiled
    kernel and CPU float32/64 ``z`` (T, B, C, L) or (T, B, C, H, W) contiguous per step."""
    lay = _layout(z, pool)
    div, mul = _pool_scale(pool)
    pooled, per_unit, changes = _kernel.pool_forward_counted(z.flatten(1), lay, div, mul, lam, v_th, hard)
    return pooled.view(*z.shape[:3], *_out_spatial(z, pool)), per_unit, changes
