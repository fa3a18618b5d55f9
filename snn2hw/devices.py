"""Where a run's tensors live and at what precision: ``--device`` and ``--precision``.

Every verb that runs a network resolves its device here, once: ``auto`` (the
default) is this process's CUDA device when there is one (``cuda:LOCAL_RANK``
under torchrun) and the CPU otherwise; ``cpu``; ``cuda`` (the same GPU choice as
auto, but an error without one); ``cuda:N``. A device that does not exist is a
``ConfigError`` (one line, exit 2), never a CUDA traceback.

Precision: ``fp32`` (default), ``bf16`` or ``fp16`` run the synaptic layers
(convolutions, matrix products) under ``torch.autocast``; the neuron keeps its
membrane and the spike condition in fp32 (``core.layers.LIF`` casts its
currents up), so a spike never depends on a 7- or 10-bit mantissa. fp16 also
scales the loss (``grad_scaler``) so that small gradients do not underflow.
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from .errors import ConfigError, notice

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    return "torch.cuda.is_available() is False (no GPU visible, or a driver problem)"


def _local_gpu() -> int:
    """This process's GPU: ``LOCAL_RANK`` (torchrun, one process per GPU) modulo the count."""
    return int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The ``torch.device`` that ``spec`` names on this machine.

    ``None`` is auto. ``auto`` falls back to the CPU when CUDA is unavailable and
    says so (a ``Notice``) when it was asked for by name or when torch was built
    with CUDA (a GPU was probably expected); a CPU-only torch with the default
    stays quiet. ``cuda`` or ``cuda:N`` without that GPU raises ``ConfigError``.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_gpu())
        if spec is not None or torch.version.cuda is not None:
            notice(f"--device auto: no CUDA device ({_no_cuda_reason()}); running on the CPU")
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device {spec}: unknown device; choose one of {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA device here ({_no_cuda_reason()}); "
                          "use --device cpu (or auto)")
    if not index:
        return torch.device("cuda", _local_gpu())
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 and int(index) != _local_gpu():
        raise ConfigError(f"--device {spec}: under torchrun each process takes GPU LOCAL_RANK "
                          f"(here cuda:{_local_gpu()}); pass --device cuda (or auto)")
    return torch.device("cuda", int(index))


def use_device(device: torch.device, precision: str = "fp32") -> None:
    """Make ``device`` this process's current CUDA device (where CUDA's RNG state, NCCL
    and ``torch.cuda`` calls without a device go); nothing for the CPU.

    With ``fp32`` the GPU's matrix units compute in full fp32, not TF32 (10-bit
    mantissa), which cuDNN uses for convolutions by default: fp32 then means the
    CPU's numbers up to summation order. ``bf16``/``fp16`` are the fast modes.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
        full = check_precision(precision) == "fp32"
        torch.backends.cuda.matmul.allow_tf32 = not full
        torch.backends.cudnn.allow_tf32 = not full


def check_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` if it is one of ``PRECISIONS`` and ``device`` can run it, else ``ConfigError``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if (precision == "bf16" and device is not None and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; "
                          "use --precision fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast region a training forward runs in (nothing for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> "torch.amp.GradScaler | None":
    """A loss scaler for fp16 (its 5-bit exponent underflows small gradients); None otherwise."""
    if check_precision(precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu``: for summaries and benchmark headers."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
