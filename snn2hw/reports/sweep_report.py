"""A sweep's results: ``results.csv`` (one row per run), ``results.md`` (mean and
spread over seeds per grid point, robustness per method) and ``results.png``."""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..runs.files import atomic_write_text
from .markdown import command_block, md_table
from .plots import pyplot, save_figure

METRICS = ("test_accuracy", "test_accuracy_at_best", "train_loss", "epochs", "wall_time_s")


@dataclass
class GroupStats:
    """Final test accuracy over the seeds of one (method, grid point)."""

    method: str
    point: tuple[str, ...]        # values in axis order ("" where the axis does not apply)
    n: int
    mean: float
    std: float                    # sample std (n - 1); 0 for a single run
    min: float
    max: float
    best_mean: float              # mean over seeds of the test accuracy at the epoch chosen on validation


def group_stats(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[GroupStats]:
    """Aggregate finished runs over seeds, in the order the grid points first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["method"], tuple(str(r.get(a, "")) for a in axes))
        groups.setdefault(key, [])
        if r.get("test_accuracy") is not None:
            groups[key].append(r)
    out = []
    for (method, point), runs in groups.items():
        acc = [float(r["test_accuracy"]) for r in runs]
        if not acc:
            continue
        out.append(GroupStats(method, point, len(acc), statistics.fmean(acc),
                              statistics.stdev(acc) if len(acc) > 1 else 0.0, min(acc), max(acc),
                              statistics.fmean(float(r["test_accuracy_at_best"]) for r in runs)))
    return out


def _label(axes: Sequence[str], point: tuple[str, ...]) -> str:
    return ", ".join(f"{a}={v}" for a, v in zip(axes, point) if v != "") or "(default)"


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def plot_sweep(stats: Sequence[GroupStats], axes: Sequence[str], path: Path) -> Path:
    """Mean final accuracy (error bar: std over seeds) against the numeric axis with the
    most values; one panel per value of the first categorical axis, one line per method
    (and remaining axes). Without a numeric axis: one bar per grid point."""
    plt = pyplot()
    numeric = [i for i, a in enumerate(axes)
               if all(_as_number(s.point[i]) is not None for s in stats if s.point[i] != "")
               and any(s.point[i] != "" for s in stats)]
    x_axis = max(numeric, key=lambda i: len({s.point[i] for s in stats}), default=None)
    if x_axis is None:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(stats) + 2), 3.8))
        labels = [f"{s.method}\n{_label(axes, s.point)}" for s in stats]
        ax.bar(range(len(stats)), [s.mean for s in stats], yerr=[s.std for s in stats], capsize=3)
        ax.set_xticks(range(len(stats)), labels, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="final test accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3, axis="y")
    else:
        cat = next((i for i in range(len(axes)) if i != x_axis and i not in numeric), None)
        panels = sorted({s.point[cat] for s in stats} - {""}) if cat is not None else [None]
        fig, axs = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False,
                                sharey=True)
        xs_all = [_as_number(s.point[x_axis]) for s in stats if s.point[x_axis] != ""]
        log = min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10
        for ax, panel in zip(axs[0], panels):
            lines: dict[str, list[GroupStats]] = {}
            for s in stats:
                if cat is not None and s.point[cat] not in (panel, ""):
                    continue  # runs the categorical axis does not apply to appear in every panel
                rest = tuple(v for i, v in enumerate(s.point) if i not in (x_axis, cat))
                name = s.method + (f" ({_label([a for i, a in enumerate(axes) if i not in (x_axis, cat)], rest)})"
                                   if any(rest) else "")
                lines.setdefault(name, []).append(s)
            for name, pts in lines.items():
                pts = sorted((p for p in pts if p.point[x_axis] != ""),
                             key=lambda p: _as_number(p.point[x_axis]))
                if not pts:  # this method does not vary along the x axis: a flat reference line
                    continue
                ax.errorbar([_as_number(p.point[x_axis]) for p in pts], [p.mean for p in pts],
                            yerr=[p.std for p in pts], marker="o", capsize=3, label=name)
            if log:
                ax.set_xscale("log")
            ax.set(xlabel=axes[x_axis], ylim=(0, 1),
                   title=f"{axes[cat]}={panel}" if cat is not None else "")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axs[0][0].set_ylabel("final test accuracy (mean ± std over seeds)")
    return save_figure(fig, path)


def write_results(rows: Sequence[dict[str, Any]], axes: Sequence[str], out: Path,
                  command: str | None = None, settings: dict[str, Any] | None = None) -> list[Path]:
    """Write results.csv, results.md and (if any run finished) results.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    columns = ["run", "method", *axes, "seed", "status", *METRICS, "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    files = [out / "results.csv"]

    stats = group_stats(rows, axes)
    finished = sum(r.get("test_accuracy") is not None for r in rows)
    lines = ["# Sweep results", ""]
    lines += command_block(command)
    lines += [f"{len(rows)} runs, {finished} finished"
              + (f", {len(rows) - finished} failed or unfinished" if finished < len(rows) else "") + "."]
    if settings:
        lines += ["", md_table(["setting (all runs)", "value"], [[k, v] for k, v in settings.items()])]
    lines += ["", "## Final test accuracy per grid point", "",
              "Mean, sample standard deviation (n-1), min and max over seeds of the last epoch's "
              "test accuracy; the last column averages each run's test accuracy at its best epoch, chosen on validation.", "",
              md_table(["method", *axes, "runs", "mean", "std", "min", "max", "best-epoch mean"],
                       [[s.method, *s.point, s.n, s.mean, s.std, s.min, s.max, s.best_mean]
                        for s in stats]), ""]
    robust = []
    for method in dict.fromkeys(s.method for s in stats):
        mine = [s for s in stats if s.method == method]
        hi, lo = max(mine, key=lambda s: s.mean), min(mine, key=lambda s: s.mean)
        robust.append([method, len(mine), hi.mean, _label(axes, hi.point), lo.mean,
                       _label(axes, lo.point), f"{100 * (hi.mean - lo.mean):.1f}"])
    lines += ["## Robustness per method", "",
              "Best and worst grid point (mean over seeds) of each method; the drop is in "
              "accuracy points.", "",
              md_table(["method", "points", "best mean", "at", "worst mean", "at", "drop (points)"],
                       robust, digits=4), ""]
    if stats:
        files.append(plot_sweep(stats, axes, out / "results.png"))
        lines += ["![final test accuracy per grid point](results.png)", ""]
    bad = [r for r in rows if r.get("test_accuracy") is None]
    if bad:
        lines += ["## Failed or unfinished runs", "",
                  md_table(["run", "status", "error"], [[r["run"], r["status"], r.get("error", "")]
                                                        for r in bad]), ""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    files.insert(1, out / "results.md")
    return files
