"""Checkpoints: written atomically, read without arbitrary pickle.

A checkpoint is a dict of plain types and tensors, loaded with
``torch.load(weights_only=True)``. Writes go to a temporary file in the same
directory, are flushed to disk, then renamed over the target, so a run killed
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

FORMAT = "snn2hw-checkpoint"
VERSION = 1


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a finished file (e.g. last.pt to best.pt) with the same temp-and-rename guarantee."""
    import shutil

    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
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


def rng_state() -> dict:
    """Python, numpy and torch RNG states as checkpoint-safe values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
