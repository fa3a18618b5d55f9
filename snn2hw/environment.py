"""What is installed: versions, the Loihi runtime environment, a real samna.

Nothing here imports an optional SDK: PyPI's ``samna`` is a stub that runs a
network install when imported, and lava lives in its own Python 3.10 venv.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import sys
from pathlib import Path

OPTIONAL = ("numpy", "scipy", "scikit-learn", "nir", "nirtorch", "sinabs", "onnx",
            "onnxruntime", "h5py", "matplotlib", "mnist1d", "neurobench", "snntorch")


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def real_samna_available() -> bool:
    """True only for SynSense's compiled samna, found without importing it.

    The PyPI stub is a pure-Python ``samna/__init__.py``; the real package
    ships a compiled extension module.
    """
    spec = importlib.util.find_spec("samna")
    if spec is None:
        return False
    locations = list(spec.submodule_search_locations or [])
    if spec.origin and spec.origin.endswith((".so", ".pyd")):
        return True
    for loc in locations:
        for f in Path(loc).rglob("*"):
            if f.suffix in (".so", ".pyd") or ".so." in f.name:
                return True
    return False


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def loihi_python() -> Path | None:
    """The Python 3.10 interpreter of the Loihi (lava-dl) environment, if built.

    ``SNN2HW_LOIHI_PYTHON`` overrides; otherwise ``.venv-loihi`` beside the
    package's checkout (the set-up command builds it there).
    """
    env = os.environ.get("SNN2HW_LOIHI_PYTHON")
    candidates = [Path(env)] if env else []
    candidates.append(repo_root() / ".venv-loihi" / "bin" / "python")
    for c in candidates:
        if c.exists():
            return c
    return None


def environment_report() -> dict[str, str]:
    import torch

    from .version import __version__

    report = {
        "snn2hw": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "cuda": torch.version.cuda if torch.cuda.is_available() else "not available",
    }
    for dist in OPTIONAL:
        report[dist] = version_of(dist) or "not installed"
    lp = loihi_python()
    report["loihi env"] = str(lp) if lp else "not found (run the set-up command; see README)"
    stub = version_of("samna")
    if real_samna_available():
        report["samna"] = f"{stub} (real)"
    else:
        report["samna"] = "stub only (not usable; chip config skipped)" if stub else "not installed"
    return report
