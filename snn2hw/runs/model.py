"""A run's model: rebuilt from its checkpoint, evaluated on its dataset.

Every verb that reads a run (evaluate, export, robustness, energy, report) comes
through here, never through the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.datasets import load_dataset, to_time_major
from ..devices import describe, resolve_device
from ..errors import CheckpointError
from ..methods import make_method
from ..models.config import ModelConfig
from ..models.network import SpikingNetwork, build_model, spike_rates
from .checkpoint import checkpoint_file, load_checkpoint


def model_device(model: torch.nn.Module) -> torch.device:
    """The device that holds ``model``'s parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def evaluate_model(model: SpikingNetwork, x: Tensor, y: Tensor, temporal: bool = False,
                   batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y) in eval mode, in fp32, on the
    model's device (batches are moved there; the sums are read once at the end)."""
    was_training = model.training
    model.eval()
    dev = model_device(model)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        out = model(to_time_major(xb, temporal))
        correct += (out.argmax(1) == yb).sum()
        loss_sum += F.cross_entropy(out, yb, reduction="sum").double()  # summed as Python floats were
    model.train(was_training)
    return int(correct) / max(len(x), 1), float(loss_sum) / max(len(x), 1)


def load_model(path: str | Path, device: str | torch.device | None = "cpu") -> tuple[SpikingNetwork, dict]:
    """Rebuild the network a checkpoint holds (eval mode) on ``device`` (``devices.resolve_device``;
    the checkpoint is read onto the CPU first, whatever device wrote it) and return it with
    the checkpoint."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = build_model(cfg)
    run = ckpt.get("run_config", {})
    if run.get("method"):
        make_method(run["method"], run.get("method_options", {})).setup(model)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model config ({str(exc)[:200]})") from None
    model.eval()
    return model.to(dev), ckpt


def evaluate(checkpoint: str | Path, dataset: str | None = None,
             device: str | torch.device | None = None) -> dict[str, Any]:
    """Test accuracy and per-layer spike rates of a checkpoint, computed on ``device``."""
    model, ckpt = load_model(checkpoint, device)
    run = ckpt.get("run_config", {})
    spec = dataset or run.get("dataset", "digits")
    data = load_dataset(spec, run.get("seed", 0))
    acc, loss = evaluate_model(model, data.x_test, data.y_test, data.temporal)
    with torch.inference_mode():
        rates = spike_rates(model, to_time_major(data.x_test[:512], data.temporal).to(model_device(model)))
    return {"checkpoint": str(checkpoint_file(checkpoint)), "dataset": spec, "samples": len(data.x_test),
            "timesteps": model.timesteps, "device": describe(model_device(model)), "test_accuracy": acc, "test_loss": loss,
            "epoch": int(ckpt["epoch"]) + 1 if "epoch" in ckpt else None,
            "selected_on": "validation" if "best_val_accuracy" in ckpt else "unknown (older checkpoint)",
            "spike_rates": rates}
