"""``psg``: a learnable surrogate parameter gamma per spiking layer (PSG), with the
optional membrane-distribution loss (PDA) (Wang, Cheng, Lim; methods.md "PSG + PDA").

Every spiking layer that emits spikes, convolutional or fully connected, uses
Case 1, the ``psg_arctan`` shape (Sec. 3, Eqs. 8-12). Case 2 (``psg_softplus``,
Eqs. 13-17) is for "fully-connected layers with potentials output", a spiking
output layer read by its accumulated potential: snn2hw's networks read out the
non-spiking mean current instead (methods.md), so no layer gets Case 2 here; the
shape stays in the registry for such a readout. gamma is an ``nn.Parameter``
named ``shape_param`` on each LIF, optimised with the weights.

``do/dgamma`` (``dgamma``): "printed" is Eqs. 12/17/20 as printed (the same
expression as do/du, no factor x); "analytic" (the default) is the rescaled
derivative of the smoothed f in gamma, ``2 gamma x / (1 + (gamma x)^2)``. The
default is "analytic" because it is the gradient of a defined function (gamma
moves to reduce the loss of the smoothed network); the printed form makes
dL/dgamma the sum of dL/du over the layer, a threshold-like gradient that does
not depend on the sign of x. Both are offered; the reproduction reports both.

Absent here: the paper's dropout 0.2 and learnable thresholds (the models have
neither; a threshold is a constant of the layer).

PDA adds ``beta_pd * L_PD`` with

    L_PD = 1/(2TN) sum_t sum_n [KL(P_tn || N_n) + KL(N_n || P_tn)]

where ``P_tn`` is a differentiable soft histogram (linear binning, i.e. a triangular
kernel of half-width h = one bin) of layer n's membrane potentials u at step t on a fixed grid, and
``N_n`` the same soft histogram expected for the target Gaussian: the target
N(m, s^2) smoothed by the kernel is about N(m, s^2 + h^2/6) on the grid.
Target "standard": m = 0, s = 1; "matched": the layer's detached mean and std.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..core import _kernel
from ..core.surrogate import PSG_DGAMMA, PsgArctan
from ..errors import ConfigError
from ..models.network import SpikingNetwork
from ._util import install_shape, named_lifs, unwrap
from .base import MethodContext, layer_params

GRID = torch.linspace(-4.0, 4.0, 41)  # bin centres of the soft histogram (bin width 0.2)
_TINY = 1e-8


def _bin_positions(values: Tensor, c0: float, h: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(flat bin index ``row * k + i0``, fraction f, d f / d v) of each value of (R, M)."""
    raw = (values - c0) / h
    pos = raw.clamp(0.0, k - 1.0)
    i0 = pos.floor().clamp_max_(k - 2)
    f = pos - i0
    # clamp passes the gradient where min <= raw <= max (torch's rule), i.e. where pos == raw:
    # 1 - sign|raw - pos| (float ops; a bool mask costs more here)
    slope = raw.sub_(pos).abs_().sign_().neg_().add_(1.0).div_(h)
    rows = torch.arange(values.shape[0], device=values.device, dtype=values.dtype).unsqueeze(1) * k
    return i0.add_(rows).flatten().long(), f.flatten(), slope


BLOCK = 1 << 15  # values per block: the block's temporaries stay in a core's L2 cache


def _blocks(values: Tensor) -> list[tuple[int, int]]:
    step = max(1, BLOCK // max(values.shape[0], 1))
    return [(j, min(j + step, values.shape[1])) for j in range(0, values.shape[1], step)]


class _LinearBinning(torch.autograd.Function):
    """Unnormalised linear-binning counts (R, K). The compiled kernel (``core/_kernel.py``,
    "soft histogram") does forward and backward in one pass each over the values; without
    it, ``bincount`` forward and ``index_select`` backward over blocks of columns: a dozen
    passes over a block that stays in cache instead of over the whole (R, M) tensor."""

    @staticmethod
    def forward(ctx, values: Tensor, c0: float, h: float, k: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values)
        ctx.consts = (c0, h, k)
        if _kernel.soft_hist_available(values, k):
            return _kernel.soft_hist_forward(values, c0, h, k)
        n = values.shape[0] * k
        upper = values.new_zeros(n)  # sum of f over the values in bin i0: they add f to bin i0 + 1
        total = values.new_zeros(n)  # number of values in bin i0: they add 1 - f to it
        for j0, j1 in _blocks(values):
            idx, f, _ = _bin_positions(values[:, j0:j1], c0, h, k)
            upper += torch.bincount(idx, weights=f, minlength=n)
            total += torch.bincount(idx, minlength=n)
        counts = total.sub_(upper).view(-1, k)
        counts[:, 1:] += upper.view(-1, k)[:, :-1]
        return counts

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (values,) = ctx.saved_tensors
        c0, h, k = ctx.consts
        if _kernel.soft_hist_available(values, k):
            return _kernel.soft_hist_backward(values, c0, h, grad), None, None, None
        step = torch.zeros_like(grad)  # d counts / d f: +1 at bin i0 + 1, -1 at bin i0
        step[:, :-1] = grad[:, 1:] - grad[:, :-1]
        step = step.flatten()
        out = torch.empty_like(values)
        for j0, j1 in _blocks(values):
            idx, _, slope = _bin_positions(values[:, j0:j1], c0, h, k)
            torch.mul(step.index_select(0, idx).view_as(slope), slope, out=out[:, j0:j1])
        return out, None, None, None


class _StackedBinning(torch.autograd.Function):
    """``cat([_LinearBinning(v) for v in values])`` for the compiled kernel: one autograd
    node for all layers (no cat, no per-layer nodes), the same kernel calls, so the same
    numbers; backward hands each layer its rows of the gradient."""

    @staticmethod
    def forward(ctx, c0: float, h: float, k: int, *values: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*values)
        ctx.consts = (c0, h)
        return torch.cat([_kernel.soft_hist_forward(v, c0, h, k) for v in values])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        values = ctx.saved_tensors
        c0, h = ctx.consts
        rows = grad.split([v.shape[0] for v in values])
        return (None, None, None, *(_kernel.soft_hist_backward(v, c0, h, g) for v, g in zip(values, rows)))


@functools.lru_cache(maxsize=8)
def _grid_constants(dtype: torch.dtype) -> tuple[float, float, int]:
    """(c0, h, K) of ``GRID`` in ``dtype``, as ``_linear_binning`` computes them (a few
    small ops and two host reads per call otherwise)."""
    c = GRID.to(dtype)
    return float(c[0]), float(c[1] - c[0]), len(c)


def _constants(values: Tensor, centres: Tensor) -> tuple[float, float, int]:
    if centres is GRID:
        return _grid_constants(values.dtype)
    c = centres.to(values)
    return float(c[0]), float(c[1] - c[0]), len(c)


def _linear_binning(values: Tensor, centres: Tensor) -> Tensor:
    """Unnormalised soft-histogram counts (R, K) of the rows of ``values`` (R, M)."""
    return _LinearBinning.apply(values, *_constants(values, centres))


def _stacked_binning(rows: list[Tensor]) -> Tensor:
    """``cat([_linear_binning(r, GRID) for r in rows])``: one kernel node when it can run."""
    c0, h, k = _grid_constants(rows[0].dtype)
    if all(r.dtype == rows[0].dtype and _kernel.soft_hist_available(r, k) for r in rows):
        return _StackedBinning.apply(c0, h, k, *rows)
    return torch.cat([_linear_binning(r, GRID) for r in rows])


def _normalised(counts: Tensor) -> Tensor:
    return counts / counts.sum(-1, keepdim=True).clamp_min(_TINY)


def soft_histogram(values: Tensor, centres: Tensor = GRID) -> Tensor:
    """Normalised soft histograms of the rows of ``values`` (R, M) over ``centres`` -> (R, K).

    Linear binning: a value between centres c_i and c_i+1 = c_i + h adds
    ``1 - f`` to bin i and ``f`` to bin i+1, ``f = (v - c_i)/h`` (the triangular
    kernel of half-width h); values beyond the grid count in its end bins. The
    weights are differentiable in v and the cost is O(M), not O(M K).
    """
    return _normalised(_linear_binning(values, centres))


def gaussian_bins(mean: Tensor, std: Tensor, centres: Tensor = GRID) -> Tensor:
    """The soft histogram expected for N(mean, std^2) samples, per row.

    The triangular kernel (variance h^2/6) turns N(m, s^2) into about
    N(m, s^2 + h^2/6); that density on the grid, normalised.
    """
    c = centres.to(mean)
    h = float(c[1] - c[0])
    s = torch.sqrt(std * std + h * h / 6.0).unsqueeze(-1)
    dens = torch.exp(-0.5 * ((c - mean.unsqueeze(-1)) / s) ** 2)
    return dens / dens.sum(-1, keepdim=True)


@functools.lru_cache(maxsize=8)
def _standard_target(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``gaussian_bins`` of N(0, 1) as one row: a constant, computed once (a dozen small ops
    per batch otherwise)."""
    return gaussian_bins(torch.zeros(1, dtype=dtype, device=device), torch.ones(1, dtype=dtype, device=device))


def symmetric_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p || q) + KL(q || p) per row of two histograms (a small floor avoids log 0)."""
    p, q = p.clamp_min(_TINY), q.clamp_min(_TINY)
    return (p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)


def pda_loss(membranes: list[Tensor], target: str = "standard") -> Tensor:
    """``L_PD = 1/(2TN) sum_t sum_n symKL`` over layers n of membrane tensors u_n (T, B, ...).

    The rows (one distribution per layer and step) of every layer are stacked before the
    normalisation and the KL, so that those run once, not once per layer (the same
    numbers: every operation after the binning is per row).
    """
    rows = [u.flatten(1) for u in membranes]  # (T, B * neurons): one distribution per step
    hist = _normalised(_stacked_binning(rows))
    if target == "matched":
        d = [r.detach() for r in rows]
        ref = gaussian_bins(torch.cat([x.mean(1) for x in d]), torch.cat([x.std(1) for x in d]))
    else:  # one row, broadcast over all
        ref = _standard_target(hist.dtype, hist.device)
    terms = symmetric_kl(hist, ref)
    return terms.sum() / (2.0 * len(terms))


@dataclass
class PSG:
    """Options: initial gamma, the do/dgamma variant, and PDA (flag, coefficient, target)."""

    gamma_init: float = field(default=1.0, metadata={"help": "PSG: initial gamma per layer (paper: 1, 2, 5)"})
    dgamma: str = field(default="analytic", metadata={
        "choices": PSG_DGAMMA, "help": "PSG: do/dgamma, analytic (rescaled derivative, default) or printed (Eqs. 12/17/20, = do/du)"})
    pda: bool = field(default=False, metadata={"help": "PSG: add the membrane-distribution loss (PDA)"})
    beta_pd: float = field(default=1.0, metadata={"help": "PSG: PDA loss coefficient (default 1)"})
    pda_target: str = field(default="standard", metadata={
        "choices": ("standard", "matched"), "help": "PSG: PDA target N(0,1) or the layer's own mean/std"})
    name: ClassVar[str] = "psg"
    surrogates: ClassVar[tuple[str, ...]] = (PsgArctan.name,)  # Case 1, every spiking layer

    def __post_init__(self) -> None:
        if self.dgamma not in PSG_DGAMMA:
            raise ConfigError(f"psg: dgamma must be one of {PSG_DGAMMA}, got {self.dgamma!r}")
        if self.pda_target not in ("standard", "matched"):
            raise ConfigError(f"psg: pda_target must be standard or matched, got {self.pda_target!r}")
        if self.gamma_init <= 0:
            raise ConfigError(f"psg: gamma_init must be > 0, got {self.gamma_init}")
        self._lifs: tuple[object, list] | None = None  # (model, its LIFs): extra_loss runs per batch

    def setup(self, model: SpikingNetwork) -> None:
        for _, m in named_lifs(model):
            install_shape(m, PsgArctan(self.gamma_init, self.dgamma), self.gamma_init, learnable=True)
            m.record_membrane = self.pda  # PDA reads the membranes of the training forward

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]:
        return {}

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None:
        if not self.pda:
            return None
        if self._lifs is None or self._lifs[0] is not model:  # named_modules costs ~0.2 ms a batch
            self._lifs = (model, named_lifs(model))
        lifs = self._lifs[1]
        missing = [n for n, m in lifs if m.last_membrane is None]
        if missing or not lifs:
            raise ConfigError(f"psg: PDA found no recorded membrane potentials at layer(s) "
                              f"{missing or 'none: the model has no spiking layer'}; PDA needs "
                              f"every spiking layer's training forward: run without --pda")
        return self.beta_pd * pda_loss([m.last_membrane for _, m in lifs], self.pda_target)

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]:
        return layer_params(unwrap(ctx.model), "gamma")

    def state_dict(self) -> dict:
        return {}  # gamma lives in the model's parameters

    def load_state_dict(self, state: dict) -> None:
        pass
