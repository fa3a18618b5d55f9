"""``asgl``: adaptive smoothing gradient learning (ICML 2023; methods.md "ASGL").

Each spiking layer gets a learnable width alpha (``nn.Parameter`` ``shape_param``,
shape ``asgl_rect``). During training the layer's forward is dual-mode:

    s = H_alpha(x) + m * sg(H(x) - H_alpha(x)),   m ~ Bernoulli(p) per neuron and step

with ``H_alpha(x) = clip(x/alpha + 1/2, 0, 1)``: where m = 1 the value is the
spike, elsewhere the analog ``H_alpha``; the gradient is always ``dH_alpha``
(alpha's is ``-x/alpha^2`` in the window, by autograd). The reset uses this s.
In eval mode (``model.eval()``) the layer fires the exact binary ``H``.
Noise schedule: at each milestone epoch ``p <- 1 - (1 - p) * zeta``.
The masks come from the global torch RNG (seeded per rank under DDP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..core.fused import DualModeValue, step_uniforms
from ..core.layers import LIF
from ..core.surrogate import AsglRect, heaviside
from ..errors import ConfigError
from ..models.network import SpikingNetwork
from ._util import install_shape, named_lifs, unwrap
from .base import MethodContext, layer_params

MIN_WIDTH = 1e-3  # alpha is clamped here in the forward so H_alpha stays defined


def dual_mode_spike(x: Tensor, alpha: Tensor, p: float, shape: AsglRect) -> Tensor:
    """``H_alpha(x) + m * sg(H(x) - H_alpha(x))``, m ~ Bernoulli(p), written so that
    where m = 1 the value is exactly H(x) (no rounding from adding and subtracting)."""
    h_alpha = shape.primitive(x, alpha.clamp_min(MIN_WIDTH))
    if p <= 0.0:
        return h_alpha
    h = heaviside(x)
    if p >= 1.0:
        value = h
    else:
        m = step_uniforms(x) < p
        value = torch.where(m, h, h_alpha.detach())
    return value + (h_alpha - h_alpha.detach())  # value forward, dH_alpha backward


def dual_mode_value(x: Tensor, alpha: Tensor, p: float) -> Tensor:
    """The forward value of ``dual_mode_spike`` (no gradient), bit for bit and from the
    same random draw: the fused loop's ``DualModeValue`` at the clamped width."""
    with torch.no_grad():
        return DualModeValue(alpha.detach().clamp_min(MIN_WIDTH), p)(x)


class DualModeStrategy:
    """A LIF ``spike_strategy``: dual-mode while the layer trains, exact H (with the
    surrogate backward) in eval mode. ``p`` is read from the owning method."""

    def __init__(self, layer: LIF, method: "ASGL") -> None:
        self.layer, self.method = layer, method

    def __call__(self, x: Tensor) -> Tensor:
        if not self.layer.training:
            return self.layer.surrogate_spike(x)
        return dual_mode_spike(x, self.layer.shape_param, self.method.p, self.layer.surrogate)

    # The fused LIF's interface (core/fused.py, FusedStrategy): the forward value
    # without autograd (a DualModeValue: the compiled kernel runs it), the local
    # derivatives dH_alpha/dx and dH_alpha/dalpha from the layer's shape at the
    # (clamped) width; in eval mode the exact step (None).
    @property
    def fused_shape(self) -> AsglRect:
        return self.layer.surrogate

    @property
    def fused_param(self) -> Tensor:
        alpha = self.layer.shape_param
        return alpha.clamp_min(MIN_WIDTH) if self.layer.training else alpha

    @property
    def fused_value(self) -> DualModeValue | None:
        if not self.layer.training:
            return None
        return DualModeValue(self.layer.shape_param.detach().clamp_min(MIN_WIDTH), self.method.p)


def noise_probability(p0: float, zeta: float, milestones: tuple[int, ...], epoch: int) -> float:
    """p at (0-based) ``epoch``: ``p <- 1 - (1 - p) zeta`` once per milestone reached."""
    p = p0
    for m in sorted(milestones):
        if epoch >= m:
            p = 1.0 - (1.0 - p) * zeta
    return p


@dataclass
class ASGL:
    """Options: initial width, noise probability p, its milestones (epochs) and zeta."""

    alpha_init: float = field(default=1.0, metadata={"help": "ASGL: initial width alpha per layer (default 1)"})
    p: float = field(default=0.8, metadata={"flag": "--asgl-p", "help": "ASGL: probability of the spike (noise) per neuron and step (default 0.8)"})
    milestones: tuple[int, ...] = field(default=(), metadata={"help": "ASGL: epochs at which p <- 1 - (1 - p) zeta"})
    zeta: float = field(default=1.0, metadata={"help": "ASGL: milestone factor (default 1: p fixed)"})
    name: ClassVar[str] = "asgl"
    surrogates: ClassVar[tuple[str, ...]] = (AsglRect.name,)

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in (self.milestones or ()))
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"asgl: p must be in [0, 1], got {self.p}")
        if not 0.0 <= self.zeta <= 1.0:
            raise ConfigError(f"asgl: zeta must be in [0, 1], got {self.zeta}")
        if self.alpha_init <= 0:
            raise ConfigError(f"asgl: alpha_init must be > 0, got {self.alpha_init}")
        self.p0 = float(self.p)

    def setup(self, model: SpikingNetwork) -> None:
        for _, m in named_lifs(model):
            install_shape(m, AsglRect(self.alpha_init), self.alpha_init, learnable=True)
            m.spike_strategy = DualModeStrategy(m, self)

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]:
        self.p = noise_probability(self.p0, self.zeta, self.milestones, ctx.epoch)
        return {"p": self.p}

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None:
        return None

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]:
        return layer_params(unwrap(ctx.model), "alpha")

    def state_dict(self) -> dict:
        return {"p": self.p}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state.get("p", self.p))
