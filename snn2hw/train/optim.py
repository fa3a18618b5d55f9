"""Adam, SGD with momentum and a cosine learning-rate schedule, small and import-light.

``torch.optim`` imports ``torch._dynamo`` on first use, about a second of
start-up that a 2-second training run cannot afford. The update is Adam's
(Kingma & Ba, with bias correction and L2 weight decay as torch's Adam applies
it); SGD's is torch's (momentum buffer started at the first gradient, no
dampening, no Nesterov, L2 weight decay added to the gradient).
``tests/test_optim.py`` checks both against ``torch.optim`` step by step.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def fill_groups(params: Iterable, defaults: dict) -> list[dict]:
    """Parameters (or group dicts) as groups with every default filled in, as torch.optim
    builds them; ``initial_lr`` is what the cosine schedule starts from."""
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [{"params": params}]
    groups = []
    for g in params:
        group = {**defaults, **g}
        group["params"] = list(group["params"])
        group.setdefault("initial_lr", group["lr"])
        groups.append(group)
    return groups


def zero_grad(groups: list[dict]) -> None:
    """Gradients to None (as ``set_to_none=True``)."""
    for g in groups:
        for p in g["params"]:
            p.grad = None


class Adam:
    """Adam over parameter groups (dicts with ``params`` and optional ``lr``, ``weight_decay``)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.param_groups = fill_groups(params, self.defaults)
        self.step_count = 0
        self.exp_avg = [[torch.zeros_like(p) for p in g["params"]] for g in self.param_groups]
        self.exp_avg_sq = [[torch.zeros_like(p) for p in g["params"]] for g in self.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grad(self.param_groups)

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        for g, m_all, v_all in zip(self.param_groups, self.exp_avg, self.exp_avg_sq):
            live = [i for i, p in enumerate(g["params"]) if p.grad is not None]
            if not live:
                continue
            ps = [g["params"][i] for i in live]
            grads = [g["params"][i].grad for i in live]
            ms, vs = [m_all[i] for i in live], [v_all[i] for i in live]
            b1, b2 = g["betas"]
            if g["weight_decay"]:
                grads = torch._foreach_add(grads, ps, alpha=g["weight_decay"])
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            bc1 = 1 - b1 ** self.step_count
            bc2 = 1 - b2 ** self.step_count
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, g["eps"])
            torch._foreach_addcdiv_(ps, ms, denom, value=-g["lr"] / bc1)

    def state_dict(self) -> dict:
        return {"step": self.step_count,
                "lr": [g["lr"] for g in self.param_groups],
                "exp_avg": [list(m) for m in self.exp_avg],
                "exp_avg_sq": [list(v) for v in self.exp_avg_sq]}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for g, lr in zip(self.param_groups, state["lr"]):
            g["lr"] = lr
        for dst, src in ((self.exp_avg, state["exp_avg"]), (self.exp_avg_sq, state["exp_avg_sq"])):
            for d_group, s_group in zip(dst, src):
                for d, s in zip(d_group, s_group):
                    d.copy_(s)


class SGD:
    """SGD with momentum over parameter groups (dicts with ``params`` and optional ``lr``,
    ``momentum``, ``weight_decay``), as ``torch.optim.SGD`` with dampening 0:

        d = grad + weight_decay * p;  buf = d (first step) else momentum * buf + d;  p -= lr * buf
    """

    def __init__(self, params: Iterable, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        self.defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.param_groups = fill_groups(params, self.defaults)
        self.momentum_buffer: list[list[torch.Tensor | None]] = [[None] * len(g["params"]) for g in self.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grad(self.param_groups)

    @torch.no_grad()
    def step(self) -> None:
        for g, bufs in zip(self.param_groups, self.momentum_buffer):
            for i, p in enumerate(g["params"]):
                if p.grad is None:
                    continue
                d = p.grad
                if g["weight_decay"]:
                    d = d.add(p, alpha=g["weight_decay"])
                if g["momentum"]:
                    if bufs[i] is None:
                        bufs[i] = d.detach().clone()
                    else:
                        bufs[i].mul_(g["momentum"]).add_(d)
                    d = bufs[i]
                p.add_(d, alpha=-g["lr"])

    def state_dict(self) -> dict:
        return {"lr": [g["lr"] for g in self.param_groups],
                "momentum_buffer": [list(b) for b in self.momentum_buffer]}

    def load_state_dict(self, state: dict) -> None:
        for g, lr in zip(self.param_groups, state["lr"]):
            g["lr"] = lr
        for i, group in enumerate(state["momentum_buffer"]):
            for j, b in enumerate(group):
                self.momentum_buffer[i][j] = None if b is None else b.detach().clone()


def make_optimizer(kind: str, groups: list[dict], lr: float, weight_decay: float,
                   momentum: float) -> "Adam | SGD":
    """``adam`` or ``sgd`` (with ``momentum``) over parameter groups."""
    if kind == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return Adam(groups, lr=lr, weight_decay=weight_decay)


class CosineSchedule:
    """``lr_e = lr_0 (1 + cos(pi e / E)) / 2`` after e calls to ``step()``."""

    def __init__(self, optimizer: "Adam | SGD", total_epochs: int) -> None:
        self.optimizer, self.total_epochs, self.epoch = optimizer, int(total_epochs), 0
        self._apply()

    def _apply(self) -> None:
        f = 0.5 * (1 + math.cos(math.pi * min(self.epoch, self.total_epochs) / self.total_epochs))
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "total_epochs": self.total_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._apply()

