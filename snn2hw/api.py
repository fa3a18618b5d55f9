"""The Python API; the CLI verbs are thin wrappers over these functions.

    import snn2hw
    result = snn2hw.train({"dataset": "digits", "epochs": 20}, out="runs/d")
    model, ckpt = snn2hw.load("runs/d")
    snn2hw.evaluate("runs/d")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models.network import SpikingNetwork
from .runs.model import evaluate, load_model
from .train.config import RunConfig, build_config, merge_options
from .train.trainer import RunResult
from .train.trainer import train as _train


def train(config: RunConfig | dict, out: str | Path | None = None,
          progress: bool = False, device: str | None = None, workers: int = 0) -> RunResult:
    """Train from a RunConfig or a dict of config keys (flat or nested) on ``device``
    (None: auto, ``snn2hw.devices``) with ``workers`` data-loader processes."""
    if isinstance(config, dict):
        config = build_config(config)
    return _train(config, out, progress=progress, device=device, workers=workers)


def train_from_options(options: dict[str, Any], config_file: str | None = None,
                       overrides: list[str] = (), out: str | None = None,
                       progress: bool = True, device: str | None = None, workers: int = 0) -> RunResult:
    """What ``snn2hw train`` does: defaults < config file < flags < --set."""
    if options.get("qat") and options.get("init_from") and not config_file:
        # fine-tuning a checkpoint on a target's grid: its own settings are the defaults
        from .train.qat import fine_tune_defaults

        options = {**fine_tune_defaults(options["init_from"]), **options}
    config = merge_options(options, config_file, overrides)
    return _train(config, out, progress=progress, device=device, workers=workers)


def resume(run_dir: str | Path, epochs: int | None = None, progress: bool = False,
           device: str | None = None, workers: int = 0) -> RunResult:
    """Continue an interrupted run from ``run_dir/last.pt`` (optionally to more epochs),
    on any device: the checkpoint holds CPU tensors."""
    return _train(None, run_dir, resume=True, progress=progress, epochs=epochs, device=device,
                  workers=workers)


def load(checkpoint: str | Path, device: str | None = "cpu") -> tuple[SpikingNetwork, dict]:
    """The network stored in a checkpoint (or run directory), in eval mode on ``device``, and the checkpoint."""
    return load_model(checkpoint, device)


def report(run_dir: str | Path, spike_rates: bool = True):
    """Write ``run_dir/report.md`` with PNG plots (see ``snn2hw.reports.run_report``)."""
    from .reports.run_report import render_run_report

    return render_run_report(run_dir, spike_rates=spike_rates)


def sweep(methods, grid, seeds, out, **kwargs):
    """Run a grid of training runs; see ``snn2hw.sweep.sweep`` (same arguments)."""
    from .sweep import sweep as _sweep

    return _sweep(methods, grid, seeds, out, **kwargs)


def robustness(checkpoints, out: str | Path | None = None, **kwargs) -> dict:
    """Accuracy under simulated hardware noise (``snn2hw.hwsim.robustness``, same
    arguments); with ``out``, also writes report.json, report.md and one PNG per
    noise axis there (rank 0 alone under torchrun)."""
    from . import distributed as dist
    from .hwsim.robustness import robustness as _robustness
    from .reports.hwsim_report import write_robustness_report

    result = _robustness(checkpoints, **kwargs)
    if out is not None and dist.is_main_process():
        write_robustness_report(result, out)
    return result
