"""The training loop: data, model, method hooks, checkpoints, history, resume.

Determinism: the data order of epoch e comes from its own generator seeded by
(seed, e), and the global RNG states are saved at the end of every epoch, so a
run resumed from ``last.pt`` ends with the same weights as one never stopped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.augment import Augment, check_image_shape
from ..data.datasets import DataSplit, load_dataset, to_time_major, with_validation
from ..data.loader import EpochBatches, iterate, plan_epoch, to_device
from ..devices import autocast, check_precision, describe, grad_scaler, resolve_device, use_device
from ..errors import CheckpointError, TrainingDivergedError
from ..models.config import ModelConfig
from ..models.network import SpikingNetwork, build_model
from ..runs.checkpoint import load_checkpoint, save_checkpoint
from ..runs.files import atomic_copy, atomic_write_text
from ..runs.history import write_history
from .rng import rng_state, set_rng_state
from .config import RunConfig
from .ddp import DataParallel
from ..methods import MethodContext, TrainingMethod, make_method
from .optim import Adam, SGD, CosineSchedule, make_optimizer
from .qat import QATHandle, attach_qat
from ..hwsim.training_noise import TrainingNoise, batch_key, training_noise


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loss(kind: str, tet_lambda: float = 0.05, tet_phi: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Loss on per-step readout currents ``o`` (T, B, K).

    ce: cross-entropy of the mean over t. tet (Deng et al. 2022, methods.md):
    ``1/T sum_t CE(o[t], y) + lambda * 1/T sum_t MSE(o[t], phi)``, MSE the mean
    over (B, K) of ``(o[t] - phi)^2``.

    Each also has ``per_copy(seq (T, B, P, K), y) -> (P,)``: the loss of each of P networks'
    outputs stacked sample-major (the FDG's copies), in a few calls instead of P (the same
    values up to the order of the sums over samples).
    """
    if kind == "tet":
        def tet(seq: Tensor, y: Tensor) -> Tensor:
            ce = F.cross_entropy(seq.flatten(0, 1), y.repeat(seq.shape[0]))
            return ce + tet_lambda * ((seq - tet_phi) ** 2).mean() if tet_lambda else ce

        def tet_per_copy(seq: Tensor, y: Tensor) -> Tensor:
            T, B, P, K = seq.shape
            ce = F.cross_entropy(seq.reshape(-1, K), y.repeat_interleave(P).repeat(T), reduction="none")
            ce = _per_copy_mean(ce.view(T * B, P))
            if not tet_lambda:
                return ce
            return ce + tet_lambda * _per_copy_mean(((seq - tet_phi) ** 2).reshape(T * B, P, K).transpose(1, 2).flatten(0, 1))
        tet.per_copy = tet_per_copy  # type: ignore[attr-defined]
        return tet

    def ce(seq: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(seq.mean(0), y)

    def ce_per_copy(seq: Tensor, y: Tensor) -> Tensor:
        B, P, K = seq.shape[1:]
        return _per_copy_mean(F.cross_entropy(seq.mean(0).view(-1, K), y.repeat_interleave(P), reduction="none")
                              .view(B, P))
    ce.per_copy = ce_per_copy  # type: ignore[attr-defined]
    return ce


def _per_copy_mean(v: Tensor) -> Tensor:
    """(N, P) -> (P,): each column's mean, summed along a contiguous row (the same sums
    whatever P is, so a copy's loss does not depend on how many share its call)."""
    return v.t().contiguous().mean(1)


SHAPE_PARAM_MIN = 1e-3
BAR_SYNC_STEPS = 20  # the progress bar's loss and accuracy are refreshed every this many steps


def param_groups(model: SpikingNetwork, shape_params: list[Tensor], shape_lr: float | None) -> list[dict]:
    """Weights at the optimiser's lr with its weight decay; learnable surrogate parameters
    (PSG gamma, ASGL alpha) in their own group at ``shape_lr`` (None: the weights' lr)
    and WITHOUT weight decay: decay would pull a width or slope towards 0, a degenerate
    shape, not a smaller model.

    A shape parameter moves about one learning rate per Adam step, so at the
    weights' rate it cannot travel far from a bad start (e.g. a width of 20).
    """
    if not shape_params:
        return [{"params": list(model.parameters())}]
    ids = {id(p) for p in shape_params}
    rest = [p for p in model.parameters() if id(p) not in ids]
    shape_group: dict = {"params": shape_params, "weight_decay": 0.0}
    if shape_lr is not None:
        shape_group["lr"] = float(shape_lr)
    return [{"params": rest}, shape_group]


def model_config_for(config: RunConfig, data: DataSplit) -> ModelConfig:
    """The model config with the data's input shape and classes; for event data (B, T, ...)
    also its T, which every reader of the run (export, hwsim) unrolls."""
    d = config.model.to_dict()
    d.update(input_shape=list(data.input_shape), num_classes=data.num_classes)
    if data.temporal:
        d["timesteps"] = int(data.x_train.shape[1])
    return ModelConfig.from_dict(d)


@dataclass
class RunResult:
    model: SpikingNetwork
    config: RunConfig
    history: list[dict]
    summary: dict
    out_dir: Path | None


def _load_init(model: SpikingNetwork, path: str, method: TrainingMethod | None = None,
               method_name: str | None = None) -> None:
    """Initialise weights from a checkpoint (TIT: T may differ; shapes must match). When
    the checkpoint was trained by the same method, its method state carries over too
    (Dspike's temperature b, CPNG's k record): TIT continues, it does not restart."""
    ckpt = load_checkpoint(path)
    if method is not None and ckpt.get("run_config", {}).get("method") == method_name:
        method.load_state_dict(ckpt.get("method_state", {}))
    own = model.state_dict()
    mismatched = [k for k, v in ckpt["model_state"].items() if k in own and own[k].shape != v.shape]
    if mismatched or set(own) - set(ckpt["model_state"]):
        raise CheckpointError(f"{path}: architecture differs from this run's model "
                              f"(mismatched: {mismatched[:3]}, missing: {sorted(set(own) - set(ckpt['model_state']))[:3]})")
    model.load_state_dict(ckpt["model_state"], strict=False)


def _installed_shape(model: SpikingNetwork, configured: str | None) -> str | None:
    """The surrogate shape the network's spiking layers train with after the method's
    setup: what the run records (a method may install its own); ``configured`` where
    the layers differ (PSG on a conv net with an FC layer)."""
    names = {m.surrogate.name for m in model.lif_layers()}
    return names.pop() if len(names) == 1 else configured


@dataclass
class _Run:
    """What one training run carries from epoch to epoch (and writes to its checkpoints)."""

    config: RunConfig
    data: DataSplit
    out: Path | None
    model: SpikingNetwork
    method: TrainingMethod
    optimizer: Adam | SGD
    scheduler: CosineSchedule
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    par: DataParallel
    qat: QATHandle
    shape_params: list[Tensor]
    probe_x: Tensor               # one fixed probe batch for the methods that measure the network
    probe_y: Tensor
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_val: float = -1.0        # the validation accuracy best.pt was chosen on
    best_epoch: int = 0
    elapsed: float = 0.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0              # data-loader processes (0: batches made in this process)
    scaler: "torch.amp.GradScaler | None" = None  # fp16 only: the loss scale
    train_noise: TrainingNoise | None = None  # a fresh simulated chip per training batch
    shape_clamps: int | Tensor = 0  # this epoch's (parameter, step) clamps at SHAPE_PARAM_MIN

    @property
    def steps(self) -> int:
        """Batches per epoch (of the global batch)."""
        return (len(self.data.x_train) + self.config.batch_size - 1) // self.config.batch_size

    def payload(self, epoch: int) -> dict:
        """The checkpoint after ``epoch``: everything a resume needs to continue bit-identically."""
        config = self.config
        return {
            "run_config": config.to_dict(), "model_config": config.model.to_dict(),
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(), "method_state": self.method.state_dict(),
            "rng_state": rng_state(), "history": self.history, "epoch": epoch,
            "best_val_accuracy": self.best_val, "best_epoch": self.best_epoch,
            "wall_time_s": self.elapsed,
            "scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
            # what readers of the run need of its data without loading it (export's input range)
            "data": {"temporal": self.data.temporal, "value_range": self.data.value_range},
        }


def _run_config(config: RunConfig | None, out: Path | None, resume: bool,
                epochs: int | None) -> tuple[RunConfig, dict | None]:
    """The config to train with and, when resuming, the checkpoint it comes from."""
    if resume:
        if out is None:
            raise CheckpointError("resume needs the run directory")
        ckpt = load_checkpoint(out / "last.pt")
        config = RunConfig.from_dict(ckpt["run_config"])
        if epochs is not None:
            config.epochs = max(int(epochs), config.epochs)
        return config, ckpt
    if config is None:
        raise ValueError("train needs a config unless resuming")
    return config, None


def _start_run(config: RunConfig, ckpt: dict | None, out: Path | None, data: DataSplit,
               device: torch.device = torch.device("cpu"), workers: int = 0) -> _Run:
    """Build model, method, optimiser and probe batch (in this order: the RNG draws are
    part of the run's numbers) on ``device``; with ``ckpt``, restore the interrupted run's state."""
    seed_everything(config.seed)
    config.model = model_config_for(config, data)
    model = build_model(config.model).to(device)  # initialised by the CPU's RNG: the same weights anywhere
    method = make_method(config.method, config.method_options)
    method.setup(model)
    config.model.surrogate = _installed_shape(model, config.model.surrogate)
    if config.init_from and ckpt is None:
        _load_init(model, config.init_from, method, config.method)
    # the target's integer grid (STE), input quantised on the data's range; no-op if None
    qat = attach_qat(model, config.qat, data.value_range if config.qat else None)
    shape_params = [p for n, p in model.named_parameters() if n.endswith("shape_param")]
    optimizer = make_optimizer(config.optimizer, param_groups(model, shape_params, config.shape_lr),
                               config.lr, config.weight_decay, config.momentum)
    scheduler = CosineSchedule(optimizer, config.epochs)
    loss_fn = make_loss(config.loss, config.tet_lambda, config.tet_phi)
    par = DataParallel.from_env(config.seed, config.sync_bn, device)

    probe_idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(config.seed))
    probe_idx = probe_idx[: min(config.batch_size, len(probe_idx))]
    run = _Run(config, data, out, model, method, optimizer, scheduler, loss_fn, par, qat, shape_params,
               to_time_major(data.x_train[probe_idx], data.temporal).to(device), data.y_train[probe_idx].to(device),
               device=device, workers=workers, scaler=grad_scaler(device, config.precision))
    if ckpt is not None:
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])  # keeps this run's total epochs
        method.load_state_dict(ckpt.get("method_state", {}))
        run.history = list(ckpt.get("history", []))
        run.start_epoch = int(ckpt["epoch"]) + 1
        run.best_val = float(ckpt.get("best_val_accuracy", -1.0))
        run.best_epoch = int(ckpt.get("best_epoch", 0))
        run.elapsed = float(ckpt.get("wall_time_s", 0.0))
        if run.scaler is not None and ckpt.get("scaler_state"):
            run.scaler.load_state_dict(ckpt["scaler_state"])
        set_rng_state(ckpt["rng_state"])
    run.train_noise = training_noise(model, config.train_noise)
    par.prepare(model)
    return run


def _run_batches(run: _Run, epoch: int, bar) -> tuple[float, int, int]:
    """One pass over the training data in the epoch's order: (loss sum, correct, seen)
    over all ranks."""
    config, data, model, par, dev = run.config, run.data, run.model, run.par, run.device
    plan = plan_epoch(len(data.x_train), config.batch_size, config.seed, epoch, par.shard)
    batches = EpochBatches(data.x_train, data.y_train, plan, Augment.parse(config.augment), config.seed, epoch)
    # sums kept on the device, in float64 as Python floats were: one host sync per epoch
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct, seen = torch.zeros((), dtype=torch.int64, device=dev), 0
    par.begin_batches(model, epoch)
    for planned, batch in zip(plan, iterate(batches, run.workers, pin_memory=dev.type == "cuda")):
        xb, yb, share = to_device(batch, dev)
        xb = to_time_major(xb, data.temporal)
        # a fresh simulated chip per batch (off in eval mode); synapses in bf16/fp16, the LIF in fp32
        with run.train_noise.batch(batch_key(config.seed, epoch, planned.step)), autocast(dev, config.precision):
            seq = model.forward_sequence(xb)
        seq = seq.float()
        loss = run.loss_fn(seq, yb)
        extra = run.method.extra_loss(model)
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss.detach()):
            raise TrainingDivergedError(
                f"the loss became {float(loss.detach())} in epoch {epoch + 1}, batch {planned.step + 1}: training "
                f"stopped; the last good checkpoint (epoch {epoch}) is kept: lower --lr "
                f"(or --shape-lr) and train again")
        run.optimizer.zero_grad(set_to_none=True)
        scaled = loss * share  # ranks' shares sum to 1: the global-batch mean
        (scaled if run.scaler is None else run.scaler.scale(scaled)).backward()
        par.sync_gradients(model)
        if run.scaler is None:
            run.optimizer.step()
        else:  # unscales, skips the step if a gradient overflowed (the same on every rank)
            run.scaler.step(run.optimizer)
            run.scaler.update()
        if run.shape_params:  # a width, slope or temperature must stay positive
            with torch.no_grad():
                low = torch.stack([p.detach().min() for p in run.shape_params]) < SHAPE_PARAM_MIN
                run.shape_clamps = run.shape_clamps + low.sum()  # on the device: read once per epoch
                torch._foreach_clamp_min_(run.shape_params, SHAPE_PARAM_MIN)
        seen += len(yb)
        loss_sum += loss.detach().double() * len(yb)
        correct += (seq.detach().mean(0).argmax(1) == yb).sum()
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            if bar.n % BAR_SYNC_STEPS == 0:  # reading the sums waits for the device
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                refresh=False)
            bar.update()
    return par.end_batches(model, float(loss_sum), int(correct), seen)


def _train_epoch(run: _Run, epoch: int, bar) -> dict:
    """Method hooks around one pass over the data, then the evaluations: the epoch's
    history row. Validation chooses best.pt; the test split is only reported."""
    t0 = time.perf_counter()
    model, method, data = run.model, run.method, run.data
    ctx = MethodContext(model, epoch, run.config.epochs, run.probe_x, run.probe_y, run.loss_fn)
    row: dict = {"epoch": epoch + 1}
    row.update(method.on_epoch_start(ctx))
    model.train()
    loss_sum, correct, seen = _run_batches(run, epoch, bar)
    row["lr"] = run.optimizer.param_groups[0]["lr"]
    if run.shape_params:  # how often a shape parameter was held at its floor (visible, not silent)
        row["shape_param_clamped"] = float(run.shape_clamps)
        run.shape_clamps = 0
    run.scheduler.step()
    row.update(method.on_epoch_end(ctx))
    run.par.check(model, method.state_dict(), epoch)
    row.update(train_loss=loss_sum / max(seen, 1), train_accuracy=correct / max(seen, 1))
    if data.x_val is not None:
        val_acc, val_loss = run.par.evaluate(model, data.x_val, data.y_val, data.temporal,
                                             run.config.eval_batch_size)
        row.update(val_loss=val_loss, val_accuracy=val_acc)
    test_acc, test_loss = run.par.evaluate(model, data.x_test, data.y_test, data.temporal,
                                           run.config.eval_batch_size)
    run.elapsed += time.perf_counter() - t0
    row.update(test_loss=test_loss, test_accuracy=test_acc, wall_time_s=run.elapsed)
    return row


def _end_epoch(run: _Run, epoch: int, row: dict, bar) -> None:
    """Record the epoch: history, ``last.pt``, and ``best.pt`` when the validation accuracy
    improved (never the test accuracy: that would select on the reported number). Without
    a validation split best.pt follows the last epoch."""
    run.history.append(row)
    val = row.get("val_accuracy")
    improved = val is None or val > run.best_val
    if improved:
        run.best_val = -1.0 if val is None else val
        run.best_epoch = epoch + 1
    out = run.out
    if out is not None and run.par.is_main:
        save_checkpoint(out / "last.pt", run.payload(epoch))
        if improved:
            atomic_copy(out / "last.pt", out / "best.pt")  # the same state, serialised once
        write_history(out / "history.csv", run.history)
    if bar is not None:
        val = f" val {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
        bar.write(f"epoch {epoch + 1}: loss {row['train_loss']:.4f} train {row['train_accuracy']:.4f}"
                  f"{val} test {row['test_accuracy']:.4f}")


def _summary(run: _Run) -> dict:
    """summary.json: the run's outcome in a few numbers. ``best_epoch`` (1-based) is chosen
    on the validation split; ``test_accuracy_at_best`` is best.pt's test accuracy,
    ``final_test_accuracy`` (also ``test_accuracy``) the last epoch's."""
    config, history = run.config, run.history
    final = history[-1] if history else {}
    at_best = history[run.best_epoch - 1] if history and run.best_epoch else {}
    return {
        "test_accuracy": final.get("test_accuracy"),
        "final_test_accuracy": final.get("test_accuracy"),
        "final_val_accuracy": final.get("val_accuracy"),
        "best_epoch": run.best_epoch if history else None,
        "selected_on": "validation" if "val_accuracy" in final else "last epoch (no validation split)",
        "val_accuracy_at_best": at_best.get("val_accuracy"),
        "test_accuracy_at_best": at_best.get("test_accuracy"),
        "val_fraction": config.val_fraction,
        "threads": torch.get_num_threads(),
        "device": describe(run.device),
        "precision": config.precision,
        "workers": run.workers,
        "epochs": config.epochs,
        "wall_time_s": run.elapsed,
        "timesteps": config.model.timesteps,
        "method": config.method,
        "model": config.model.arch,
        "dataset": config.dataset,
        "seed": config.seed,
        "parameters": sum(p.numel() for p in run.model.parameters()),
    }


def train(config: RunConfig | None, out_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, data: DataSplit | None = None,
          epochs: int | None = None, device: str | torch.device | None = None,
          workers: int = 0) -> RunResult:
    """Train a model as ``config`` says; checkpoints and history go to ``out_dir``.

    ``device`` (``devices.resolve_device``: None/auto, cpu, cuda, cuda:N) holds the
    model, the batches and the method state; checkpoints are written from CPU copies,
    so they load anywhere. ``workers`` > 0 makes the batches in that many loader
    processes (same batches as 0, data/loader.py).

    With ``resume=True`` the run continues from ``out_dir/last.pt`` with the
    config saved there (``config`` is ignored); ``epochs`` may raise its total.
    Launched by torchrun, the ranks share each global batch (``ddp.DataParallel``,
    docs/distributed.md) and rank 0 alone writes ``out_dir``.
    """
    out = Path(out_dir) if out_dir is not None else None
    dev = resolve_device(device)
    config, ckpt = _run_config(config, out, resume, epochs)
    check_precision(config.precision, dev)
    data = with_validation(data if data is not None else load_dataset(config.dataset, config.seed, config.val_fraction),
                           config.val_fraction)
    check_image_shape(Augment.parse(config.augment), tuple(data.x_train.shape[1:]), data.temporal)
    use_device(dev, config.precision)
    run = _start_run(config, ckpt, out, data, dev, workers)
    bar = None
    if progress and run.par.is_main:
        from tqdm import tqdm

        bar = tqdm(total=(config.epochs - run.start_epoch) * run.steps, unit="batch", dynamic_ncols=True)
    try:
        for epoch in range(run.start_epoch, config.epochs):
            _end_epoch(run, epoch, _train_epoch(run, epoch, bar), bar)
    finally:
        if bar is not None:
            bar.close()
        run.par.release_rng()
    run.qat.detach()  # the returned model and the checkpoints hold the latent float weights

    summary = _summary(run)
    if out is not None and run.par.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    run.par.close()
    return RunResult(run.model, config, run.history, summary, out)
