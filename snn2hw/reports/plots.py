"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported late: it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG at ``dpi`` and free it; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _wide_range(values: Sequence[float]) -> bool:
    """Log scale when positive values span more than a factor of 10."""
    pos = [v for v in values if v == v and v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > 10


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy (train, validation where recorded, and test) over epochs."""
    plt = pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [r["epoch"] for r in history]
    keys = [("train", "-"), ("val", ":"), ("test", "--")]
    for key, style in (k for k in keys if any(r.get(f"{k[0]}_loss") is not None for r in history)):
        ax_l.plot(epochs, [r.get(f"{key}_loss") for r in history], style, marker=".", label=key)
        ax_a.plot(epochs, [r.get(f"{key}_accuracy") for r in history], style, marker=".", label=key)
    ax_l.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_params(groups: dict[str, dict[str, tuple[list[float], list[float]]]], path: Path) -> Path:
    """One panel per adaptive quantity (beta, gamma, alpha, b, k, p, ...), one line per layer.

    ``groups[name][layer] = (epochs, values)``; layer ``""`` is a global value.
    """
    plt = pyplot()
    n = len(groups)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, layers) in zip(axes.flat, groups.items()):
        values = []
        for layer, (ep, val) in layers.items():
            ax.plot(ep, val, marker=".", label=layer or name)
            values += val
        if _wide_range(values):
            ax.set_yscale("log")
        ax.set(xlabel="epoch", title=name)
        ax.grid(alpha=0.3)
        if len(layers) > 1 or next(iter(layers)):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_spike_rates(rates: dict[str, float], path: Path) -> Path:
    """Bar chart of spikes per neuron per step, one bar per LIF layer."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rates) + 2), 3.2))
    ax.bar(range(len(rates)), list(rates.values()), color="tab:blue")
    ax.set_xticks(range(len(rates)), list(rates), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="spikes / neuron / step", title="spike rate per layer")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
