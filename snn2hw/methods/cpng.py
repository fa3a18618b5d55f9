"""``cpng``: per-layer surrogate sharpness controlled by the effective-domain indicator k
(Lin, Deng, Gu 2023; methods.md "CPNG").

With ``u`` the pre-spike membrane potential of a layer on a fixed probe batch,
``mu, sigma`` its mean and std over (batch, T, neurons), and ``d(beta)`` the
half-width of the surrogate's support (triangle ``1/beta``, rectangular
``1/(2 beta)``, arctan ``1/beta``):

    k(beta) = Phi((V_th + d - mu)/sigma) - Phi((V_th - d - mu)/sigma)

the fraction of potentials (under a normal fit) that receive a gradient. After
epoch 0 ``k_rec = k``. After each later epoch, ``target = max(k_rec, k_limit)``:
if ``k > target`` beta is raised by binary search until ``k(beta) = target``;
otherwise ``k_rec = max(k, k_limit)`` and beta stays. beta never decreases.
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


def normal_cdf(z: float) -> float:
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def k_indicator(beta: float, mu: float, sigma: float, v_th: float, half_width) -> float:
    """Fraction of N(mu, sigma^2) inside the surrogate support ``V_th +- d(beta)``."""
    d = half_width(beta)
    sigma = max(sigma, 1e-12)
    return normal_cdf((v_th + d - mu) / sigma) - normal_cdf((v_th - d - mu) / sigma)


def solve_beta(target: float, beta0: float, mu: float, sigma: float, v_th: float, half_width,
               tol: float = 1e-7, beta_max: float = 1e6) -> float:
    """The smallest ``beta >= beta0`` with ``k(beta) = target`` (k falls as beta rises).

    Brackets by doubling, then bisects on beta until k is within ``tol`` of the
    target; returns ``beta_max`` if even that cannot bring k down to the target.
    """
    k = lambda b: k_indicator(b, mu, sigma, v_th, half_width)  # noqa: E731
    if k(beta0) <= target:
        return beta0
    lo, hi = beta0, beta0 * 2.0
    while k(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi >= beta_max:
            return beta_max
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        km = k(mid)
        if abs(km - target) <= tol:
            return mid
        lo, hi = (mid, hi) if km > target else (lo, mid)
    return hi


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
                target = max(self.k_rec[name], self.k_limit)
                if k_cur > target:
                    beta = solve_beta(target, beta, mu, sigma, m.v_th, m.surrogate.half_width)
                    m.shape_param.fill_(beta)
                else:
                    self.k_rec[name] = max(k_cur, self.k_limit)
            row[f"k/{name}"] = k_indicator(beta, mu, sigma, m.v_th, m.surrogate.half_width)
            row[f"mu/{name}"], row[f"sigma/{name}"] = mu, sigma
        row.update(layer_params(unwrap(ctx.model), "beta"))
        return row

    def state_dict(self) -> dict:
        return {"k_rec": dict(self.k_rec)}

    def load_state_dict(self, state: dict) -> None:
        self.k_rec = dict(state.get("k_rec", {}))
