"""Accuracy of one or more checkpoints against hardware-noise level (PSG Fig. 8).

Each noise axis (mismatch, thermal, spike loss, dead neurons) is swept alone,
the others held at 0, on ``chips`` simulated chips per level. The chips of a
level are drawn from the same seed at every level and for every model, so the
curves differ by the noise scale and the model, not by the luck of the draw.

With a ``target`` (a ``QUANT_PRESETS`` name) every condition runs on that
target's precision, and the noises are also combined: each (mismatch, thermal)
pair of the given levels on the target's grid at once, the "what will this lose
on the chip" table, reported next to the same model's operation counts and
energy (``energy.energy``; the target's own profile where it has a verified
pJ per synaptic operation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..data.datasets import DataSplit, load_dataset
from ..devices import resolve_device
from ..errors import ConfigError
from .. import distributed as dist
from ..models.network import SpikingNetwork
from ..runs.checkpoint import checkpoint_file
from ..runs.model import evaluate_model, load_model
from .graph import LoweredNet, lower
from ..registry import lookup
from .energy import energy
from .noise import MISMATCH_PARAMS, QUANT_PRESETS, ChipResult, NoiseSpec, QuantSpec, quant_spec, simulate
from .profiles import PROFILES
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


@dataclass
class ModelUnderTest:
    """One checkpoint ready to simulate: its network, lowered, and its test samples."""

    label: str
    path: str
    checkpoint: dict
    dataset: str
    model: SpikingNetwork
    net: LoweredNet
    x: Tensor
    y: Tensor
    temporal: bool


def noise_levels(mismatch: Sequence[float], thermal: Sequence[float], spike_loss: Sequence[float],
                 dead: Sequence[float]) -> dict[str, list[float]]:
    """The axes to sweep (those given at least one level), in report order."""
    return {name: [float(v) for v in levels] for name, levels in
            (("mismatch", mismatch), ("thermal", thermal), ("spike_loss", spike_loss), ("dead", dead))
            if len(levels)}


def load_models(checkpoints: Sequence[str], dataset: str | None, samples: int | None,
                device: str | torch.device | None = "cpu") -> list[ModelUnderTest]:
    """Load each checkpoint onto ``device`` with the first ``samples`` test samples of
    ``dataset`` (default: the one it was trained on); a dataset is loaded once however
    many models use it. The samples stay on the CPU; each batch is moved when it runs."""
    dev = resolve_device(device)
    loaded, used, cache = [], set(), {}
    for path in checkpoints:
        model, ckpt = load_model(path, dev)
        spec = dataset or ckpt.get("run_config", {}).get("dataset", "digits")
        if spec not in cache:
            cache[spec] = load_dataset(spec)
        data: DataSplit = cache[spec]
        n = min(samples or len(data.x_test), len(data.x_test))
        net = replace(lower(model).to(dev), input_range=data.value_range)   # a target's input grid follows it
        loaded.append(ModelUnderTest(_label(str(path), ckpt, used), str(path), ckpt, spec, model,
                                     net, data.x_test[:n], data.y_test[:n], data.temporal))
    return loaded


def model_entry(m: ModelUnderTest) -> dict:
    """A model's row of the report: provenance and its noise-free (float) accuracy."""
    clean, _ = evaluate_model(m.model, m.x, m.y, m.temporal)
    return {"label": m.label, "checkpoint": str(checkpoint_file(m.path)), "sha256": sha256_of(m.path),
            "method": m.checkpoint.get("run_config", {}).get("method"), "dataset": m.dataset,
            "samples": len(m.x), "timesteps": m.model.timesteps, "float_accuracy": clean}


def level_conditions(base: NoiseSpec, axes: dict[str, list[float]]) -> dict[tuple[str, float], NoiseSpec]:
    """(axis, level) -> the noise condition: ``base`` with that one axis set to the level."""
    return {(axis, level): replace(base, **{AXES[axis][0]: level})
            for axis, levels in axes.items() for level in levels}


def target_conditions(base: NoiseSpec, mismatch: Sequence[float],
                      thermal: Sequence[float]) -> dict[tuple[float, float], NoiseSpec]:
    """(mismatch, thermal) -> ``base`` (the target's quantisation) with both noises at once."""
    return {(float(m), float(t)): replace(base, mismatch=float(m), thermal=float(t))
            for m in mismatch for t in thermal}


def target_energy(m: "ModelUnderTest", target: str) -> dict:
    """The model's operations per sample and, where the target has a verified pJ per
    synaptic operation (``PROFILES``), its energy; otherwise the profile's note says why not."""
    prof = PROFILES.get(target)
    verified = prof is not None and prof.ac_pj is not None
    rep = energy(m.path, target if verified else "45nm-fp32", samples=len(m.x), dataset=m.dataset)
    tot = rep["total"]
    return {"profile": target if verified else None,
            "note": prof.source if prof is not None else f"no energy profile named {target!r}",
            "ac": tot["ac"], "mac": tot["mac"], "snn_pj": tot["snn_pj"] if verified else None,
            "spikes_per_sample": sum(n["spikes_per_sample"] for n in rep["neurons"])}


def simulate_conditions(models: Sequence[ModelUnderTest], conditions: Sequence[NoiseSpec], chips: int,
                        seed: int, progress: bool = True) -> dict[tuple[int, NoiseSpec], ChipResult]:
    """Every model under every distinct condition, ``chips`` chips each, as independent jobs
    (under torchrun each rank simulates its share). Keys: (model index, condition).

    A condition is simulated once per model however many axes share it (level 0 of
    every axis is the same noise-free condition).
    """
    jobs = list(dict.fromkeys((i, cond) for i in range(len(models)) for cond in conditions))

    def simulate_one(job: tuple[int, NoiseSpec]) -> ChipResult:
        m = models[job[0]]
        return simulate(m.net, m.x, m.y, job[1], chips, seed, temporal=m.temporal)

    results = dist.run_jobs(simulate_one, jobs, progress=progress, desc="robustness", unit="condition")
    return dict(zip(jobs, results))


def level_row(level: float, res: ChipResult) -> dict:
    """One level of a sweep in the report: every chip's accuracy and their statistics."""
    acc = res.accuracy
    return {"level": level, "mean": res.mean, "std": res.std, "min": min(acc), "max": max(acc), "chips": acc}


def combined_row(res: ChipResult) -> dict:
    """A combined condition's statistics over chips (``level_row`` without its level)."""
    row = level_row(0.0, res)
    del row["level"]
    return row


def robustness(checkpoints: Sequence[str], mismatch: Sequence[float] = (0, 0.05, 0.1, 0.2),
               thermal: Sequence[float] = (0, 0.05, 0.1, 0.2), spike_loss: Sequence[float] = (),
               dead: Sequence[float] = (), chips: int = 10, seed: int = 0,
               mismatch_params: Sequence[str] = MISMATCH_PARAMS, quant: str | QuantSpec | None = None,
               weight_bits: int | None = None, state_bits: int | None = None,
               dataset: str | None = None, samples: int | None = None, progress: bool = True,
               command: str | None = None, device: str | torch.device | None = "cpu",
               target: str | None = None) -> dict:
    """Sweep each noise axis for each checkpoint on ``device``; returns the report dict (every rank).

    The chips and the per-step noise are drawn on the CPU from ``seed`` whatever the
    device, so a seed names the same chips on a GPU as on the CPU.

    Per model and axis, per level: the accuracy of every chip, its mean, std, min
    and max; plus settings, provenance and timing. With ``target``: its quantisation in
    every condition, each (mismatch, thermal) pair combined, and the model's energy
    (module docstring). ``reports.hwsim_report.
    write_robustness_report`` writes it as report.json, report.md and PNGs.
    """
    if not checkpoints:
        raise ConfigError("give at least one checkpoint")
    if chips < 1:
        raise ConfigError(f"--chips must be >= 1, got {chips}")
    if target is not None:
        lookup(QUANT_PRESETS, target, "target")
        if quant not in (None, "none", target):
            raise ConfigError(f"--target {target} sets the quantisation; drop --quant {quant} "
                              "(or use --weight-bits/--state-bits to change the preset)")
        quant = target
    q = quant_spec(quant, weight_bits, state_bits)
    base = NoiseSpec(mismatch_params=tuple(mismatch_params), quant=q)
    axes = noise_levels(mismatch, thermal, spike_loss, dead)
    conditions = level_conditions(base, axes)
    combined = target_conditions(base, mismatch or [0.0], thermal or [0.0]) if target else {}
    t0 = time.perf_counter()
    models = load_models(checkpoints, dataset, samples, device)
    entries = [model_entry(m) for m in models]
    dist.init_from_env()
    results = simulate_conditions(models, [*conditions.values(), *combined.values()], chips, seed, progress)
    for i, entry in enumerate(entries):
        entry["sweeps"] = {axis: [level_row(level, results[(i, conditions[(axis, level)])]) for level in levels]
                           for axis, levels in axes.items()}
        if target:
            entry["target"] = {"name": target, "energy": target_energy(models[i], target), "combined": [
                {"mismatch": mm, "thermal": tt, **combined_row(results[(i, cond)])}
                for (mm, tt), cond in combined.items()]}
    wall = time.perf_counter() - t0
    n_chip_runs = chips * len(dist.shard_jobs(list(results)))  # chips simulated on this rank
    return {
        "kind": "snn2hw-robustness", "command": command_line(command), "versions": versions(),
        "settings": {"chips": chips, "seed": seed, "mismatch_params": list(mismatch_params), "target": target,
                     "quantisation": q.__dict__ if q else None, "levels": axes,
                     "thermal_unit": "std of the added input current per step, relative to V_th",
                     "mismatch_model": "psi' ~ N(psi, (xi |psi|)^2), once per chip; decays clipped to [0, 1]"},
        "models": entries, "wall_time_s": wall,
        "seconds_per_chip": wall / max(n_chip_runs, 1),
    }
