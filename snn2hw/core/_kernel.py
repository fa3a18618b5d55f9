"""Optional compiled LIF loops (``_lif_kernel.c``), loaded through ctypes.

``scripts/setup`` builds the library with ``python -m snn2hw.core._kernel``.
When it is absent (no C compiler, a fresh checkout) ``available()`` is False
and ``fused.py`` runs its vectorised torch loop instead: same numbers, slower.
Set ``SNN2HW_NO_KERNEL=1`` to force the torch loop.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("_lif_kernel.c")
LIBRARY = Path(__file__).with_name("_lif_kernel.so")
# -ffp-contract=off: no fused multiply-add, so the rounding is torch's (exact spikes).
CFLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]

_lib: ctypes.CDLL | None = None
_tried = False
_CTYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def build(out: Path = LIBRARY, compiler: str | None = None) -> Path:
    """Compile the kernel to ``out``; raises RuntimeError with the compiler's message."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) found; the fused LIF will use its torch loop")
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} failed:\n{proc.stderr}")
    os.replace(tmp, out)  # atomic: a process loading the old library is not disturbed
    return out


def load(path: Path = LIBRARY) -> ctypes.CDLL | None:
    """The library at ``path``, or None if it is missing, stale or unloadable."""
    if os.environ.get("SNN2HW_NO_KERNEL") or not path.exists():
        return None
    if path.stat().st_mtime < SOURCE.stat().st_mtime:
        return None  # built from an older source: rebuild with scripts/setup
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    for dtype, ct in _CTYPES.items():
        suf, ptr, i64, i = _SUFFIX[dtype], ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        getattr(lib, f"lif_forward_{suf}").argtypes = [ptr, i64, ptr, ptr, i64, i64, ct, ct, i, i]
        getattr(lib, f"lif_backward_{suf}").argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64, ct, ct, i, i]
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        _lib, _tried = load(), True
    return _lib


def available(t: Tensor) -> bool:
    """Whether the kernel can run on ``t`` (CPU, float32/64, library present)."""
    return t.device.type == "cpu" and t.dtype in _CTYPES and _library() is not None


def _time_major(t: Tensor) -> tuple[Tensor, int]:
    """(tensor, time stride) with each step contiguous; stride 0 stays broadcast."""
    n = t[0].numel()
    if t.shape[0] > 1 and t.stride(0) == 0 and t[0].is_contiguous():
        return t, 0
    t = t.contiguous()
    return t, n


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(c: Tensor, lam: float, v_th: float, hard: bool, keep_x: bool) -> tuple[Tensor, Tensor | None]:
    """Spikes (T, ...) and, if ``keep_x``, x = u - V_th (T, ...)."""
    lib, T = _library(), c.shape[0]
    c, ts = _time_major(c)
    n = c[0].numel()
    out = torch.empty(c.shape, dtype=c.dtype)
    x = torch.empty(c.shape, dtype=c.dtype) if keep_x else None
    fn = getattr(lib, f"lif_forward_{_SUFFIX[c.dtype]}")
    fn(_ptr(c), ts, _ptr(out), _ptr(x), T, n, lam, v_th, int(hard), torch.get_num_threads())
    return out, x


def backward(go: Tensor, x: Tensor, g: Tensor, lam: float, v_th: float, hard: bool,
             need_gs: bool) -> tuple[Tensor, Tensor | None]:
    """(gu, gs) of fused.py's recurrence; gs only if ``need_gs``."""
    lib, T = _library(), x.shape[0]
    go, ts = _time_major(go.to(x.dtype))
    g = g.expand(x.shape).contiguous()
    n = x[0].numel()
    gu = torch.empty_like(x)
    gs = torch.empty_like(x) if need_gs else None
    fn = getattr(lib, f"lif_backward_{_SUFFIX[x.dtype]}")
    fn(_ptr(go), ts, _ptr(g), _ptr(x), _ptr(gu), _ptr(gs), T, n, lam, v_th, int(hard),
       torch.get_num_threads())
    return gu, gs


if __name__ == "__main__":  # python -m snn2hw.core._kernel  (run by scripts/setup)
    try:
        print(f"built {build()}")
    except RuntimeError as exc:  # optional: say so, do not fail the set-up
        print(f"note: {exc}", file=sys.stderr)
