"""Seeded CUBA models and the QAT spike probe shared by the Xylo and Loihi QAT/hwsim tests."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.train.qat import attach_qat


def bursting_cuba_model(arch: str, hidden: tuple[int, ...], seed: int, timesteps: int, *, alpha: float = 0.7,
                        lam: float = 0.9, input_gain: float = 1.5):
    """A soft-reset CUBA model on 3 inputs and 3 classes, off-grid leaks by default (lam 0.9 ->
    0.875, alpha 0.7 -> 0.75 on Xylo), input weights scaled by ``input_gain`` and the others by
    0.6, biases in [-0.1, 0.4): weights that burst once on Xylo's grid."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, input_shape=(3,), hidden=hidden, num_classes=3, timesteps=timesteps,
                                    neuron="cuba", alpha=alpha, lam=lam, reset="soft", v_th=1.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.mul_(input_gain if p.shape[1] == 3 else 0.6)
            elif name.endswith("bias"):
                p.uniform_(-0.1, 0.4)
    return model.eval()


def qat_spikes(model, x: torch.Tensor, target: str, input_range: tuple[float, float],
               probed: Callable[[torch.nn.Module], bool]) -> list[np.ndarray]:
    """The outputs of every module ``probed`` accepts, from one no-grad forward with ``--qat
    target`` attached (detached again afterwards, hooks removed)."""
    got = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: got.append(out.detach().numpy()))
             for m in model.modules() if probed(m)]
    handle = attach_qat(model, target, input_range)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.detach()
        for h in hooks:
            h.remove()
    return got
