"""Process-group helpers that are no-ops in a single process.

Methods call these so their adaptive state stays identical on every rank
(CPNG all-reduces membrane statistics, Dspike broadcasts b); outside
``torchrun`` they return their input unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (a new tensor; ``t`` itself is not changed)."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out / world_size()


def all_reduce_sum(t: Tensor) -> Tensor:
    if not is_distributed():
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
