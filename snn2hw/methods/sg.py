"""``sg``: a fixed surrogate (the model config's shape and parameter), the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..models.network import SpikingNetwork
from .base import MethodContext


@dataclass
class FixedSurrogate:
    name: ClassVar[str] = "sg"
    surrogates: ClassVar[tuple[str, ...]] = ()

    def setup(self, model: SpikingNetwork) -> None:
        pass

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]:
        return {}

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None:
        return None

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
