"""The Python API; the CLI verbs are thin wrappers over these functions.

    import snn2hw
    result = snn2hw.train({"dataset": "digits", "epochs": 20}, out="runs/d")
    model, ckpt = snn2hw.load("runs/d")
    snn2hw.evaluate("runs/d")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data.datasets import load_dataset
from .errors import ConfigError
from .models.network import SpikingNetwork, spike_rates
from .train.checkpoint import checkpoint_file
from .train.config import RunConfig, build_config, read_config_file
from .train.trainer import RunResult, evaluate_model, load_model, to_time_major
from .train.trainer import train as _train


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML: numbers, bools, lists)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def merge_options(options: dict[str, Any], config_file: str | None = None,
                  overrides: list[str] = ()) -> RunConfig:
    """defaults < config file < command-line options < --set overrides."""
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update(options)
    for item in overrides:
        path, value = parse_override(item)
        target = values
        for part in path[:-1]:
            target = target.setdefault(part.replace("-", "_"), {})
        target[path[-1].replace("-", "_")] = value
    return build_config(values)


def train(config: RunConfig | dict, out: str | Path | None = None,
          progress: bool = False) -> RunResult:
    """Train from a RunConfig or a dict of config keys (flat or nested)."""
    if isinstance(config, dict):
        config = build_config(config)
    return _train(config, out, progress=progress)


def train_from_options(options: dict[str, Any], config_file: str | None = None,
                       overrides: list[str] = (), out: str | None = None,
                       progress: bool = True) -> RunResult:
    """What ``snn2hw train`` does: defaults < config file < flags < --set."""
    if options.get("qat") and options.get("init_from") and not config_file:
        # fine-tuning a checkpoint on a target's grid: its own settings are the defaults
        from .train.qat import fine_tune_defaults

        options = {**fine_tune_defaults(options["init_from"]), **options}
    config = merge_options(options, config_file, overrides)
    return _train(config, out, progress=progress)


def resume(run_dir: str | Path, epochs: int | None = None, progress: bool = False) -> RunResult:
    """Continue an interrupted run from ``run_dir/last.pt`` (optionally to more epochs)."""
    return _train(None, run_dir, resume=True, progress=progress, epochs=epochs)


def load(checkpoint: str | Path) -> tuple[SpikingNetwork, dict]:
    """The network stored in a checkpoint (or run directory), in eval mode, and the checkpoint."""
    return load_model(checkpoint)


def evaluate(checkpoint: str | Path, dataset: str | None = None) -> dict[str, Any]:
    """Test accuracy and per-layer spike rates of a checkpoint."""
    model, ckpt = load_model(checkpoint)
    run = ckpt.get("run_config", {})
    spec = dataset or run.get("dataset", "digits")
    data = load_dataset(spec, run.get("seed", 0))
    acc, loss = evaluate_model(model, data.x_test, data.y_test, data.temporal)
    with torch.inference_mode():
        rates = spike_rates(model, to_time_major(data.x_test[:512], data.temporal))
    return {"checkpoint": str(checkpoint_file(checkpoint)), "dataset": spec, "samples": len(data.x_test),
            "timesteps": model.timesteps, "test_accuracy": acc, "test_loss": loss,
            "spike_rates": rates}


def report(run_dir: str | Path, spike_rates: bool = True):
    """Write ``run_dir/report.md`` with PNG plots (see ``snn2hw.reports.run_report``)."""
    from .reports.run_report import render_run_report

    return render_run_report(run_dir, spike_rates=spike_rates)


def sweep(methods, grid, seeds, out, **kwargs):
    """Run a grid of training runs; see ``snn2hw.train.sweep.sweep`` (same arguments)."""
    from .train.sweep import sweep as _sweep

    return _sweep(methods, grid, seeds, out, **kwargs)
