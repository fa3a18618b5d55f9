"""Accuracy of one or more checkpoints against hardware-noise level (PSG Fig. 8).

Each noise axis (mismatch, thermal, spike loss, dead neurons) is swept alone,
the others held at 0, on ``chips`` simulated chips per level. The chips of a
level are drawn from the same seed at every level and for every model, so the
curves differ by the noise scale and the model, not by the luck of the draw.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..data.datasets import load_dataset
from ..errors import ConfigError
from .. import distributed as dist
from ..runs.files import atomic_write_text
from ..runs.model import evaluate_model, load_model
from .graph import lower
from .noise import MISMATCH_PARAMS, NoiseSpec, quant_spec, simulate
from ..runs.checkpoint import checkpoint_file
from .provenance import command_line, sha256_of, versions

AXES = {  # axis -> (NoiseSpec field, axis label for plots and tables)
    "mismatch": ("mismatch", "device mismatch xi (relative std of each parameter)"),
    "thermal": ("thermal", "thermal noise sigma (std of input current / V_th)"),
    "spike_loss": ("spike_loss", "spike loss probability q"),
    "dead": ("dead", "fraction of dead (silent) neurons"),
}


def _label(path: str, ckpt: dict, used: set[str]) -> str:
    p = Path(path)
    base = p.name if p.is_dir() else f"{p.parent.name}/{p.stem}"
    run = ckpt.get("run_config", {})
    label = f"{base} ({run.get('method', '?')})"
    n = 2
    while label in used:
        label, n = f"{base} ({run.get('method', '?')}) #{n}", n + 1
    used.add(label)
    return label


def robustness(checkpoints: Sequence[str], mismatch: Sequence[float] = (0, 0.05, 0.1, 0.2),
               thermal: Sequence[float] = (0, 0.05, 0.1, 0.2), spike_loss: Sequence[float] = (),
               dead: Sequence[float] = (), chips: int = 10, seed: int = 0,
               mismatch_params: Sequence[str] = MISMATCH_PARAMS, quant: str | None = None,
               weight_bits: int | None = None, state_bits: int | None = None,
               dataset: str | None = None, samples: int | None = None,
               out: str | Path | None = None, progress: bool = True,
               command: str | None = None) -> dict:
    """Sweep each noise axis for each checkpoint; write report.json/.md and PNGs to ``out``.

    Returns the report dict: per model and axis, per level the accuracy of
    every chip, its mean, std, min and max.
    """
    if not checkpoints:
        raise ConfigError("give at least one checkpoint")
    if chips < 1:
        raise ConfigError(f"--chips must be >= 1, got {chips}")
    q = quant_spec(quant, weight_bits, state_bits)
    base = NoiseSpec(mismatch_params=tuple(mismatch_params), quant=q)
    axes = {name: [float(v) for v in levels] for name, levels in
            (("mismatch", mismatch), ("thermal", thermal), ("spike_loss", spike_loss), ("dead", dead))
            if len(levels)}
    t0 = time.perf_counter()
    loaded, used, cache = [], set(), {}
    for path in checkpoints:
        model, ckpt = load_model(path)
        spec = dataset or ckpt.get("run_config", {}).get("dataset", "digits")
        if spec not in cache:
            cache[spec] = load_dataset(spec)
        loaded.append((path, model, ckpt, spec, _label(str(path), ckpt, used)))
    # Levels are independent jobs: under torchrun each rank simulates its share.
    dist.init_from_env()
    levels_all = [(axis, level) for axis, levels in axes.items() for level in levels]
    total = len(loaded) * len(dist.shard_jobs(levels_all))
    bar = None
    if progress and dist.is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="level", dynamic_ncols=True)
    report_models = []
    n_chip_runs = 0
    try:
        for path, model, ckpt, spec, label in loaded:
            data = cache[spec]
            n = min(samples or len(data.x_test), len(data.x_test))
            x, y = data.x_test[:n], data.y_test[:n]
            net = lower(model)
            clean, _ = evaluate_model(model, x, y, data.temporal)
            entry = {"label": label, "checkpoint": str(checkpoint_file(path)), "sha256": sha256_of(path),
                     "method": ckpt.get("run_config", {}).get("method"), "dataset": spec,
                     "samples": n, "timesteps": model.timesteps, "float_accuracy": clean, "sweeps": {}}

            simulated: dict[NoiseSpec, Any] = {}  # level 0 of every axis is the same condition

            def one_level(job: tuple[str, float]) -> dict:
                axis, level = job
                if bar is not None:
                    bar.set_description(f"{label}: {axis}={level:g}")
                cond = replace(base, **{AXES[axis][0]: level})
                if cond not in simulated:
                    simulated[cond] = simulate(net, x, y, cond, chips, seed, temporal=data.temporal)
                res = simulated[cond]
                acc = res.accuracy
                if bar is not None:
                    bar.update()
                return {"level": level, "mean": res.mean, "std": res.std,
                        "min": min(acc), "max": max(acc), "chips": acc}

            for (axis, _), row in zip(levels_all, dist.run_jobs(one_level, levels_all)):
                entry["sweeps"].setdefault(axis, []).append(row)
            n_chip_runs += chips * len(simulated)  # chips actually simulated (on this rank)
            report_models.append(entry)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    report = {
        "kind": "snn2hw-robustness", "command": command_line(command), "versions": versions(),
        "settings": {"chips": chips, "seed": seed, "mismatch_params": list(mismatch_params),
                     "quantisation": q.__dict__ if q else None, "levels": axes,
                     "thermal_unit": "std of the added input current per step, relative to V_th",
                     "mismatch_model": "psi' ~ N(psi, (xi |psi|)^2), once per chip; decays clipped to [0, 1]"},
        "models": report_models, "wall_time_s": wall,
        "seconds_per_chip": wall / max(n_chip_runs, 1),
    }
    if out is not None and dist.is_main_process():
        write_report(report, Path(out))
    return report


def write_report(report: dict, out: Path) -> list[Path]:
    """report.json, report.md and one PNG per noise axis in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    pngs = plot_report(report, out)
    atomic_write_text(out / "report.md", render_markdown(report, [p.name for p in pngs]))
    return [out / "report.json", out / "report.md", *pngs]


def plot_report(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for axis, levels in report["settings"]["levels"].items():
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for m in report["models"]:
            rows = m["sweeps"][axis]
            lv = [r["level"] for r in rows]
            mean = [100 * r["mean"] for r in rows]
            ax.fill_between(lv, [100 * r["min"] for r in rows], [100 * r["max"] for r in rows], alpha=0.15)
            ax.errorbar(lv, mean, yerr=[100 * r["std"] for r in rows], marker="o", capsize=3,
                        label=m["label"])
        ax.set_xlabel(AXES[axis][1])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"accuracy vs {axis.replace('_', ' ')} "
                     f"({report['settings']['chips']} chips/level: mean ± std, band = min-max)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{axis}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def render_markdown(report: dict, images: Sequence[str] = ()) -> str:
    s = report["settings"]
    lines = ["# Hardware-noise robustness", "",
             f"Command: `{report['command']}`  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
             f"{s['chips']} simulated chips per level, seed {s['seed']}; mismatch on "
             f"{', '.join(s['mismatch_params'])} ({s['mismatch_model']}); thermal noise: {s['thermal_unit']}.  ",
             f"Quantisation: {s['quantisation']['name'] if s['quantisation'] else 'none (float)'}.  ",
             f"Wall time {report['wall_time_s']:.1f} s ({report['seconds_per_chip'] * 1000:.1f} ms per simulated chip).",
             "", "| model | checkpoint sha256 | dataset | samples | T | float accuracy |", "|---|---|---|---|---|---|"]
    for m in report["models"]:
        lines.append(f"| {m['label']} | `{m['sha256'][:16]}` | {m['dataset']} | {m['samples']} | "
                     f"{m['timesteps']} | {100 * m['float_accuracy']:.2f} % |")
    for axis, levels in s["levels"].items():
        lines += ["", f"## {AXES[axis][1]}", "",
                  "Accuracy in %, mean ± std over chips [min, max].", "",
                  "| model | " + " | ".join(f"{v:g}" for v in levels) + " |",
                  "|---" * (len(levels) + 1) + "|"]
        for m in report["models"]:
            cells = [f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} [{100 * r['min']:.1f}, {100 * r['max']:.1f}]"
                     for r in m["sweeps"][axis]]
            lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
        img = f"{axis}.png"
        if img in images:
            lines += ["", f"![accuracy vs {axis}]({img})"]
    return "\n".join(lines) + "\n"
