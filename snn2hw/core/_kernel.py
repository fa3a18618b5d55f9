"""Optional compiled LIF loops (``_lif_kernel.c``), loaded through ctypes.

``scripts/setup`` builds the library (``main()`` below).
When it is absent (no C compiler, a fresh checkout) ``available()`` is False
and ``fused.py`` runs its vectorised torch loop instead: the same spikes, slower; the
gradients the same but for GSG's and Dspike's derivatives (a few float32 ulps,
``sech2_grad``) and values below float32's normal range (the backward kernels flush
them to 0: ``subnormals_off`` in the C source).
Set ``SNN2HW_NO_KERNEL=1`` to force the torch loop.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .surrogate import PsgArctan, SurrogateShape, grads

SOURCE = Path(__file__).with_name("_lif_kernel.c")
LIBRARY = Path(__file__).with_name("_lif_kernel.so")
# -ffp-contract=off: no fused multiply-add, so the rounding is torch's (exact spikes).
CFLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]

BLOCK = 1 << 18  # elements per backward block: its temporaries fit in a core's L2 cache

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
    errors = []
    # without OpenMP support the pragmas are ignored: the same kernel on one core
    for flags in (CFLAGS, [f for f in CFLAGS if f != "-fopenmp"]):
        try:
            proc = subprocess.run([cc, *flags, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
        except OSError as exc:
            raise RuntimeError(f"cannot run the C compiler {cc!r} ({exc}); the fused LIF will use "
                               "its torch loop") from None
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: a process loading the old library is not disturbed
            return out
        errors.append(proc.stderr)
    raise RuntimeError(f"building {SOURCE.name} failed; the fused LIF will use its torch loop:\n{errors[-1]}")


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
        getattr(lib, f"lif_forward_{suf}").argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64, i64, ct, ct, i, i]
        getattr(lib, f"lif_backward_{suf}").argtypes = [ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, ct, ct, i, i]
        getattr(lib, f"call_counts_{suf}").argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i]
        getattr(lib, f"asgl_forward_{suf}").argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, ct, ct, i, ct, ct, i, i]
        getattr(lib, f"asgl_backward_{suf}").argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64, ct, ct, ct, ct, i,
                                                         ct, i]
        getattr(lib, f"lif_pool_forward_{suf}").argtypes = [ptr, i64, ptr, i64, i, ptr, ptr, ptr, ptr, ptr, ptr, i64,
                                                            i64, i64, i64, i64, i64, ct, ct, ct, ct, i, i64, ptr, i]
        getattr(lib, f"lif_pool_backward_{suf}").argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, i,
                                                             ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ct, ct, ct,
                                                             ct, i, i, ptr, ptr]
        getattr(lib, f"bn_input_grad_{suf}").argtypes = [ptr, ptr, ptr, ptr, i64, i, i64, i64, i]
        getattr(lib, f"asgl_pool_forward_{suf}").argtypes = [ptr, i64, ptr, i64, i, ptr, ptr, ptr, ptr, i64, i64, i64, i64,
                                                             i64, i64, ct, ct, ct, ct, i, ct, ct, i, i]
        getattr(lib, f"asgl_pool_backward_{suf}").argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, i, ptr,
                                                              ptr, ptr, i64, i64, i64, i64, i64, i64, ct, ct, ct, ct,
                                                              ct, ct, i, ct, i]
        getattr(lib, f"sech2_grad_{suf}").argtypes = [ptr, ptr, i64, ct, ct, ct, i]
        getattr(lib, f"psg_arctan_grads_{suf}").argtypes = [ptr, ptr, ptr, i64, ct, ct, i, i]
        getattr(lib, f"channel_local_conv_{suf}").argtypes = [ptr] * 5 + [i64] * 15 + [i]
        getattr(lib, f"delta_conv_{suf}").argtypes = [ptr] * 9 + [i64] * 7 + [i]
    lib.bn_stats_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.bn_coefficients_f32.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_double] * 2 + [ctypes.c_int64] + \
        [ctypes.c_void_p] * 2
    lib.pool_wide = bool(lib.wide_available())  # 16-lane float passes: AVX-512 here (x86-64 GCC builds)
    if lib.pool_wide:
        lib.lif_pool_forward_f32w.argtypes = lib.lif_pool_forward_f32.argtypes
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


def forward(c: Tensor, lam: float, v_th: float, hard: bool, spikes: bool = True,
            keep_x: bool = False) -> tuple[Tensor | None, Tensor | None]:
    """Spikes (T, ...) if ``spikes`` and x = u - V_th (T, ...) if ``keep_x``."""
    lib, T = _library(), c.shape[0]
    c, ts = _time_major(c)
    n = c[0].numel()
    out = torch.empty(c.shape, dtype=c.dtype) if spikes else None
    x = torch.empty(c.shape, dtype=c.dtype) if keep_x else None
    fn = getattr(lib, f"lif_forward_{_SUFFIX[c.dtype]}")
    fn(_ptr(c), ts, _ptr(out), _ptr(x), None, None, 1, T, n, lam, v_th, int(hard), torch.get_num_threads())
    return out, x


def forward_counted(c: Tensor, lam: float, v_th: float, hard: bool, units: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(spikes (T, ...), spikes per unit (``units``: the trailing feature size, summed over
    T and the leading sample axes), and the number of (t >= 1, neuron) at which u changed,
    u[t] != u[t-1] (int64, 0-dim)), counted in the forward pass itself (T < 2^22: the
    kernel's per-lane change counters are int32 over a 512-neuron chunk)."""
    lib, T = _library(), c.shape[0]
    if T >= 1 << 22:
        raise ValueError(f"forward_counted: {T} steps overflow the kernel's counters (T < 2^22)")
    c, ts = _time_major(c)
    n = c[0].numel()
    threads = torch.get_num_threads()
    out = torch.empty(c.shape, dtype=c.dtype)
    # one row per thread: no shared writes (one thread: the row and counter returned as they are)
    nspk = torch.zeros(units, dtype=c.dtype) if threads == 1 else torch.zeros(threads, units, dtype=c.dtype)
    nchg = torch.zeros((), dtype=torch.int64) if threads == 1 else torch.zeros(threads, dtype=torch.int64)
    fn = getattr(lib, f"lif_forward_{_SUFFIX[c.dtype]}")
    fn(_ptr(c), ts, _ptr(out), None, _ptr(nspk), _ptr(nchg), units, T, n, lam, v_th, int(hard), threads)
    return (out, nspk, nchg) if threads == 1 else (out, nspk.sum(0), nchg.sum())


def call_counts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For ``x`` (steps, rows < 2^24, units), in one pass: per step and unit the non-zero
    count and the sum over rows (float64, (steps, units)), and per step whether every
    value is in {-1, 0, 1} (bool, (steps,))."""
    lib = _library()
    x = x.contiguous()
    steps, rows, units = x.shape
    nz = torch.empty(steps, units, dtype=torch.float64)
    sums = torch.empty(steps, units, dtype=torch.float64)
    binary = torch.empty(steps, dtype=torch.bool)  # the kernel writes 0 or 1 bytes
    getattr(lib, f"call_counts_{_SUFFIX[x.dtype]}")(_ptr(x), steps, rows, units, _ptr(nz), _ptr(sums),
                                                    _ptr(binary), torch.get_num_threads())
    return nz, sums, binary


def shape_grad(shape: SurrogateShape, x: Tensor, p: Tensor) -> Tensor:
    """``shape.grad(x, p)``; a shape of the sech^2 form (its ``sech2(p)``: GSG's, Dspike's) at
    a scalar p in one compiled pass (``sech2_grad``: within a few float32 ulps of torch's
    expressions, and no subnormal values, which each cost an x86 core ~100 cycles in the
    backward)."""
    sech2 = getattr(shape, "sech2", None)
    if sech2 is None or p.dim() != 0 or not x.is_contiguous() or not available(x):
        return shape.grad(x, p)
    out = torch.empty_like(x)
    getattr(_library(), f"sech2_grad_{_SUFFIX[x.dtype]}")(_ptr(x), _ptr(out), x.numel(), *sech2(float(p)),
                                                          torch.get_num_threads())
    return out


def shape_grads(shape: SurrogateShape, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """``surrogate.grads(shape, x, p)``; PSG's arctan (a scalar gamma) in one compiled pass,
    bit for bit (``psg_arctan_grads``). Two fresh tensors (the callers write over the first)."""
    if type(shape) is not PsgArctan or p.dim() != 0 or not x.is_contiguous() or not available(x):
        return grads(shape, x, p)
    g, dp = torch.empty_like(x), torch.empty_like(x)
    two_p = 2.0 * p  # torch's 0-dim product: exact
    getattr(_library(), f"psg_arctan_grads_{_SUFFIX[x.dtype]}")(_ptr(x), _ptr(g), _ptr(dp), x.numel(), float(p),
                                                               float(two_p), int(shape.dgamma == "printed"),
                                                               torch.get_num_threads())
    return g, dp


def backward(go: Tensor, x: Tensor, p: Tensor, shape, lam: float, v_th: float, hard: bool,
             need_p: bool, gext: Tensor | None = None, overwrite: bool = False
             ) -> tuple[Tensor, Tensor | None]:
    """(gradient of the currents, gradient of p or None) of fused.py's recurrence.

    Runs over blocks of about ``BLOCK`` elements, last steps first: the
    surrogate (``shape.grad``, ``shape.grad_param``) is evaluated per block, so
    its temporaries stay small and in cache. With ``overwrite`` the currents'
    gradient replaces ``x`` (which the caller made and does not need again).
    ``gext`` is a gradient reaching u from outside (a loss on recorded membranes).
    """
    lib, T = _library(), x.shape[0]
    n = x[0].numel()
    fn = getattr(lib, f"lif_backward_{_SUFFIX[x.dtype]}")
    go = go.to(x.dtype)
    gext = gext.to(x.dtype).contiguous() if gext is not None else None
    carry = torch.zeros(n, dtype=x.dtype)
    steps = max(1, BLOCK // max(n, 1))
    grad_p = None
    # one block and x kept: gu takes the surrogate's fresh buffer (the kernel reads g[t] before
    # it writes gu[t]), one (T, ...) tensor less at the peak
    gu = x if overwrite else (None if steps >= T else torch.empty_like(x))
    for t1 in range(T, 0, -steps):
        t0 = max(0, t1 - steps)
        xb = x[t0:t1]
        g, dp = shape_grads(shape, xb, p) if need_p else (shape_grad(shape, xb, p), None)
        g = g.expand(xb.shape).contiguous()
        if gu is None:
            gu = g
        gs = torch.empty_like(xb) if need_p else None
        gob, ts = _time_major(go[t0:t1])
        geb = gext[t0:t1] if gext is not None else None
        fn(_ptr(gob), ts, _ptr(g), _ptr(xb), _ptr(geb), _ptr(gu[t0:t1]), _ptr(gs), _ptr(carry), t1 - t0, n, lam, v_th,
           int(hard), torch.get_num_threads())
        if need_p:
            gp = gs * dp
            gp = gp.sum() if p.dim() == 0 else gp.sum_to_size(p.shape)
            grad_p = gp if grad_p is None else grad_p + gp
    return gu, grad_p


# ---- ASGL dual-mode (the kernel's section of the same name) ----

DUAL_MODE_SMOOTH, DUAL_MODE_MIXED, DUAL_MODE_STEP = 0, 1, 2  # p <= 0, 0 < p < 1, p >= 1


def _mask_keys(keys: Tensor | None, mode: int, T: int, name: str, p: float) -> Tensor | None:
    """The T keys as the kernel reads them (contiguous int64), exactly where the mask is drawn."""
    if (keys is None) != (mode != DUAL_MODE_MIXED):
        raise ValueError(f"{name}: keys are needed exactly for 0 < p < 1 (p={p})")
    if keys is not None and (keys.dtype != torch.int64 or keys.shape != (T,)):
        raise ValueError(f"{name}: keys must be int64 of shape ({T},), got {keys.dtype} {tuple(keys.shape)}")
    return keys.contiguous() if keys is not None else None


def asgl_forward(c: Tensor, lam: float, v_th: float, hard: bool, alpha: float, p: float,
                 keys: Tensor | None, keep_x: bool) -> tuple[Tensor, Tensor | None]:
    """(spike values s (T, ...), x = u - V_th (T, ...) if ``keep_x``) of the LIF with
    ASGL's dual-mode spike ``s = r < p ? H(x) : H_alpha(x)`` at the width ``alpha``.

    ``keys`` (T,) int64: step t's uniforms are ``fused.counter_uniforms(keys[t], ...)``,
    made in the kernel, for ``0 < p < 1`` (None otherwise: s is ``H_alpha`` for p <= 0,
    ``H`` for p >= 1)."""
    lib, T = _library(), c.shape[0]
    c, ts = _time_major(c)
    n = c[0].numel()
    mode = DUAL_MODE_SMOOTH if p <= 0.0 else DUAL_MODE_STEP if p >= 1.0 else DUAL_MODE_MIXED
    keys = _mask_keys(keys, mode, T, "asgl_forward", p)
    s = torch.empty(c.shape, dtype=c.dtype)
    x = torch.empty(c.shape, dtype=c.dtype) if keep_x else None
    fn = getattr(lib, f"asgl_forward_{_SUFFIX[c.dtype]}")
    fn(_ptr(c), ts, _ptr(keys), _ptr(s), _ptr(x), T, n, lam, v_th, int(hard), alpha, p, mode, torch.get_num_threads())
    return s, x


def asgl_backward(go: Tensor, x: Tensor, s: Tensor, alpha: float, lam: float, v_th: float,
                  hard: bool, need_alpha: bool) -> tuple[Tensor, Tensor | None]:
    """(gradient of the currents (T, ...), gradient of alpha (0-dim) or None) of fused.py's
    recurrence with non-binary spikes ``s`` and AsglRect's derivatives at ``alpha``,
    rounded as ``fused._backward_torch`` rounds them (the same numbers, not just close)."""
    lib, T = _library(), x.shape[0]
    n = x[0].numel()
    go, ts = _time_major(go.to(x.dtype))
    gu = torch.empty_like(x)
    gp = torch.empty_like(x) if need_alpha else None  # gs * dp, summed below as torch sums it
    fn = getattr(lib, f"asgl_backward_{_SUFFIX[x.dtype]}")
    # -lam and -v_th*lam are the torch loop's scalars, rounded to x's type as torch does
    fn(_ptr(go), ts, _ptr(x), _ptr(s), _ptr(gu), _ptr(gp), T, n, lam, v_th, -lam, -v_th * lam, int(hard),
       alpha, torch.get_num_threads())
    return gu, (gp.sum() if need_alpha else None)
class PlaneLayout(NamedTuple):
    """The neurons of ``lif_pool_*``: T steps of P planes (b, c) of H x W (1-D: H = 1),
    channel p % C; pooling windows kh x kw (kernel = stride; 1 x 1: none)."""

    T: int
    P: int
    C: int
    H: int
    W: int
    kh: int
    kw: int


POOL_RESETS = {"soft": 0, "hard": 1, "soft_nodecay": 2}  # the pool kernel's reset codes


def pool_forward(z: Tensor, coef: Tensor | None, mode: int, lay: PlaneLayout, div: float, mul: float,
                 lam: float, v_th: float, reset: int, keep_x: bool, keep_u: bool = False
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(pooled spikes (T, P, H // kh, W // kw), x (T, P, H, W) if ``keep_x``, u (T, P, H, W) if
    ``keep_u``) of the LIF driven by ``c = affine(z)`` (``coef`` C x (alpha, beta, w, bias),
    ``mode`` 2: fma as torch's batch_norm, 1: without, 0: c = z), ``z`` (T, P*H*W) time-major
    (time stride 0: one frame broadcast over T). Pooled = window sum / ``div``, times ``mul``
    if non-zero; u is the membrane ``forward_membrane`` records, bit for bit. ``reset``: one of
    ``POOL_RESETS`` (GSG's soft_nodecay too, which the other loops here do not run)."""
    x = torch.empty(lay.T, lay.P, lay.H, lay.W, dtype=z.dtype) if keep_x else None
    u = torch.empty(lay.T, lay.P, lay.H, lay.W, dtype=z.dtype) if keep_u else None
    return _pool_call(z, coef, mode, lay, div, mul, lam, v_th, reset, x, None, None, u), x, u


def pool_forward_counted(z: Tensor, lay: PlaneLayout, div: float, mul: float, lam: float, v_th: float,
                         hard: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``pool_forward`` of ``c = z`` (no affine), and hwsim's counts of its LIF as
    ``forward_counted`` gives them, made in the same pass: the LIF's own spikes (before
    pooling) per unit (C x H x W: a sample's neurons; summed over T and the planes' samples)
    and the number of (t >= 1, neuron) at which u changed (int64, 0-dim)."""
    threads, units = torch.get_num_threads(), lay.C * lay.H * lay.W
    # one row per thread: no shared writes
    nspk = torch.zeros(threads, units, dtype=z.dtype)
    nchg = torch.zeros(threads, dtype=torch.int64)
    pooled = _pool_call(z, None, 0, lay, div, mul, lam, v_th, int(hard), None, nspk, nchg, None)
    return (pooled, nspk[0], nchg[0]) if threads == 1 else (pooled, nspk.sum(0), nchg.sum())


def _pool_call(z: Tensor, coef: Tensor | None, mode: int, lay: PlaneLayout, div: float, mul: float,
               lam: float, v_th: float, reset: int, x: Tensor | None, nspk: Tensor | None,
               nchg: Tensor | None, u: Tensor | None) -> Tensor:
    lib, threads = _library(), torch.get_num_threads()
    z, ts = _time_major(z)
    pooled = torch.empty(lay.T, lay.P, lay.H // lay.kh, lay.W // lay.kw, dtype=z.dtype)
    group = plane_group(lay) if nspk is None else 1
    # each thread's plane (group of planes) of spikes
    sbuf = torch.empty(threads, lay.T * lay.H * lay.W * group, dtype=z.dtype)
    # (each thread's currents of a group, then every channel's coefficients per neuron: pool_group)
    cbuf = torch.empty(threads * lay.T * lay.W * group + 4 * (lay.C + group) * lay.W, dtype=z.dtype) \
        if group > 1 and mode else None
    wide = WIDE_POOL and z.dtype == torch.float32 and lib.pool_wide
    getattr(lib, "lif_pool_forward_f32w" if wide else f"lif_pool_forward_{_SUFFIX[z.dtype]}")(
        _ptr(z), ts, _ptr(coef), lay.C, mode, _ptr(pooled), _ptr(x), _ptr(u), _ptr(sbuf), _ptr(nspk), _ptr(nchg), lay.T,
        lay.P, lay.H, lay.W, lay.kh, lay.kw, div, mul, lam, v_th, reset, group, _ptr(cbuf), threads)
    return pooled


# float32 pooled forward in 16-lane vectors where the CPU has AVX-512 (the same numbers; False: 4 lanes)
WIDE_POOL = True
GROUP_NEURONS = 256  # short 1-D planes: this many neurons side by side at most (the kernel's pool_group)


def plane_group(lay: PlaneLayout) -> int:
    """How many consecutive planes ``lif_pool_forward`` runs as one: rows (H = 1) shorter than
    a quarter of GROUP_NEURONS whose windows tile them (kw | W), else 1."""
    if lay.H != 1 or lay.kh != 1 or lay.W % lay.kw or 4 * lay.W > GROUP_NEURONS:
        return 1
    return min(GROUP_NEURONS // lay.W, lay.P)


def _windows(lay: PlaneLayout) -> Tensor:
    """Per neuron of a plane (H x W): 1 + its pooling window's index, 0 if in none (floor)."""
    i = torch.arange(lay.H * lay.W)
    oi, oj = i // lay.W // lay.kh, i % lay.W // lay.kw
    Ho, Wo = lay.H // lay.kh, lay.W // lay.kw
    return torch.where((oi < Ho) & (oj < Wo), 1 + oi * Wo + oj, 0)


def pool_backward(gp: Tensor, x: Tensor, p: Tensor, shape, z: Tensor | None, coef: Tensor | None, mode: int,
                  lay: PlaneLayout, div: float, mul: float, lam: float, v_th: float, reset: int, need_p: bool,
                  gext: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(gradient of c (T, P, H, W), of p or None, per-plane sums (P, 2) of (gc, gc * xn) in
    float64 or None) of ``pool_forward``'s LIF, given ``gp`` the pooled spikes' gradient and
    ``gext`` (T, P*H*W) or None, that of the recorded u (added to u's as ``backward`` adds it).
    ``reset`` as ``pool_forward``'s. Blocks of steps as ``backward``; ``x`` is overwritten by
    the gradient of c."""
    lib, threads = _library(), torch.get_num_threads()
    fn = getattr(lib, f"lif_pool_backward_{_SUFFIX[x.dtype]}")
    gp = gp.to(x.dtype).contiguous()
    gext = gext.to(x.dtype).reshape(lay.T, -1).contiguous() if gext is not None else None
    zt, zts = _time_major(z) if z is not None else (None, 0)
    n = x[0].numel()
    carry = torch.zeros(n, dtype=x.dtype)
    sums = torch.zeros(lay.P, 2, dtype=torch.float64) if mode else None
    steps = max(1, BLOCK // max(n, 1))
    # each thread's scaled window gradients of one plane over a block of steps
    gbuf = torch.empty(threads, min(steps, lay.T) * (lay.H // lay.kh) * (lay.W // lay.kw) + 1, dtype=x.dtype)
    window = _windows(lay)
    grad_p = None
    # a scalar parameter's sum gs * dp is taken in the kernel (per plane, in double): gs is
    # not written, multiplied and summed by torch; a tensor parameter sums to its shape
    in_kernel = need_p and p.dim() == 0
    gpsum = torch.zeros(lay.P, dtype=torch.float64) if in_kernel else None
    for t1 in range(lay.T, 0, -steps):
        t0 = max(0, t1 - steps)
        xb = x[t0:t1]
        g, dp = shape_grads(shape, xb, p) if need_p else (shape_grad(shape, xb, p), None)
        g = g.expand(xb.shape).contiguous()
        dp = dp.expand(xb.shape).contiguous() if in_kernel else dp
        gs = torch.empty_like(xb) if need_p and not in_kernel else None
        zb = zt[t0:t1] if zt is not None and zts else zt
        geb = gext[t0:t1] if gext is not None else None
        fn(_ptr(gp[t0:t1]), _ptr(g), _ptr(xb), _ptr(geb), _ptr(xb), _ptr(gs), _ptr(carry), _ptr(zb), zts, _ptr(coef), lay.C,
           mode, _ptr(sums), _ptr(gbuf), _ptr(window), t1 - t0, lay.P, lay.H, lay.W, lay.kh, lay.kw, div, mul,
           lam, v_th, reset, threads, _ptr(dp) if in_kernel else None, _ptr(gpsum))
        if gs is not None:
            gpar = (gs * dp).sum_to_size(p.shape)
            grad_p = gpar if grad_p is None else grad_p + gpar
    if in_kernel:
        grad_p = gpsum.sum().to(x.dtype)
    return x, grad_p, sums


def bn_input_grad(gc: Tensor, z: Tensor, coef: Tensor, kk: Tensor, mode: int, C: int) -> Tensor:
    """In place: ``gc = kk[:, 0] gc + kk[:, 1] xn + kk[:, 2]`` per channel (``kk`` C x 3), xn the
    normalised ``z`` as ``pool_forward`` computes it; ``gc``, ``z`` contiguous (R, C, ...)."""
    lib, kk = _library(), kk.to(gc.dtype).contiguous()  # bound: alive during the call
    getattr(lib, f"bn_input_grad_{_SUFFIX[gc.dtype]}")(
        _ptr(gc), _ptr(z), _ptr(coef), _ptr(kk), C, mode, gc.shape[0],
        gc[0, 0].numel(), torch.get_num_threads())
    return gc


def bn_stats(z: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, biased var) per channel of float32 ``z`` (N, C, ...) contiguous, as
    ``torch.batch_norm_update_stats(z, None, None, 0)`` returns them (the same arithmetic;
    only the order of its double sums differs: the kernel's comment), in one thread."""
    if z.dtype != torch.float32:
        raise TypeError(f"bn_stats: float32 only, got {z.dtype} (torch's statistics for the rest)")
    C = z.shape[1]
    mean, var = torch.empty(C, dtype=z.dtype), torch.empty(C, dtype=z.dtype)
    S = z[0, 0].numel()
    acc, mrow = torch.empty(C * S, dtype=torch.float64), torch.empty(C * S, dtype=z.dtype)  # scratch
    _library().bn_stats_f32(_ptr(z), z.shape[0], C, S, _ptr(mean), _ptr(var), _ptr(acc), _ptr(mrow))
    return mean, var


def bn_coefficients(z: Tensor, weight: Tensor, bias: Tensor, scale: float, eps: float) -> tuple[Tensor, Tensor]:
    """(coef (C, 4), invstd (C,)) of ``fusion._bn_coefficients`` for training statistics
    without running buffers, from ``bn_stats(z)``: the same numbers, two calls."""
    mean, var = bn_stats(z)
    C = z.shape[1]
    weight, bias = weight.detach().to(z.dtype).contiguous(), bias.detach().to(z.dtype).contiguous()
    coef, invstd = torch.empty(C, 4, dtype=z.dtype), torch.empty(C, dtype=z.dtype)
    _library().bn_coefficients_f32(_ptr(mean), _ptr(var), _ptr(weight), _ptr(bias), float(scale), float(eps), C,
                                   _ptr(coef), _ptr(invstd))
    return coef, invstd


def channel_local_conv(z: Tensor, w: Tensor, base: Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                       dilation: tuple[int, ...]) -> Tensor:
    """``out[n, p, c] = base[n, c] + conv(z[n, p], w[p, c])`` (the kernel's comment): z (N, P, *S_in),
    w (P, C, *k), base (N, C, *S_out), 1-d or 2-d, zero padding; out (N, P, C, *S_out)."""
    z, w, base = z.contiguous(), w.contiguous(), base.contiguous()
    one_d = z.dim() == 3
    if one_d:  # one row
        z, w, base = z.unsqueeze(2), w.unsqueeze(2), base.unsqueeze(2)
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    N, P, Hi, Wi = z.shape
    C, kh, kw, Ho, Wo = w.shape[1], w.shape[2], w.shape[3], base.shape[2], base.shape[3]
    out = torch.empty(N, P, C, Ho, Wo, dtype=z.dtype)
    threads = torch.get_num_threads()
    cols = torch.empty(threads, kh * kw * Ho * Wo, dtype=z.dtype)  # each thread's padded inputs per tap
    getattr(_library(), f"channel_local_conv_{_SUFFIX[z.dtype]}")(
        _ptr(z), _ptr(w), _ptr(base), _ptr(out), _ptr(cols), N, P, C, Hi, Wi, Ho, Wo, kh, kw, *stride, *padding, *dilation,
        threads)
    return out.squeeze(3) if one_d else out


def conv_taps(in_size: tuple[int, ...], out_size: tuple[int, ...], kernel: tuple[int, ...],
              stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...]) -> Tensor:
    """(S_in, K) int64: the output position (flat) that input position i (flat) reaches
    through tap k (flat, row-major as the weight's), -1 for none; 1-d or 2-d, zero padding."""
    table = torch.zeros(*in_size, *kernel, dtype=torch.int64)
    for axis, (n_in, n_out, k, s, p, d) in enumerate(zip(in_size, out_size, kernel, stride, padding, dilation)):
        i = torch.arange(n_in).view(-1, 1)
        start = i + p - torch.arange(k).view(1, -1) * d  # = o * s for the output o it reaches
        o = torch.div(start, s, rounding_mode="floor")
        hit = (start % s == 0) & (o >= 0) & (o < n_out)
        view = [1] * (2 * len(in_size))
        view[axis], view[len(in_size) + axis] = n_in, k
        o, hit = o.view(view), hit.view(view)
        table = torch.where(hit & (table >= 0), table * n_out + o, torch.full_like(table, -1))
    return table.reshape(math.prod(in_size), math.prod(kernel)).contiguous()


def delta_conv(x: Tensor, base_in: Tensor, base_t: Tensor, wt: Tensor, table: Tensor,
               out_size: tuple[int, ...]) -> Tensor:
    """``out[n] = base_out[n // P] + conv(x[n] - base_in[n // P])`` (the kernel's comment): x
    (N, Ci, *S_in), base_in (N / P, Ci, *S_in), base_t (N / P, S_out, Co) the unperturbed
    output transposed, wt (Ci, K, Co) the weight transposed, table ``conv_taps``'s; out (N, Co, *S_out)."""
    x = x.contiguous()
    N, Ci, R = x.shape[0], x.shape[1], base_in.shape[0]
    Si, So, Co, K = table.shape[0], base_t.shape[1], base_t.shape[2], table.shape[1]
    if (base_in.shape[1:] != x.shape[1:] or N % R or base_t.shape[0] != R or wt.shape != (Ci, K, Co)
            or x[0, 0].numel() != Si or math.prod(out_size) != So or not base_in.is_contiguous()
            or not base_t.is_contiguous() or not wt.is_contiguous() or table.dtype != torch.int64):
        raise ValueError(f"delta_conv: shapes do not match: x {tuple(x.shape)}, base_in {tuple(base_in.shape)}, "
                         f"base_t {tuple(base_t.shape)}, wt {tuple(wt.shape)}, table {tuple(table.shape)}, "
                         f"out_size {out_size}")
    out = torch.empty(N, Co, *out_size, dtype=x.dtype)
    threads = torch.get_num_threads()
    accs = torch.empty(threads, So * Co, dtype=x.dtype)
    idx, rows = _delta_indices(Ci, Si, Co, So)
    getattr(_library(), f"delta_conv_{_SUFFIX[x.dtype]}")(
        _ptr(x), _ptr(base_in), _ptr(base_t), _ptr(wt), _ptr(table), _ptr(idx), _ptr(rows), _ptr(out), _ptr(accs),
        N, N // R, Ci, Si, Co, So, K, threads)
    return out


@functools.lru_cache(maxsize=16)
def _delta_indices(Ci: int, Si: int, Co: int, So: int) -> tuple[Tensor, Tensor]:
    """``delta_conv``'s int32 index rows for a layer's sizes (each FDG chunk asks again):
    where output f (channel-major) sits in the transposed acc, and the input channel of
    flat input f."""
    f = torch.arange(So * Co, dtype=torch.int32)
    return (f % So) * Co + f // So, torch.arange(Ci * Si, dtype=torch.int32) // Si


def main() -> None:
    """Build, or say why not without failing (scripts/setup runs this)."""
    try:
        print(f"built {build()}")
    except RuntimeError as exc:  # optional: say so, do not fail the set-up
        print(f"note: {exc}", file=sys.stderr)


# ----------------------------------------------------------------- soft histogram (PSG's PDA)
SOFT_HIST_MAX_BINS = 4096  # the kernel keeps per-thread bins on the stack


def _soft_hist_fn(dtype: torch.dtype, which: str):
    """The kernel's ``soft_hist_{which}_{suffix}`` with its argument types, or None when the
    library (possibly built before the soft histogram existed) does not have it."""
    lib = _library()
    fn = getattr(lib, f"soft_hist_{which}_{_SUFFIX[dtype]}", None) if lib is not None else None
    if fn is not None and fn.argtypes is None:
        ptr, i64, ct = ctypes.c_void_p, ctypes.c_int64, _CTYPES[dtype]
        fn.argtypes = [ptr, i64, i64, ct, ct, i64, ptr, ptr, ctypes.c_int]  # forward and backward
    return fn


def soft_hist_available(values: Tensor, k: int) -> bool:
    """Whether the compiled soft histogram can bin ``values`` (CPU, float32/64) on k bins."""
    return (available(values) and 2 <= k <= SOFT_HIST_MAX_BINS
            and _soft_hist_fn(values.dtype, "forward") is not None)


def soft_hist_forward(values: Tensor, c0: float, h: float, k: int) -> Tensor:
    """Unnormalised linear-binning counts (R, k) of the rows of ``values`` (R, M) on the
    centres ``c0 + i h``, in one pass (``_lif_kernel.c``, "soft histogram"); summed in
    float64, returned in ``values``' dtype."""
    values = values.contiguous()
    rows, m = values.shape
    threads = torch.get_num_threads()
    ws = torch.zeros(threads, 2, rows, k, dtype=torch.float64)
    counts = torch.empty(rows, k, dtype=torch.float64)
    _soft_hist_fn(values.dtype, "forward")(_ptr(values), rows, m, c0, h, k, _ptr(ws), _ptr(counts), threads)
    return counts.to(values.dtype)


def soft_hist_backward(values: Tensor, c0: float, h: float, grad: Tensor) -> Tensor:
    """The gradient (R, M) of ``sum(grad * soft_hist_forward(values, c0, h, k))`` in
    ``values``, in one pass: ``(grad[r, i+1] - grad[r, i]) / h`` at each value's lower bin
    i, 0 where the value lies beyond the grid."""
    values = values.contiguous()
    grad = grad.to(values.dtype).contiguous()
    rows, m = values.shape
    out = torch.empty_like(values)
    _soft_hist_fn(values.dtype, "backward")(_ptr(values), rows, m, c0, h, grad.shape[1], _ptr(grad), _ptr(out),
                                            torch.get_num_threads())
    return out


def forward_membrane_available(c: Tensor) -> bool:
    """Whether the compiled LIF forward that records u can run on ``c``."""
    return available(c) and hasattr(_library(), f"lif_forward_membrane_{_SUFFIX[c.dtype]}")


def forward_membrane(c: Tensor, lam: float, v_th: float, hard: bool) -> tuple[Tensor, Tensor]:
    """(spikes (T, ...), membrane potentials u (T, ...)) of the exact-step LIF driven by
    ``c`` (T, ...): u bit for bit as ``fused._forward_torch`` and ``lif_sequence`` record it."""
    lib, T = _library(), c.shape[0]
    c, ts = _time_major(c)
    n = c[0].numel()
    out = torch.empty(c.shape, dtype=c.dtype)
    u = torch.empty(c.shape, dtype=c.dtype)
    fn = getattr(lib, f"lif_forward_membrane_{_SUFFIX[c.dtype]}")
    if fn.argtypes is None:
        ptr, i64, ct = ctypes.c_void_p, ctypes.c_int64, _CTYPES[c.dtype]
        fn.argtypes = [ptr, i64, ptr, ptr, i64, i64, ct, ct, ctypes.c_int, ctypes.c_int]
    fn(_ptr(c), ts, _ptr(out), _ptr(u), T, n, lam, v_th, int(hard), torch.get_num_threads())
    return out, u


# ------------------------------------------- ASGL's dual-mode LIF with tdBN and pooling
def asgl_pool_forward(z: Tensor, coef: Tensor | None, mode: int, lay: PlaneLayout, div: float, mul: float,
                      lam: float, v_th: float, hard: bool, alpha: float, p: float, keys: Tensor | None,
                      keep_x: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(pooled values (T, P, H // kh, W // kw), the LIF's values s (T, P, H, W), x if ``keep_x``)
    of ``pool_forward``'s run with ASGL's dual-mode spike as ``asgl_forward`` computes it
    (``keys`` as there: the uniforms of neuron i = (plane, h, w) flattened at step t);
    the windows' values summed and divided as torch's CPU ``avg_pool2d`` does."""
    dmode = DUAL_MODE_SMOOTH if p <= 0.0 else DUAL_MODE_STEP if p >= 1.0 else DUAL_MODE_MIXED
    keys = _mask_keys(keys, dmode, lay.T, "asgl_pool_forward", p)
    z, ts = _time_major(z)
    s = torch.empty(lay.T, lay.P, lay.H, lay.W, dtype=z.dtype)
    x = torch.empty(lay.T, lay.P, lay.H, lay.W, dtype=z.dtype) if keep_x else None
    pooled = torch.empty(lay.T, lay.P, lay.H // lay.kh, lay.W // lay.kw, dtype=z.dtype)
    getattr(_library(), f"asgl_pool_forward_{_SUFFIX[z.dtype]}")(
        _ptr(z), ts, _ptr(coef), lay.C, mode, _ptr(pooled), _ptr(x), _ptr(keys), _ptr(s), lay.T, lay.P, lay.H, lay.W, lay.kh,
        lay.kw, div, mul, lam, v_th, int(hard), alpha, p, dmode, torch.get_num_threads())
    return pooled, s, x


def asgl_pool_backward(gp: Tensor, x: Tensor, s: Tensor, alpha: float, z: Tensor | None, coef: Tensor | None,
                       mode: int, lay: PlaneLayout, div: float, mul: float, lam: float, v_th: float, hard: bool,
                       need_alpha: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(gradient of c (T, P, H, W), of alpha (0-dim) or None, per-plane sums (P, 2) of
    (gc, gc * xn) in float64 or None) of ``asgl_pool_forward``'s LIF given ``gp``, the
    pooled values' gradient: ``asgl_backward``'s numbers on ``avg_pool``'s spread gradient,
    and ``pool_backward``'s sums. ``x`` is overwritten by the gradient of c."""
    gp = gp.to(x.dtype).contiguous()
    zt, zts = _time_major(z) if z is not None else (None, 0)
    threads = torch.get_num_threads()
    sums = torch.zeros(lay.P, 2, dtype=torch.float64) if mode else None
    gbuf = torch.empty(threads, lay.T * (lay.H // lay.kh) * (lay.W // lay.kw) + 1, dtype=x.dtype)
    window = _windows(lay)
    gpar = torch.empty_like(x) if need_alpha else None  # gs * dp, summed below as torch sums it
    # -lam and -v_th*lam are the torch loop's scalars, rounded to x's type as torch does
    getattr(_library(), f"asgl_pool_backward_{_SUFFIX[x.dtype]}")(
        _ptr(gp), _ptr(x), _ptr(s), _ptr(x), _ptr(gpar), _ptr(zt), zts, _ptr(coef), lay.C, mode, _ptr(sums),
        _ptr(gbuf), _ptr(window), lay.T, lay.P, lay.H, lay.W, lay.kh, lay.kw, div, mul, lam, v_th, -lam,
        -v_th * lam, int(hard), alpha, threads)
    return x, (gpar.sum() if need_alpha else None), sums
