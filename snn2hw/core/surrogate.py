"""Surrogate-gradient shapes and the Heaviside spike function that uses them.

The forward pass is always the exact step ``H(x) = 1 if x > 0 else 0`` with
``x = u - V_th`` (strict: ``H(0) = 0``). A surrogate shape only replaces
``dH/dx`` in the backward pass. Every shape integrates to 1 over x.

A shape is a small dataclass holding its default parameter; the parameter value
actually used is passed as a tensor so that adaptive methods can change it per
layer (CPNG, Dspike) or learn it (PSG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from ..registry import lookup


class SurrogateShape(Protocol):
    """What every surrogate shape provides."""

    name: ClassVar[str]
    param_name: ClassVar[str]

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        """The surrogate of dH/dx at x for shape parameter p."""

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        """d s/d p, used when p is learnable (PSG)."""

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        """A smooth function whose derivative in x is ``grad`` (for tests)."""


def grads(shape: SurrogateShape, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """``(shape.grad(x, p), shape.grad_param(x, p))``, from the shape's ``grads`` where it
    has one (the same values with the passes the two share taken once)."""
    both = getattr(shape, "grads", None)
    return both(x, p) if both is not None else (shape.grad(x, p), shape.grad_param(x, p))


def _no_param_grad(x: Tensor, p: Tensor) -> Tensor:
    return torch.zeros_like(x)


@dataclass(frozen=True)
class Triangle:
    """``beta * (1 - beta|x|)`` on ``|x| < 1/beta``; beta is the peak value."""

    beta: float = 1.0
    name: ClassVar[str] = "triangle"
    param_name: ClassVar[str] = "beta"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        # (p (1 - p|x|)).clamp_min(0) in place on one tensor, bit for bit: |x| (-p) + 1 is
        # 1 - p|x| exactly; five fresh tensors took 2x as long (0.42-0.54 vs 0.21-0.23 ms a block)
        return x.abs().mul_(-p).add_(1.0).mul_(p).clamp_min_(0.0)

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        inside = (x.abs() < 1.0 / p).to(x.dtype)
        return inside * (x - p * x * x.abs())  # d/dp of the primitive below

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        y = (p * x).clamp(-1.0, 1.0)
        return 0.5 + y - 0.5 * y * y.abs()

    def half_width(self, p: float) -> float:
        return 1.0 / p


@dataclass(frozen=True)
class Rectangular:
    """``beta`` on ``|x| < 1/(2 beta)``, 0 elsewhere."""

    beta: float = 1.0
    name: ClassVar[str] = "rectangular"
    param_name: ClassVar[str] = "beta"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        return x.abs().lt_(0.5 / p).mul_(p)  # the window as 1/0 in place, times p: p or 0

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        return x * (x.abs() < 0.5 / p).to(x.dtype)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return (p * x + 0.5).clamp(0.0, 1.0)

    def half_width(self, p: float) -> float:
        return 0.5 / p


@dataclass(frozen=True)
class Arctan:
    """``beta / (1 + (pi beta x)^2)``, derivative of ``atan(pi beta x)/pi + 1/2``."""

    beta: float = 1.0
    name: ClassVar[str] = "arctan"
    param_name: ClassVar[str] = "beta"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        t = x * (math.pi * p)  # one full-size temporary reused in place: the same bits, less memory
        return torch.div(p, t.square_().add_(1.0), out=t)

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        return x / (1.0 + (math.pi * p * x) ** 2)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return torch.atan(math.pi * p * x) / math.pi + 0.5

    def half_width(self, p: float) -> float:
        return 1.0 / p  # CPNG reads the arctan support as 1/beta (methods.md)


@dataclass(frozen=True)
class Sigmoid:
    """``k * sig(k x) * (1 - sig(k x))``, derivative of ``sig(k x)``; peak k/4."""

    k: float = 4.0
    name: ClassVar[str] = "sigmoid"
    param_name: ClassVar[str] = "k"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        sg = torch.mul(p, x).sigmoid_()
        return torch.rsub(sg, 1.0).mul_(sg.mul_(p))  # (p sg)(1 - sg), two tensors instead of five

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        sg = torch.sigmoid(p * x)
        return x * sg * (1.0 - sg)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return torch.sigmoid(p * x)


@dataclass(frozen=True)
class Dspike:
    """Dspike (Li et al. 2021, Eq. 12), temperature b, window +-V_th around V_th.

    The paper's Eq. 12 lives on [0, 1] with centre c = V_th = 0.5: a window of
    +-V_th around the threshold. Kept relative to ``v_th``: with ``z = x / (2 V_th)``,
    ``b (1 - tanh^2(b z)) / (2 tanh(b/2)) / (2 V_th)`` on ``|x| <= V_th``, 0 outside;
    the derivative of ``tanh(b z) / (2 tanh(b/2)) + 1/2`` clipped to [0, 1]
    (integrates to 1). ``v_th`` is the layer's threshold (the method installs it).
    """

    b: float = 1.0
    v_th: float = 1.0
    name: ClassVar[str] = "dspike"
    param_name: ClassVar[str] = "b"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        # sech^2(z) = 4 e (1 - e), e = sigmoid(-2|z|), z = x p / (2 V_th), rounded as before, in two fresh
        # tensors (a per-batch cost: allocations cost here more than in-place passes): the
        # window |x| <= V_th as 1/0 in place of |x|, (window - e) e clamped at 0 is (1 - e) e
        # inside and 0 outside, and the constant times 4 is one exact power-of-two rescale
        a = x.abs()
        e = a.mul((p / (2.0 * self.v_th)) * -2.0).sigmoid_()
        g = a.le_(self.v_th).sub_(e).mul_(e).clamp_min_(0.0)
        return g.mul_(p / torch.tanh(p / 2.0) / self.v_th)

    def sech2(self, b: float) -> tuple[float, float, float]:
        """(k, scale, window): ``grad`` is ``scale q / (1 + q)^2``, ``q = exp(-k |x|)``, on
        ``|x| <= window`` (the compiled pass ``_kernel.shape_grad`` takes)."""
        return b / self.v_th, b / math.tanh(b / 2.0) / self.v_th, self.v_th

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        inside = (x.abs() <= self.v_th).to(x.dtype)
        z = x / (2.0 * self.v_th)
        th, th2 = torch.tanh(p * z), torch.tanh(p / 2.0)
        d_num = z * (1.0 - th * th) * th2 - th * 0.5 * (1.0 - th2 * th2)
        return inside * d_num / (2.0 * th2 * th2)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        z = x.clamp(-self.v_th, self.v_th) / (2.0 * self.v_th)
        return torch.tanh(p * z) / (2.0 * torch.tanh(p / 2.0)) + 0.5


SURROGATES: dict[str, type] = {
    cls.name: cls for cls in (Triangle, Rectangular, Arctan, Sigmoid, Dspike)
}


def register_surrogate(cls: type) -> type:
    """Add a shape to the registry (usable as a class decorator)."""
    SURROGATES[cls.name] = cls
    return cls


# The shape a network gets when neither its config nor its training method names one.
DEFAULT_SURROGATE = "triangle"


def make_surrogate(name: str | None, param: float | None = None) -> SurrogateShape:
    """Build a registered shape by name (None: DEFAULT_SURROGATE), with its parameter or its default."""
    cls = lookup(SURROGATES, DEFAULT_SURROGATE if name is None else name, "surrogate")
    return cls() if param is None else cls(float(param))


def default_param(shape: SurrogateShape) -> float:
    return float(getattr(shape, shape.param_name))


class _HeavisideSurrogate(torch.autograd.Function):
    """Forward: strict Heaviside. Backward: the shape's surrogate derivative."""

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor, shape: SurrogateShape) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, p)
        ctx.shape = shape
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, p = ctx.saved_tensors
        grad_x = grad_p = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out * ctx.shape.grad(x, p)
        if ctx.needs_input_grad[1]:
            g = grad_out * ctx.shape.grad_param(x, p)
            grad_p = g.sum() if p.dim() == 0 else g.sum_to_size(p.shape)
        return grad_x, grad_p, None


def heaviside(x: Tensor) -> Tensor:
    """Exact strict step ``x > 0`` as the input's dtype (no gradient)."""
    return (x > 0).to(x.dtype)


def spike(x: Tensor, shape: SurrogateShape, p: Tensor | float | None = None) -> Tensor:
    """Heaviside forward with the surrogate ``shape`` in the backward pass."""
    if p is None:
        p = default_param(shape)
    if not isinstance(p, Tensor):
        p = torch.tensor(float(p), dtype=x.dtype, device=x.device)
    return _HeavisideSurrogate.apply(x, p, shape)


# --- Shapes of the adaptive methods (PSG, GSG, ASGL); appended to the registry. ---

PSG_DGAMMA = ("analytic", "printed")


@register_surrogate
@dataclass(frozen=True)
class PsgArctan:
    """PSG, convolutional spiking layers (Wang et al., Eqs. 8-12).

    ``f = atan(gamma x) + 1/2``; both partial derivatives rescaled to peak 1:
    ``do/du = 1 / (1 + (gamma x)^2)``. ``do/dgamma``: "analytic" (default) is
    ``df/dgamma = x / (1 + (gamma x)^2)`` times ``2 gamma`` (its peak is
    ``1/(2 gamma)`` at ``|gamma x| = 1``), i.e. ``2 gamma x / (1 + (gamma x)^2)``;
    "printed" is Eq. 12 as extracted, ``1 / (1 + (gamma x)^2)`` (the factor x lost).
    """

    gamma: float = 1.0
    dgamma: str = "analytic"
    name: ClassVar[str] = "psg_arctan"
    param_name: ClassVar[str] = "gamma"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        # 1 / (1 + (p x)^2) in place on one temporary: the same bits as the expression
        # (pow 2 is x*x, 1/t is reciprocal), a quarter of the time on a backward block
        return torch.mul(p, x).square_().add_(1.0).reciprocal_()

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        if self.dgamma == "printed":
            return self.grad(x, p)
        return torch.mul(2.0 * p, x).div_(torch.mul(p, x).square_().add_(1.0))  # 2 p x / (1 + (p x)^2)

    def grads(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(grad, grad_param)`` bit for bit, ``1 + (p x)^2`` computed once."""
        t = torch.mul(p, x).square_().add_(1.0)
        dp = self.grad(x, p) if self.dgamma == "printed" else torch.mul(2.0 * p, x).div_(t)
        return t.reciprocal_(), dp

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return torch.atan(p * x) / p + 0.5


@register_surrogate
@dataclass(frozen=True)
class PsgSoftplus:
    """PSG, fully connected spiking layers (Wang et al., Eqs. 13-17).

    ``f = ln(1 + exp(gamma x))``; rescaled ``do/du = sigmoid(gamma x)`` (peak 1 as
    x grows). ``do/dgamma``: "analytic" (default) is ``df/dgamma = x sigmoid(gamma x)``,
    unbounded above, so CLIPPED to [-1, 1] (it cannot be rescaled to a peak);
    "printed" is Eq. 17 as extracted, ``sigmoid(gamma x)``.
    """

    gamma: float = 1.0
    dgamma: str = "analytic"
    name: ClassVar[str] = "psg_softplus"
    param_name: ClassVar[str] = "gamma"
    # PSG rescales do/du and do/dgamma separately (peak 1, clipped), so
    # grad_param is not d(primitive)/dgamma; tests pin it to the paper's formula.
    grad_param_from_primitive: ClassVar[bool] = False

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        return torch.sigmoid(p * x)

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        if self.dgamma == "printed":
            return torch.sigmoid(p * x)
        return (x * torch.sigmoid(p * x)).clamp(-1.0, 1.0)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return torch.nn.functional.softplus(p * x) / p


@register_surrogate
@dataclass(frozen=True)
class GsgTanh:
    """GSG (Chen et al., Eqs. 6-9): ``s = a (tanh(beta x) + c)`` with ``a = max(1/beta, 1)``.

    ``ds/du = a beta (1 - tanh^2(beta x))``: peak 1 while beta < 1 (the window
    widens as beta falls), peak beta once beta >= 1. Integrates to ``2a``.
    """

    beta: float = 1.0
    name: ClassVar[str] = "gsg_tanh"
    param_name: ClassVar[str] = "beta"

    @staticmethod
    def scale(p: Tensor) -> Tensor:
        """``a = max(1/beta, 1)`` (Eq. 8)."""
        return torch.clamp(1.0 / p, min=1.0)

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        # 1 - tanh^2(z) = 4 (e - e^2), e = sigmoid(-2|z|): sigmoid is several times cheaper
        # than tanh here, no cancellation (e <= 1/2), one tensor (addcmul_ in place);
        # |x| (-2 beta) is -2 |beta x| bit for bit (beta > 0; a factor 2 rounds exactly), one pass fewer
        e = x.abs().mul_(p * -2.0).sigmoid_()
        return e.addcmul_(e, e, value=-1.0).mul_(self.scale(p) * p * 4.0)

    def sech2(self, beta: float) -> tuple[float, float, float]:
        """(k, scale, window) as ``Dspike.sech2``: k = 2 beta, scale = 4 a beta, no window."""
        return 2.0 * beta, 4.0 * beta * max(1.0 / beta, 1.0), math.inf

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        th = torch.tanh(p * x)
        da = torch.where(p < 1.0, -1.0 / (p * p), torch.zeros_like(p))
        return da * th + self.scale(p) * x * (1.0 - th * th)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return self.scale(p) * torch.tanh(p * x) + 0.5


@register_surrogate
@dataclass(frozen=True)
class AsglRect:
    """ASGL's rectangular smoothing of width alpha (Wang et al. ICML 2023).

    ``H_alpha(x) = clip(x/alpha + 1/2, 0, 1)``; its derivative ``1/alpha`` on
    ``|x| < alpha/2``; ``dH_alpha/dalpha = -x/alpha^2`` inside the window.
    The parameter is the WIDTH (the rectangular shape's beta is ``1/alpha``).
    """

    alpha: float = 1.0
    name: ClassVar[str] = "asgl_rect"
    param_name: ClassVar[str] = "alpha"

    def grad(self, x: Tensor, p: Tensor) -> Tensor:
        return x.abs().lt_(0.5 * p).div_(p)  # the window as 1/0 in place, over p

    def grad_param(self, x: Tensor, p: Tensor) -> Tensor:
        return -(x.abs() < 0.5 * p).to(x.dtype) * x / (p * p)

    def primitive(self, x: Tensor, p: Tensor) -> Tensor:
        return (x / p + 0.5).clamp(0.0, 1.0)
