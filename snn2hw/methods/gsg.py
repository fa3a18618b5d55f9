"""``gsg``: gradual surrogate gradient (Chen et al.; methods.md "GSG and ISNM").

Backward ``ds/du = a beta (1 - tanh^2(beta x))`` (shape ``gsg_tanh``), with the
per-epoch log-linear schedule (Eq. 7, ``epoch`` 0-based, ``E`` = the run's
epochs; the last epoch reaches beta_max)

    beta(epoch) = exp(log beta_min + (log beta_max - log beta_min) * epoch / (E - 1))

and ``a = max(1/beta, 1)`` (Eq. 8). The paper's values are not legible; our
defaults beta_min = 0.5 (wide: the window covers |x| <~ 4, peak 1) and
beta_max = 10 (close to the step, peak 10) span the paper's "broad early,
near-exact late" (Fig. 2). ISNM (``--carrier current``: BN and pooling act on
currents) and the paper's soft reset (Eq. 4, ``u = lam u + c - V_th s``, the
threshold subtracted without decay: ``--reset soft_nodecay``) are model options
that GSG runs with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..core.surrogate import GsgTanh
from ..errors import ConfigError
from ..models.network import SpikingNetwork
from ._util import install_shape, named_lifs, unwrap
from .base import MethodContext, layer_params


def gsg_beta(epoch: int, max_epoch: int, beta_min: float, beta_max: float) -> float:
    """Eq. 7: log-linear from beta_min (epoch 0) to beta_max (the last epoch, max_epoch - 1)."""
    frac = min(epoch / max(max_epoch - 1, 1), 1.0)
    return math.exp(math.log(beta_min) + (math.log(beta_max) - math.log(beta_min)) * frac)


@dataclass
class GSG:
    """Options: the schedule's end points."""

    beta_min: float = field(default=0.5, metadata={"help": "GSG: beta at the first epoch (default 0.5)"})
    beta_max: float = field(default=10.0, metadata={"help": "GSG: beta reached at the last epoch (default 10)"})
    name: ClassVar[str] = "gsg"
    surrogates: ClassVar[tuple[str, ...]] = (GsgTanh.name,)

    def __post_init__(self) -> None:
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ConfigError(f"gsg: need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")

    def setup(self, model: SpikingNetwork) -> None:
        for _, m in named_lifs(model):
            install_shape(m, GsgTanh(self.beta_min), self.beta_min)

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]:
        beta = gsg_beta(ctx.epoch, ctx.max_epochs, self.beta_min, self.beta_max)
        for _, m in named_lifs(ctx.model):
            m.shape_param.fill_(beta)
        row = layer_params(unwrap(ctx.model), "beta")
        row["a"] = max(1.0 / beta, 1.0)
        return row

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None:
        return None

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}  # the schedule is a function of the epoch

    def load_state_dict(self, state: dict) -> None:
        pass
