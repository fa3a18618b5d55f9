"""``cpng``: per-layer surrogate sharpness controlled by the effective-domain indicator k
(Lin, Deng, Gu 2023; methods.md "CPNG").

With ``u`` the pre-spike membrane potential of a layer on a fixed probe batch,
``mu, sigma`` its mean and std over (batch, T, neurons), and ``d(beta)`` the
half-width of the surrogate's support (triangle ``1/beta``, rectangular
``1/(2 beta)``, arctan ``1/beta``):

    k(beta) = Phi((V_th + d - mu)/sigma) - Phi((V_th - d - mu)/sigma)

the fraction of potentials (under a normal fit) that receive a gradient. After
epoch 0 ``k_rec = k``. After each later epoch, Algorithm 1 read literally:

    if k_rec < k_limit: k_rec = k_limit
    elif k_cur < k_rec: k_rec = k_cur
    k_min = k_rec
    if k_min != k_cur: beta <- the beta with k(beta) = k_min (binary search)

so beta RISES when k grew above the smallest k seen, and FALLS when k dropped
below k_limit (bringing k back up to k_limit, e.g. from a too-sharp start).
A target the search cannot reach (beta would leave [BETA_MIN, BETA_MAX]) keeps
the bound and is logged in the history (``cpng_unreachable/<layer>`` = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.network import SpikingNetwork
from ..distributed import all_reduce_sum
from ._util import named_lifs, probe_membranes, unwrap
from .base import MethodContext, layer_params

SHAPES = ("triangle", "rectangular", "arctan")
TOL = 1e-7  # |k - target| the binary search stops at; closer counts as equal


def normal_cdf(z: float) -> float:
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def k_indicator(beta: float, mu: float, sigma: float, v_th: float, half_width) -> float:
    """Fraction of N(mu, sigma^2) inside the surrogate support ``V_th +- d(beta)``."""
    d = half_width(beta)
    sigma = max(sigma, 1e-12)
    return normal_cdf((v_th + d - mu) / sigma) - normal_cdf((v_th - d - mu) / sigma)


BETA_MIN, BETA_MAX = 1e-6, 1e6  # the search's bounds on beta


def solve_beta(target: float, beta0: float, mu: float, sigma: float, v_th: float, half_width,
               tol: float = 1e-7) -> tuple[float, bool]:
    """``(beta, reached)``: the beta with ``k(beta) = target``, searched from ``beta0`` in
    whichever direction the target lies (k falls as beta rises), and whether it was
    reached. Brackets by doubling or halving, then bisects on beta until k is within
    ``tol`` of the target; a target beyond ``BETA_MIN`` / ``BETA_MAX`` returns that
    bound with ``reached = False`` (the caller logs it).
    """
    k = lambda b: k_indicator(b, mu, sigma, v_th, half_width)  # noqa: E731
    k0 = k(beta0)
    if abs(k0 - target) <= tol:
        return beta0, True
    if k0 > target:   # too wide: sharpen
        lo, hi = beta0, beta0 * 2.0
        while k(hi) > target:
            lo, hi = hi, hi * 2.0
            if hi >= BETA_MAX:
                return BETA_MAX, abs(k(BETA_MAX) - target) <= tol
    else:             # too sharp: widen
        lo, hi = beta0 * 0.5, beta0
        while k(lo) < target:
            lo, hi = lo * 0.5, lo
            if lo <= BETA_MIN:
                return BETA_MIN, abs(k(BETA_MIN) - target) <= tol
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        km = k(mid)
        if abs(km - target) <= tol:
            return mid, True
        lo, hi = (mid, hi) if km > target else (lo, mid)
    return 0.5 * (lo + hi), abs(k(0.5 * (lo + hi)) - target) <= 1e3 * tol


def membrane_stats(membranes: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
    """(mean, std) per layer, over all ranks: sums of u, u^2 and counts are all-reduced."""
    names = list(membranes)
    sums = torch.stack([torch.stack([u.double().sum(), (u.double() ** 2).sum(),
                                     torch.tensor(float(u.numel()), dtype=torch.float64, device=u.device)])
                        for u in membranes.values()])  # on the membranes' device (NCCL reduces GPU tensors)
    sums = all_reduce_sum(sums)
    out = {}
    for name, (s, s2, n) in zip(names, sums.tolist()):
        mean = s / n
        out[name] = (mean, math.sqrt(max(s2 / n - mean * mean, 0.0)))
    return out


@dataclass
class CPNG:
    """Options: ``k_limit`` the floor on the indicator below which beta pauses."""

    k_limit: float = field(default=0.2, metadata={"help": "CPNG: lowest effective-domain indicator k (default 0.2)"})
    name: ClassVar[str] = "cpng"
    surrogates: ClassVar[tuple[str, ...]] = ()  # adapts the config's shape (one of SHAPES)

    def __post_init__(self) -> None:
        if not 0.0 < self.k_limit < 1.0:
            raise ConfigError(f"cpng: k_limit must be in (0, 1), got {self.k_limit}")
        self.k_rec: dict[str, float] = {}

    def setup(self, model: SpikingNetwork) -> None:
        for name, m in named_lifs(model):
            if m.surrogate.name not in SHAPES:
                raise ConfigError(f"cpng: layer {name} uses surrogate {m.surrogate.name!r}; CPNG adapts "
                                  f"{', '.join(SHAPES)}: pass --surrogate triangle (or rectangular, arctan)")

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]:
        return {}

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None:
        return None

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]:
        stats = membrane_stats(probe_membranes(ctx.model, ctx.probe_x))
        row: dict[str, float] = {}
        for name, m in named_lifs(ctx.model):
            mu, sigma = stats[name]
            beta = float(m.shape_param)
            k_cur = k_indicator(beta, mu, sigma, m.v_th, m.surrogate.half_width)
            if name not in self.k_rec:          # first measurement: record only
                self.k_rec[name] = k_cur
            else:
                k_min = self.update_k_rec(name, k_cur)
                if abs(k_min - k_cur) > TOL:        # Algorithm 1: k_min != k_cur
                    beta, reached = solve_beta(k_min, beta, mu, sigma, m.v_th, m.surrogate.half_width, TOL)
                    m.shape_param.fill_(beta)
                    if not reached:
                        row[f"cpng_unreachable/{name}"] = 1.0
            row[f"k/{name}"] = k_indicator(beta, mu, sigma, m.v_th, m.surrogate.half_width)
            row[f"mu/{name}"], row[f"sigma/{name}"] = mu, sigma
        row.update(layer_params(unwrap(ctx.model), "beta"))
        return row

    def update_k_rec(self, name: str, k_cur: float) -> float:
        """Algorithm 1's record: ``k_rec`` raised to k_limit when below it, else lowered to
        ``k_cur`` when k fell; returns ``k_min = k_rec``, the k the layer's beta is set to."""
        if self.k_rec[name] < self.k_limit:
            self.k_rec[name] = self.k_limit
        elif k_cur < self.k_rec[name]:
            self.k_rec[name] = k_cur
        return self.k_rec[name]

    def state_dict(self) -> dict:
        return {"k_rec": dict(self.k_rec)}

    def load_state_dict(self, state: dict) -> None:
        self.k_rec = dict(state.get("k_rec", {}))
