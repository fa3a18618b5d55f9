"""Render one training run directory as ``report.md`` plus PNG plots.

A run directory (what ``snn2hw train --out DIR`` writes) holds ``history.csv``
(one row per epoch: losses, accuracies, and whatever the training method
logged, e.g. ``beta/layers.2``), ``summary.json`` and ``best.pt``/``last.pt``.
The report shows the curves, the adaptive parameters per layer over epochs, and
the spike rate per layer of the best checkpoint on the test set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..runs.checkpoint import checkpoint_file
from ..runs.files import atomic_write_text
from ..runs.history import read_history
from .markdown import fmt, md_table
from .plots import plot_curves, plot_params, plot_spike_rates

# Columns every run has; anything else in history.csv was logged by the method.
BASE_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "test_loss", "test_accuracy", "wall_time_s")
MAX_HISTORY_ROWS = 30


@dataclass
class RunReport:
    """What ``render_run_report`` wrote and the numbers it showed."""

    path: Path
    plots: list[Path]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    spike_rates: dict[str, float] = field(default_factory=dict)
    checkpoint_accuracy: float | None = None


def adaptive_series(history: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Method-logged columns grouped by quantity: ``beta/layers.2`` -> groups["beta"]["layers.2"].

    A column without ``/`` (e.g. Dspike's global ``b``) is its own group with layer ``""``.
    Returns ``{quantity: {layer: (epochs, values)}}`` over the epochs that logged it.
    """
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for row in history:
        for key, value in row.items():
            if key in BASE_COLUMNS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            quantity, _, layer = key.partition("/")
            ep, val = groups.setdefault(quantity, {}).setdefault(layer, ([], []))
            ep.append(row["epoch"])
            val.append(float(value))
    return groups


def _evenly(rows: list[dict], n: int) -> list[dict]:
    """At most ``n`` rows, evenly spaced, always including the first and the last."""
    if len(rows) <= n:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in idx]


def render_run_report(run_dir: str | Path, spike_rates: bool = True) -> RunReport:
    """Write ``RUN_DIR/report.md``, ``curves.png``, ``params.png`` (if the method logged
    adaptive parameters) and ``spike_rates.png`` (from ``snn2hw.api.evaluate`` on the
    best checkpoint); returns what was written and the numbers shown."""
    run = Path(run_dir)
    hist_path = run / "history.csv"
    if not hist_path.exists():
        raise CheckpointError(f"{run}: no history.csv; pass a run directory written by "
                              "`snn2hw train --out DIR` (or `snn2hw sweep`)")
    history = read_history(hist_path)
    if not history:
        raise CheckpointError(f"{hist_path}: no epochs recorded yet; train at least one epoch")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    ckpt_path = checkpoint_file(run) if checkpoint_file(run).exists() else None
    config: dict = {}
    if ckpt_path is not None:
        from ..runs.checkpoint import load_checkpoint

        config = load_checkpoint(ckpt_path).get("run_config", {})

    last = history[-1]
    lines = [f"# Run report: `{run.name}`", ""]
    if not summary:
        lines += ["**Unfinished run** (no summary.json): numbers below are from the last "
                  f"recorded epoch, {last['epoch']}.", ""]
    model = config.get("model", {})
    lines += [md_table(["setting", "value"], [
        ["dataset", config.get("dataset", summary.get("dataset", "-"))],
        ["model", model.get("arch", summary.get("model", "-"))],
        ["method", config.get("method", summary.get("method", "-"))],
        ["method options", json.dumps(config.get("method_options", {})) if config else "-"],
        ["surrogate", f"{model.get('surrogate', '-')} ({model.get('surrogate_param')})"],
        ["timesteps", model.get("timesteps", summary.get("timesteps", "-"))],
        ["seed", config.get("seed", summary.get("seed", "-"))],
    ]), "", "## Summary", ""]
    lines += [md_table(["final test accuracy", "best epoch (chosen on)", "test accuracy at best",
                        "epochs", "training time (s)", "parameters"],
                       [[float(summary.get("final_test_accuracy", last["test_accuracy"])),
                         f"{summary.get('best_epoch', '-')} ({summary.get('selected_on', '-')})",
                         summary.get("test_accuracy_at_best"),
                         len(history), float(last.get("wall_time_s") or 0.0),
                         summary.get("parameters", "-")]]), "",
              "best.pt is the epoch of highest validation accuracy; the test split is only "
              "reported, never used to choose.", ""]

    plots = [plot_curves(history, run / "curves.png")]
    lines += ["## Loss and accuracy", "", "![loss and accuracy](curves.png)", ""]
    shown = _evenly(history, MAX_HISTORY_ROWS)
    if len(shown) < len(history):
        lines += [f"{len(shown)} of {len(history)} epochs, evenly spaced:", ""]
    lines += [md_table(["epoch", "lr", "train loss", "train accuracy", "val accuracy", "test loss",
                        "test accuracy"],
                       [[r["epoch"], f"{r['lr']:.3g}" if r.get("lr") is not None else None, r.get("train_loss"),
                         r.get("train_accuracy"), r.get("val_accuracy"), r.get("test_loss"),
                         r.get("test_accuracy")] for r in shown]), ""]

    groups = adaptive_series(history)
    lines += ["## Adaptive parameters", ""]
    if groups:
        plots.append(plot_params(groups, run / "params.png"))
        rows = []
        for quantity, layers in groups.items():
            for layer, (_, val) in layers.items():
                rows.append([quantity, layer or "(global)", val[0], val[-1], min(val), max(val)])
        lines += ["![adaptive parameters](params.png)", "",
                  md_table(["quantity", "layer", "first", "last", "min", "max"], rows), ""]
    else:
        lines += ["The method logged no adaptive parameters (fixed surrogate).", ""]

    report = RunReport(run / "report.md", plots, summary, history)
    if spike_rates and ckpt_path is not None:
        from ..runs.model import evaluate

        ev = evaluate(ckpt_path)
        report.spike_rates, report.checkpoint_accuracy = ev["spike_rates"], ev["test_accuracy"]
        plots.append(plot_spike_rates(ev["spike_rates"], run / "spike_rates.png"))
        lines += ["## Spike rates", "",
                  f"Checkpoint `{ckpt_path.name}`, first {min(512, ev['samples'])} test samples "
                  f"(test accuracy of this checkpoint: {fmt(ev['test_accuracy'])}).", "",
                  "![spike rates](spike_rates.png)", "",
                  md_table(["layer", "spikes / neuron / step"], [[k, v] for k, v in ev["spike_rates"].items()]),
                  ""]
    atomic_write_text(report.path, "\n".join(lines))
    return report
