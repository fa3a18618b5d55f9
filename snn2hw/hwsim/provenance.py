"""What every hwsim report records: the command, package versions, checkpoint hashes."""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

from ..runs.checkpoint import checkpoint_file


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(checkpoint_file(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def command_line(command: str | None = None) -> str:
    """The command that produced a report: given by the CLI, else this process's argv."""
    if command:
        return command
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


def versions() -> dict[str, str]:
    import numpy
    import torch

    from ..version import __version__

    return {"snn2hw": __version__, "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": numpy.__version__}
