"""How well surrogate gradients agree with finite-difference gradients (Dspike Fig. 2b).

For a network state (a fresh initialisation and a trained checkpoint) and a few
probe batches, the FDG of the loss w.r.t. the first layer's weights,
``(L(w + eps e_i) - L(w - eps e_i)) / (2 eps)``, is compared by cosine
similarity with the backprop gradient under the Dspike surrogate of temperature
b (and under the run's own surrogate). The FDG and the surrogate gradient are
those of the ``dspike`` training method (``snn2hw.methods.dspike``), in the
same train-mode forward with BN running statistics untouched.

The spiking loss is piecewise constant in w: at eps = 0.001 almost no spike
flips, so the FDG is mostly 0 with rare large jumps; at eps = 0.1 it averages
over many flips and points along a smoothed gradient, which a surrogate
approximates far better (the paper's observation).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..core.surrogate import Dspike
from ..models.network import SpikingNetwork, build_model
from ..methods._util import frozen_buffers, install_shape, named_lifs
from ..runs.files import atomic_write_text
from ..methods.dspike import (coordinate_subset, cosine, finite_difference_grad,
                                    first_weight_name, surrogate_grad)
from .markdown import command_block, md_table
from .plots import pyplot, save_figure


@dataclass
class AgreementRow:
    state: str                 # "init" or "trained"
    gradient: str              # "dspike b=1", or the run's own surrogate
    eps: float
    cosines: list[float]       # one per probe batch
    fdg_zero_fraction: float   # share of FDG coordinates exactly 0, averaged over batches

    @property
    def mean(self) -> float:
        return statistics.fmean(self.cosines)

    @property
    def std(self) -> float:
        return statistics.stdev(self.cosines) if len(self.cosines) > 1 else 0.0


def _surrogate_variants(model: SpikingNetwork, temperatures: Sequence[float]):
    """(label, setter) pairs that put every LIF layer on one backward surrogate."""
    lifs = [m for _, m in named_lifs(model)]
    own = [(m.surrogate, float(m.shape_param)) for m in lifs]
    own_label = f"own: {own[0][0].name} {own[0][1]:.3g}" + (" (per layer)" if len({p for _, p in own}) > 1 else "")

    def restore() -> None:
        for m, (shape, p) in zip(lifs, own):
            install_shape(m, shape, p)

    variants = [(own_label, restore)] if all(m.spike_strategy is None for m in lifs) else []
    for b in temperatures:
        def use(b: float = b) -> None:
            for m in lifs:
                install_shape(m, Dspike(b), b)
        variants.append((f"dspike b={b:g}", use))
    return variants, restore


def measure(model: SpikingNetwork, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], loss_fn,
            eps_values: Sequence[float], temperatures: Sequence[float], state: str,
            max_coords: int = 576) -> list[AgreementRow]:
    """Cosine(FDG(eps), surrogate gradient) per eps and surrogate over ``batches``."""
    weight = first_weight_name(model)
    coords = coordinate_subset(dict(model.named_parameters())[weight].numel(), max_coords)
    variants, restore = _surrogate_variants(model, temperatures)
    rows: list[AgreementRow] = []
    model.train()
    with frozen_buffers(model):
        fdgs = {eps: [finite_difference_grad(model, weight, x, y, loss_fn, coords, eps) for x, y in batches]
                for eps in eps_values}
        for label, use in variants:
            use()
            sgs = [surrogate_grad(model, weight, x, y, loss_fn, coords) for x, y in batches]
            for eps in eps_values:
                rows.append(AgreementRow(state, label, eps, [cosine(g, f) for g, f in zip(sgs, fdgs[eps])],
                                         statistics.fmean(float((f == 0).double().mean()) for f in fdgs[eps])))
        restore()
    model.eval()
    return rows


def fdg_agreement(checkpoint: str | Path, eps_values: Sequence[float] = (0.1, 0.001),
                  temperatures: Sequence[float] = (0.5, 1.0, 2.0, 4.0), batches: int = 4,
                  batch_size: int = 64, max_coords: int = 576) -> list[AgreementRow]:
    """Rows for the checkpoint's untrained initialisation (its seed) and for the checkpoint,
    on ``batches`` fixed training batches of ``batch_size``."""
    from ..data.datasets import load_dataset
    from ..methods import make_method
    from ..data.datasets import to_time_major
    from ..runs.model import load_model
    from ..train.trainer import make_loss, seed_everything

    trained, ckpt = load_model(checkpoint)
    run = ckpt.get("run_config", {})
    data = load_dataset(run.get("dataset", "digits"), run.get("seed", 0))
    gen = torch.Generator().manual_seed(1234)
    idx = torch.randperm(len(data.x_train), generator=gen)[: batches * batch_size].split(batch_size)
    probe = [(to_time_major(data.x_train[i], data.temporal), data.y_train[i]) for i in idx]
    loss_fn = make_loss(run.get("loss", "ce"))
    seed_everything(int(run.get("seed", 0)))
    fresh = build_model(trained.config)  # the run's initialisation: same seed, same method set-up
    if run.get("method"):
        make_method(run["method"], run.get("method_options", {})).setup(fresh)
    return (measure(fresh, probe, loss_fn, eps_values, temperatures, "init", max_coords)
            + measure(trained, probe, loss_fn, eps_values, temperatures, "trained", max_coords))


def render_fdg_agreement(rows: Sequence[AgreementRow], out: Path, title: str = "",
                         command: str | None = None) -> list[Path]:
    """``out/fdg_cosine.md`` (a table) and ``out/fdg_cosine.png`` (bars per eps)."""
    out.mkdir(parents=True, exist_ok=True)
    eps_values = list(dict.fromkeys(r.eps for r in rows))
    states = list(dict.fromkeys(r.state for r in rows))
    labels = list(dict.fromkeys(r.gradient for r in rows))
    plt = pyplot()
    fig, axs = plt.subplots(1, len(states), figsize=(5.2 * len(states), 3.6), squeeze=False, sharey=True)
    width = 0.8 / len(eps_values)
    for ax, state in zip(axs[0], states):
        for j, eps in enumerate(eps_values):
            sel = [next(r for r in rows if r.state == state and r.gradient == g and r.eps == eps) for g in labels]
            ax.bar([i + j * width for i in range(len(labels))], [r.mean for r in sel], width,
                   yerr=[r.std for r in sel], capsize=2, label=f"eps = {eps:g}")
        ax.set_xticks([i + width * (len(eps_values) - 1) / 2 for i in range(len(labels))], labels,
                      rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=f"{state} network", ylim=(-0.2, 1))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    axs[0][0].set_ylabel("cosine(FDG, surrogate gradient)")
    save_figure(fig, out / "fdg_cosine.png")

    lines = ["# Finite-difference vs surrogate gradients (Dspike Fig. 2b)", ""]
    if title:
        lines += [title, ""]
    lines += command_block(command)
    lines += ["Cosine similarity between the finite-difference gradient (FDG) of the loss w.r.t. the "
              "first layer's weights and the backprop gradient with each surrogate; mean and "
              "standard deviation over probe batches. `FDG zeros` is the share of FDG coordinates "
              "that are exactly 0 (no spike flipped).", "",
              md_table(["network", "surrogate gradient", "eps", "cosine mean", "std", "FDG zeros"],
                       [[r.state, r.gradient, f"{r.eps:g}", r.mean, r.std, r.fdg_zero_fraction]
                        for r in rows]), "",
              "![cosine similarity per surrogate and eps](fdg_cosine.png)", ""]
    atomic_write_text(out / "fdg_cosine.md", "\n".join(lines))
    return [out / "fdg_cosine.md", out / "fdg_cosine.png"]
