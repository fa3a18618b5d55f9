"""Process-group helpers that are no-ops in a single process.

Methods call these so their adaptive state stays identical on every rank
(CPNG all-reduces membrane statistics, Dspike broadcasts b); outside
``torchrun`` they return their input unchanged.

Three layers, all usable without a process group:

* queries and collectives (``rank``, ``all_reduce_mean``, ``broadcast_object``,
  ``sum_over_ranks`` with gradients, ...);
* ``init_from_env`` joins the group ``torchrun`` describes (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and ``local_only`` makes a process act
  alone while a group exists (a sweep job must not all-reduce with other ranks'
  unrelated jobs);
* ``shard_jobs`` / ``gather_results`` / ``run_jobs`` spread independent jobs
  (sweep points, robustness chips) over ranks and worker processes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

J = TypeVar("J")
R = TypeVar("R")

_local_depth = 0  # > 0 inside local_only(): the group is ignored


def is_distributed() -> bool:
    """True when collectives reach other ranks (a group exists and we are not in ``local_only``)."""
    return (_local_depth == 0 and torch.distributed.is_available()
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1)


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (a new tensor; ``t`` itself is not changed)."""
    return all_reduce_sum(t) / world_size() if is_distributed() else t


def all_reduce_sum(t: Tensor) -> Tensor:
    if not is_distributed():
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` in place with rank ``src``'s values; returns ``t``."""
    if is_distributed():
        torch.distributed.broadcast(t.data, src=src)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


class _SumOverRanks(torch.autograd.Function):
    """y = sum_r x_r on every rank. Each rank's loss depends on y, so the total
    loss sum_r L_r has dL/dx_r = sum_k dL_k/dy: the backward is again a sum."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _SumOverRanks.apply(grad)


def sum_over_ranks(x: Tensor) -> Tensor:
    """``sum_r x_r`` with gradients flowing back to every rank's ``x`` (sync-BN)."""
    return _SumOverRanks.apply(x) if is_distributed() else x


# ---------------------------------------------------------------- process group

def launched_by_torchrun() -> bool:
    """torchrun (or any launcher following its convention) set WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors when a GPU is present.

    ``SNN2HW_DIST_BACKEND`` overrides (e.g. ``gloo`` to debug a GPU run).
    """
    if os.environ.get("SNN2HW_DIST_BACKEND"):
        return os.environ["SNN2HW_DIST_BACKEND"]
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; True if this call created it.

    Does nothing (False) in a single process, inside ``local_only`` or when a
    group already exists. With CUDA each process uses GPU ``LOCAL_RANK``.
    """
    if (_local_depth or not launched_by_torchrun() or not torch.distributed.is_available()
            or torch.distributed.is_initialized()):
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    torch.distributed.init_process_group(backend or default_backend())
    return True


@contextmanager
def local_only() -> Iterator[None]:
    """Inside, this process acts alone: every helper is a no-op and ``train``
    runs single-process, even under torchrun (one sweep job per rank)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


# ---------------------------------------------------------------- independent jobs

def shard_jobs(jobs: Sequence[J]) -> list[J]:
    """This rank's jobs: every ``world_size()``-th one starting at ``rank()``.

    Round-robin keeps the shares balanced when job cost grows along the list
    (e.g. a sweep over T). ``gather_results`` undoes it.
    """
    return list(jobs)[rank()::world_size()]


def gather_results(local: Sequence[R], n_jobs: int) -> list[R]:
    """All ranks' results of ``shard_jobs(jobs)``, back in the order of ``jobs``, on every rank."""
    parts = all_gather_object(list(local))
    out: list[Any] = [None] * n_jobs
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count),
    shared evenly with the other torchrun ranks on this node (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _init_worker(threads: int) -> None:
    # A spawned worker inherits torchrun's RANK/WORLD_SIZE; it must never join the group.
    global _local_depth
    _local_depth += 1
    torch.set_num_threads(threads)


def _call_alone(fn: Callable[[J], R], job: J) -> R:
    with local_only():
        return fn(job)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int | None = 1,
             threads: int | None = None, progress: bool = False, desc: str = "jobs",
             unit: str = "job", skip: Callable[[J], R | None] | None = None,
             on_done: Callable[[J, R], None] | None = None) -> list[R]:
    """``[fn(job) for job in jobs]``, spread over torchrun ranks and, on each rank,
    over ``workers`` spawned processes; every rank returns the full list in order.

    * ``workers``: processes per rank (``None``: one per available core), never
      more than this rank's jobs left to run. With more than one, ``fn`` and the
      jobs must be picklable (a module-level function, plain data).
    * ``threads``: torch threads of each process that runs jobs, this one
      included when ``workers`` is 1 (restored afterwards); default
      ``available_cores() // workers``, so workers x threads <= cores.
    * ``skip(job)``: a result known without running (e.g. a finished sweep run),
      or None; such a job takes no worker and is counted as done.
    * ``on_done(job, result)``: called here as each job that ran finishes (in
      completion order), e.g. to report a failure while the others continue.

    Each call runs as if alone (``local_only``), so a job that trains a network
    never all-reduces with another rank's job. A job that raises stops the run;
    one whose failure must not stop its siblings returns a failure result
    instead (``sweep.run_job`` does).
    """
    mine = shard_jobs(jobs)
    known = [skip(job) if skip is not None else None for job in mine]
    pending = [i for i, r in enumerate(known) if r is None]
    results: list[Any] = list(known)
    cores = available_cores()
    workers = max(1, min(workers or cores, len(pending) or 1))
    threads = threads or max(1, cores // workers)
    bar = None
    if progress and is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit=unit, dynamic_ncols=True,
                   desc=f"{desc} ({_plural(workers, 'worker')} x {_plural(threads, 'thread')})")

    def finished(i: int, result: Any) -> None:
        results[i] = result
        if on_done is not None:
            on_done(mine[i], result)
        if bar is not None:
            bar.update()

    try:
        if workers == 1:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for i in pending:
                    finished(i, _call_alone(fn, mine[i]))
            finally:
                torch.set_num_threads(before)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: a forked child would inherit the parent's torch thread pool state
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(threads,)) as pool:
                futures = {pool.submit(_call_alone, fn, mine[i]): i for i in pending}
                for fut in as_completed(futures):
                    finished(futures[fut], fut.result())
    finally:
        if bar is not None:
            bar.close()
    return gather_results(results, len(jobs))
