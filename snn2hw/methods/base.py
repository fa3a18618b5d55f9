"""The interface every training method implements (a Protocol, not a base class
to inherit code from) and the context the trainer hands it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from torch import Tensor

from ..models.network import SpikingNetwork


@dataclass
class MethodContext:
    """What a method may use at its hooks."""

    model: SpikingNetwork
    epoch: int                       # 0-based epoch about to start / just finished
    max_epochs: int
    probe_x: Tensor                  # one fixed training batch chosen at the start
    probe_y: Tensor
    loss_fn: Callable[[Tensor, Tensor], Tensor]   # (per-step logits (T,B,K), labels) -> loss
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingMethod(Protocol):
    """Pluggable adaptive-surrogate strategy.

    Order of calls: ``setup`` once, after the model is built and before the
    optimiser is made (so parameters it adds are optimised); then per epoch
    ``on_epoch_start``, per batch ``extra_loss`` after the forward pass, and
    ``on_epoch_end``. What the two epoch hooks return (name -> value, e.g.
    ``beta/layers.2``) is written to the run's history.
    """

    name: ClassVar[str]
    # The surrogate shapes ``setup`` installs (registry names, core/surrogate.py), or
    # () when the method trains with the config's shape. A run of a method that
    # installs its own refuses another --surrogate (methods.resolve_surrogate).
    surrogates: ClassVar[tuple[str, ...]]

    def setup(self, model: SpikingNetwork) -> None: ...

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]: ...

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None: ...

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def layer_params(model: SpikingNetwork, label: str) -> dict[str, float]:
    """Each LIF layer's current shape parameter, keyed ``label/<layer name>``."""
    from ..core.layers import LIF

    return {f"{label}/{name}": float(m.shape_param.detach())
            for name, m in model.named_modules() if isinstance(m, LIF)}
