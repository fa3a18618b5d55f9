"""Atomic writes: a temp file in the same directory, flushed to disk, renamed over
the target, so a process killed mid-write leaves the previous file intact."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


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
