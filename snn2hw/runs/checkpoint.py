"""Checkpoints: written atomically, read without arbitrary pickle.

A checkpoint is a dict of plain types and tensors, loaded with
``torch.load(weights_only=True)``. Writes go to a temporary file in the same
directory, are flushed to disk, then renamed over the target, so a run killed
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .files import atomic_write

FORMAT = "snn2hw-checkpoint"
VERSION = 1


def on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU and
    detached: a checkpoint written on a GPU loads on any machine, and ``torch.load``
    never needs the device it was saved from."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
        return type(obj)(*(on_cpu(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` (CPU tensors only, see ``on_cpu``) atomically to ``path``."""
    payload = on_cpu({"format": FORMAT, "version": VERSION, **payload})
    atomic_write(path, lambda f: torch.save(payload, f))


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint argument names: a run directory means its best.pt, else last.pt."""
    p = Path(path)
    if p.is_dir():
        return p / "best.pt" if (p / "best.pt").exists() else p / "last.pt"
    return p


def load_checkpoint(path: str | Path) -> dict:
    """Load and sanity-check a checkpoint; any problem is one CheckpointError."""
    p = checkpoint_file(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint; pass a .pt file or a run directory")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: corrupt or truncated checkpoint ({reason}); use the run's other "
            "checkpoint (best.pt / last.pt) or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an snn2hw checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{p}: written by a newer snn2hw (format {ckpt['version']}); upgrade")
    for key in ("model_config", "model_state"):
        if key not in ckpt:
            raise CheckpointError(f"{p}: incomplete checkpoint, missing {key!r}")
    return ckpt
