"""Shared by the export tests: an MLP and a conv net trained briefly on digits (cached)."""

from __future__ import annotations

from functools import lru_cache

from snn2hw.data.datasets import load_dataset
from snn2hw.export.base import Samples
from snn2hw.train.config import build_config
from snn2hw.train.trainer import train

CONFIGS = {
    # lam < 1, hard reset, no tdBN
    "mlp": {"arch": "mlp", "hidden": [48, 24], "lam": 0.7, "timesteps": 5},
    # leak, tdBN folded into bias-free convs, sum pooling, a spiking FC layer
    "conv": {"arch": "conv", "channels": [8, 8], "lam": 0.8, "timesteps": 4, "fc_hidden": 32, "pool": "sum"},
    # IAF with subtract reset and average pooling
    "conv_if": {"arch": "conv", "channels": [4, 6], "lam": 1.0, "reset": "soft", "pool": "avg",
                "timesteps": 4},
    # what every target runs (IAF, hard reset, a chain): the exporters' contract test, 1 epoch
    "mlp_iaf": {"arch": "mlp", "hidden": [16], "lam": 1.0, "reset": "hard", "timesteps": 3, "epochs": 1},
}


@lru_cache(maxsize=None)
def trained(kind: str):
    """(model in eval mode, held-out Samples of 120 digits test images)."""
    data = load_dataset("digits", val_fraction=0)    # brief fixtures: no model selection
    data.x_train, data.y_train = data.x_train[:400], data.y_train[:400]
    cfg = build_config({"dataset": "digits", "epochs": 2, "batch_size": 50, "lr": 5e-3, "seed": 3,
                        "val_fraction": 0, **CONFIGS[kind]})
    model = train(cfg, None, progress=False, data=data).model.eval()
    samples = Samples(data.x_test[:120], data.y_test[:120], model.timesteps)
    return model, samples
