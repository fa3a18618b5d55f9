"""Data-parallel training over torchrun ranks: what the training loop does
differently on several processes. Every method is a no-op (or the identity) in
one process, so the trainer calls them unconditionally.

Semantics (docs/distributed.md):

* the global batch B of step i is the same on every rank (the order of epoch e
  comes from a generator seeded by (seed, e)); rank r trains on its contiguous
  part ``tensor_split(batch, world)[r]`` (sizes differ by at most one);
* each rank scales its loss by its share ``n_r / B`` and the gradients are
  summed over ranks, so every rank holds the gradient of the mean loss over the
  global batch, exactly as one process with batch B, then runs the same Adam
  step. A last batch smaller than the number of ranks is skipped;
* ``--sync-bn``: tdBN normalises with the statistics of the global batch (the
  same numbers as one process); without it each rank uses its own part, and the
  running statistics are averaged over ranks at the end of every epoch;
* during the batches each rank draws from its own torch RNG stream seeded by
  (seed, epoch, rank) (ASGL's masks differ per rank); outside them (init,
  method hooks) all ranks share the common stream, which is what a checkpoint saves.

On GPUs torchrun starts one process per GPU; each trains on ``cuda:LOCAL_RANK``
(``devices.resolve_device``) and the collectives above run on NCCL over the GPU
tensors (``from_env``); checkpoints and fingerprints use CPU copies.

Why not ``torch.nn.parallel.DistributedDataParallel``: it averages gradients
with equal weights (wrong for the uneven last batch), wants
``find_unused_parameters`` for method parameters that a step may not reach,
and wraps the model (``module.`` prefixes in the paths methods and exporters
walk). One flat all-reduce per step after backward is what it does minus the
overlap with backward, which matters little at these model sizes.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..core.layers import TDBatchNorm
from ..errors import Snn2hwError
from .. import distributed as dist


class OutOfSyncError(Snn2hwError):
    """Ranks hold different weights or method state (a method did not sync it)."""


def sync_batch_norm(x: Tensor, bn: TDBatchNorm) -> Tensor:
    """Training-mode batch norm of ``x`` (N, C, ...) with the mean and biased
    variance over all ranks' batches: ``(x - mean) / sqrt(var + eps)``.

    Two all-reduces (sum and count, then the centred sum of squares) keep the
    variance as accurate as one process's. Running statistics are updated as
    ``F.batch_norm`` does (momentum, unbiased variance).
    """
    dims = [0] + list(range(2, x.dim()))
    n_local = x.numel() // max(x.shape[1], 1)
    count = torch.full((1,), float(n_local), dtype=x.dtype, device=x.device)
    sums = dist.sum_over_ranks(torch.cat([x.sum(dims), count]))
    n = float(sums[-1].detach())
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean = sums[:-1] / n
    centred = x - mean.view(view)
    var = dist.sum_over_ranks((centred * centred).sum(dims)) / n
    with torch.no_grad():
        m = bn.momentum
        bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        bn.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
    return centred / torch.sqrt(var + bn.eps).view(view)


def _device(model: nn.Module) -> torch.device:
    """Where collectives of ``model``'s run go: its parameters' device (NCCL takes GPU tensors only)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, (TDBatchNorm, nn.modules.batchnorm._BatchNorm))]


def sync_gradients(params: list[nn.Parameter]) -> None:
    """Replace each gradient by its sum over ranks, in one flat all-reduce.

    A parameter with no gradient on any rank keeps ``grad = None`` (Adam skips
    it, as in one process); one with a gradient on some rank gets the sum.
    """
    if not dist.is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    dev = params[0].device
    flags = torch.tensor([float(p.grad is not None) for p in params], device=dev)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().to(dev)
                      for p in params] + [flags])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for p, has in zip(params, flat[-len(params):].tolist()):
        g = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        p.grad = g.to(p.dtype).clone() if has else None


def broadcast_module_(model: nn.Module, src: int = 0) -> None:
    """Every parameter and buffer as rank ``src`` has it (init, init_from, resume)."""
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast_tensor_(t, src)


def fingerprint(model: nn.Module, method_state: dict) -> dict[str, str]:
    """name -> digest of the bytes of every parameter, buffer and leaf of the
    method state: equal on all ranks exactly when they are bit-identical."""
    import hashlib

    out: dict[str, str] = {}

    def add(name: str, v: object) -> None:
        if isinstance(v, Tensor):
            data = v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            out[name] = hashlib.blake2b(data, digest_size=16).hexdigest()
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[name] = repr(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                add(f"{name}.{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                add(f"{name}.{i}", x)

    for k, v in model.state_dict().items():
        add(f"model.{k}", v)
    add("method", method_state)
    return out


def check_in_sync(model: nn.Module, method_state: dict, where: str) -> None:
    """Raise ``OutOfSyncError`` naming what differs if ranks disagree (one small all-gather)."""
    if not dist.is_distributed():
        return
    prints = dist.all_gather_object(fingerprint(model, method_state))
    ref = prints[0]
    bad = sorted({k for p in prints[1:] for k in set(ref) | set(p) if p.get(k) != ref.get(k)})
    if bad:
        raise OutOfSyncError(
            f"{where}: ranks differ in {bad[:5]}{' ...' if len(bad) > 5 else ''}; the training "
            "method must all-reduce or broadcast this state (snn2hw.distributed)")


@dataclass
class DataParallel:
    """The trainer's view of the ranks; created by ``from_env`` once per run."""

    seed: int = 0
    sync_bn: bool = False
    owns_group: bool = False
    _rng: ExitStack = field(default_factory=ExitStack, repr=False)

    @classmethod
    def from_env(cls, seed: int, sync_bn: bool = False,
                 device: torch.device | None = None) -> "DataParallel":
        """Join torchrun's process group if launched by it (and not ``local_only``), with
        the backend of the run's ``device``: gloo for a CPU run; for a CUDA run (one process
        per GPU, ``cuda:LOCAL_RANK``) ``distributed.default_backend``, NCCL for the GPU
        tensors (gradients, sync-BN, method statistics) and gloo for the CPU ones.
        ``SNN2HW_DIST_BACKEND`` overrides either."""
        backend = None if device is None or device.type == "cuda" or os.environ.get("SNN2HW_DIST_BACKEND") \
            else "gloo"
        return cls(seed, sync_bn, owns_group=dist.init_from_env(backend))

    @property
    def world(self) -> int:
        return dist.world_size()

    @property
    def rank(self) -> int:
        return dist.rank()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module) -> None:
        """Start every rank from rank 0's weights (init, ``init_from`` or resume)."""
        broadcast_module_(model)

    def shard(self, batch: Tensor) -> tuple[Tensor | None, float]:
        """(this rank's indices, its share n_r / B) of a global batch; (None, 0)
        on every rank when the batch has fewer samples than ranks (skipped)."""
        if self.world == 1:
            return batch, 1.0
        if len(batch) < self.world:
            return None, 0.0
        part = torch.tensor_split(batch, self.world)[self.rank]
        return part, len(part) / len(batch)

    def begin_batches(self, model: nn.Module, epoch: int) -> None:
        """Per-rank RNG stream (seed, epoch, rank) and, with ``sync_bn``, global
        BN statistics: both only while the batches run, so method hooks see the
        common stream and may run forward passes on one rank alone."""
        if self.world == 1:
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        self._rng.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed((self.seed * 1_000_003 + epoch) * 1009 + self.rank)
        if self.sync_bn:
            for m in _bn_layers(model):
                if isinstance(m, TDBatchNorm):
                    m.norm_strategy = sync_batch_norm

    def sync_gradients(self, model: nn.Module) -> None:
        """After backward: every rank gets the gradient of the global-batch loss."""
        sync_gradients(list(model.parameters()))

    def end_batches(self, model: nn.Module, loss_sum: float, correct: int,
                    seen: int) -> tuple[float, int, int]:
        """Back to the common RNG stream; BN running statistics averaged over
        ranks; the epoch's (loss sum, correct, samples) summed over ranks."""
        if self.world == 1:
            return loss_sum, correct, seen
        self._rng.close()
        for m in _bn_layers(model):
            if isinstance(m, TDBatchNorm):
                m.norm_strategy = None
            if self.sync_bn:  # already the same on every rank
                continue
            for name in ("running_mean", "running_var"):
                buf = getattr(m, name, None)
                if buf is not None:
                    buf.copy_(dist.all_reduce_mean(buf))
        totals = dist.all_reduce_sum(torch.tensor([loss_sum, float(correct), float(seen)],
                                                  dtype=torch.float64, device=_device(model)))
        return float(totals[0]), int(round(float(totals[1]))), int(round(float(totals[2])))

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, temporal: bool,
                 batch_size: int) -> tuple[float, float]:
        """(accuracy, mean loss) over the whole set: each rank takes a contiguous
        part, the (correct, loss sum, count) are summed."""
        from ..runs.model import evaluate_model

        if self.world == 1:
            return evaluate_model(model, x, y, temporal, batch_size)
        xs, ys = torch.tensor_split(x, self.world)[self.rank], torch.tensor_split(y, self.world)[self.rank]
        acc, loss = evaluate_model(model, xs, ys, temporal, batch_size)
        t = dist.all_reduce_sum(torch.tensor([acc * len(ys), loss * len(ys), float(len(ys))],
                                             dtype=torch.float64, device=_device(model)))
        n = max(float(t[2]), 1.0)
        return round(float(t[0])) / n, float(t[1]) / n

    def check(self, model: nn.Module, method_state: dict, epoch: int) -> None:
        """After an epoch: fail loudly if a method let the ranks drift apart."""
        check_in_sync(model, method_state, f"after epoch {epoch + 1}")

    def release_rng(self) -> None:
        """Back to the common RNG stream (also when training stops with an error)."""
        self._rng.close()

    def close(self) -> None:
        """Wait for rank 0's files, then leave the group if this run created it."""
        self.release_rng()
        dist.barrier()
        if self.owns_group:
            torch.distributed.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m snn2hw ARGV`` in ``nproc`` processes on this machine via
    torchrun (``torch.distributed.run --standalone``); returns its exit code."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={int(nproc)}", "-m", "snn2hw", *argv]
    return subprocess.call(cmd)
