"""The batches of one training epoch: its order, this rank's part, augmentation, and
(optionally) worker processes and pinned memory.

One definition serves both paths. ``EpochBatches[i]`` is the i-th batch this
process trains on; iterating it in the training process is the in-memory path
(the tiny datasets: no copies, no start-up), and ``torch.utils.data.DataLoader``
over the same object with ``workers`` processes and pinned memory is the path for
larger sets (CIFAR-10 on a GPU): augmentation and the host-side copy of batch
i + 1 overlap the GPU's step i. Both give the same batches, because everything
random is a function of (seed, epoch, step) (``augment.step_generator``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from .augment import Augment, apply, draw, step_generator

Shard = Callable[[Tensor], "tuple[Tensor | None, float]"]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The sample order of ``epoch``: a permutation from a generator seeded by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass(frozen=True)
class PlannedBatch:
    """One step of the epoch on this process: the global batch's size, the positions of
    this process's samples in it, their indices into the training set, their share n_r / B."""

    step: int
    size: int
    positions: Tensor
    indices: Tensor
    share: float


def plan_epoch(n: int, batch_size: int, seed: int, epoch: int,
               shard: Shard | None = None) -> list[PlannedBatch]:
    """The epoch's global batches ``order[i B:(i + 1) B]``, each cut to this process's part
    by ``shard`` (positions -> (positions, share), ``ddp.DataParallel.shard``; None: the
    whole batch). A batch that ``shard`` skips (None) is left out."""
    order = epoch_order(n, seed, epoch)
    plan = []
    for step in range((n + batch_size - 1) // batch_size):
        batch = order[step * batch_size:(step + 1) * batch_size]
        positions, share = (torch.arange(len(batch)), 1.0) if shard is None else shard(torch.arange(len(batch)))
        if positions is not None:
            plan.append(PlannedBatch(step, len(batch), positions, batch[positions], share))
    return plan


class EpochBatches(torch.utils.data.Dataset):
    """Item i: ``(x, y, share)`` of the i-th planned batch, augmented if asked.

    The augmentation is drawn for the whole global batch and this process's samples
    take their rows of it, so 1 or N processes see the same augmented images.
    """

    def __init__(self, x: Tensor, y: Tensor, plan: list[PlannedBatch], augment: Augment | None = None,
                 seed: int = 0, epoch: int = 0) -> None:
        self.x, self.y, self.plan = x, y, plan
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, float]:
        b = self.plan[i]
        x = self.x[b.indices]
        if self.augment is not None:
            h, w = x.shape[-2:]
            choice = draw(self.augment, b.size, h, w, step_generator(self.seed, self.epoch, b.step))
            x = apply(self.augment, x, choice.select(b.positions))
        return x, self.y[b.indices], b.share


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker makes one batch at a time; the cores are for the workers


def iterate(batches: EpochBatches, workers: int = 0, pin_memory: bool = False) -> Iterable[tuple[Tensor, Tensor, float]]:
    """The batches in order: in this process (``workers = 0``, no pinning) or through a
    ``DataLoader`` with ``workers`` processes and, for a GPU, pinned host memory (so the
    copy to the device can be asynchronous)."""
    if workers <= 0 and not pin_memory:
        return (batches[i] for i in range(len(batches)))
    return torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=max(workers, 0), pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers > 0 else None,
        # the loader draws its workers' base seed from this generator, not from the global
        # RNG, whose stream (ASGL's masks, the checkpoint's RNG state) must not depend on it
        generator=torch.Generator().manual_seed(0),
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False)


def to_device(batch: tuple[Tensor, Tensor, float], device: torch.device) -> tuple[Tensor, Tensor, float]:
    """``(x, y, share)`` with x and y on ``device`` (asynchronous from pinned memory)."""
    x, y, share = batch
    nb = device.type == "cuda"
    return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb), float(share)
