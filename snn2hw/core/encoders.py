"""Spike encoders: how a static sample ``x`` (B, ...) reaches the network over T steps.

    direct:   the analog frame at every step (the first layer's synaptic ops are MACs)
    rate:     s[t] ~ Bernoulli(clip(x, 0, 1)), independent per value and step
    latency:  one spike at step round((1 - x)(T - 1)) for x = clip(x, 0, 1) > 0, none for x = 0
              (larger values fire earlier; ``round`` is torch's, half to even)

``encode`` returns (T, B, ...); ``direct`` is returned as a broadcast view (no copy).
The encoding is part of the model config, so exporters and hwsim know how inputs arrive.
"""

from __future__ import annotations

import torch
from torch import Tensor

ENCODINGS = ("direct", "rate", "latency")


def direct_encode(x: Tensor, timesteps: int) -> Tensor:
    return x.unsqueeze(0).expand(timesteps, *x.shape)


def rate_encode(x: Tensor, timesteps: int, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli spikes with probability ``clip(x, 0, 1)`` per value and step.

    ``generator`` None draws from torch's global RNG (which a training run seeds
    and checkpoints, so a resumed run draws the same spikes)."""
    p = x.clamp(0.0, 1.0).unsqueeze(0).expand(timesteps, *x.shape)
    u = torch.rand(p.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (u < p).to(x.dtype)


def latency_encode(x: Tensor, timesteps: int) -> Tensor:
    """One spike per positive value at step ``round((1 - x)(T - 1))``; none for x <= 0."""
    x = x.clamp(0.0, 1.0)
    step = torch.round((1.0 - x) * (timesteps - 1)).long()
    t = torch.arange(timesteps, device=x.device).view(-1, *([1] * x.dim()))
    return ((t == step.unsqueeze(0)) & (x > 0).unsqueeze(0)).to(x.dtype)


def encode(kind: str, x: Tensor, timesteps: int, generator: torch.Generator | None = None) -> Tensor:
    """(T, B, ...) input of the static batch ``x`` (B, ...) under encoding ``kind``."""
    if kind == "direct":
        return direct_encode(x, timesteps)
    if kind == "rate":
        return rate_encode(x, timesteps, generator)
    if kind == "latency":
        return latency_encode(x, timesteps)
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {kind!r}")
