"""The global RNG states (Python, numpy, torch, and CUDA's when it is in use) as
checkpoint-safe values, so a resumed run draws exactly what an uninterrupted one
would. ASGL's masks on a GPU come from the CUDA generator of their device, which
``torch.manual_seed`` seeds with the others."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """Python, numpy, torch (and this process's CUDA) RNG states as checkpoint-safe values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
        # this process's GPU (under torchrun every rank's common stream is rank 0's, on its
        # own device), once CUDA is in use; None on a CPU run
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():  # a GPU run resumed on the CPU ignores it
        torch.cuda.set_rng_state(cuda)
