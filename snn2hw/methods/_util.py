"""Small helpers the adaptive methods share (not a base class)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ..core.layers import LIF
from ..core.surrogate import SurrogateShape


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def named_lifs(model: nn.Module) -> list[tuple[str, LIF]]:
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, LIF)]


def install_shape(lif: LIF, shape: SurrogateShape, value: float, learnable: bool = False) -> None:
    """Give ``lif`` a new surrogate shape and parameter value (a Parameter if learnable).

    Assigning an ``nn.Parameter`` to ``shape_param`` replaces the buffer of the
    same name, so checkpoints keep the key ``<layer>.shape_param`` either way.
    """
    lif.surrogate = shape
    like = lif.shape_param.detach()
    t = torch.tensor(float(value), dtype=like.dtype, device=like.device)
    if learnable:
        lif.shape_param = nn.Parameter(t)
    else:
        if isinstance(lif.shape_param, nn.Parameter):
            del lif._parameters["shape_param"]
            lif.register_buffer("shape_param", t)
        else:
            lif.shape_param.copy_(t)


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Run probe passes without changing BN running statistics (restored on exit)."""
    saved = {k: v.detach().clone() for k, v in model.named_buffers() if k.endswith(("running_mean", "running_var"))}
    try:
        yield
    finally:
        own = dict(model.named_buffers())
        with torch.no_grad():
            for k, v in saved.items():
                own[k].copy_(v)


def probe_membranes(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Pre-spike membrane potentials u (T, B, ...) of every LIF layer on ``x``.

    Train-mode forward (the statistics the surrogate sees during training), no
    gradient, BN running statistics untouched.
    """
    net = unwrap(model)
    lifs = named_lifs(net)
    was_training = net.training
    net.train()
    try:
        with torch.no_grad(), frozen_buffers(net):
            for _, m in lifs:
                m.record_membrane = True
            net.forward_sequence(x)
            return {n: m.last_membrane for n, m in lifs}
    finally:
        for _, m in lifs:
            m.record_membrane = False
            m.last_membrane = None
        net.train(was_training)
