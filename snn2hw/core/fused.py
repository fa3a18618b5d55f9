"""The whole LIF time loop as one autograd Function with a hand-written BPTT.

Same numbers as ``lif_sequence`` with a surrogate spike (the reference the tests
compare against), less work and memory: the forward keeps no autograd graph and
no per-step tensors, only the surrogate's input ``x[t] = u[t] - V_th`` (spikes
are ``x > 0``), or for currents broadcast over T just their one frame, from
which backward recomputes x; a strategy whose spikes are random also keeps
them. The backward runs the recurrence on whole (T, ...) tensors.

Backward (``g[t] = shape.grad(x[t], p)``, ``go`` the gradient of the spikes,
``gu`` that of u, the reset term's gradient included as in the plain loop):

    hard:  gs[t] = go[t] - lam * u[t] * gu[t+1]
           gu[t] = gs[t] * g[t] + lam * (1 - s[t]) * gu[t+1]
    soft:  gs[t] = go[t] - lam * V_th * gu[t+1]
           gu[t] = gs[t] * g[t] + lam * gu[t+1]

so ``gu[t] = go[t] g[t] + k[t] gu[t+1]`` with ``k = lam (1 - s) - lam u g``
(hard) or ``lam (1 - V_th g)`` (soft): one multiply-add per step. The current's
gradient is ``gu``; the shape parameter's is ``sum gs * shape.grad_param(x, p)``.

A compiled kernel (``snn2hw/core/_lif_kernel.c``, built by ``scripts/setup``)
runs both loops in one pass over memory when it is present; without it the
vectorised torch loop below gives the same result. ASGL's dual-mode spike
(``DualModeValue``, non-binary s) has its own compiled loops, which round as the
torch loop does: a run with the kernel is the run without it, bit for bit (on
CPUs where torch's addcmul is a fused multiply-add: AVX2 and up).
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from . import _kernel
from .neuron import LIFParams, lif_sequence
from .surrogate import AsglRect, SurrogateShape, Triangle, spike

ValueFn = Callable[[Tensor], Tensor]
_STEP = Triangle()  # counted_lif's surrogate: unused, no gradient is taken
_RECT = AsglRect()  # DualModeValue's smoothing (its width is the value's own alpha)


class FusedStrategy(Protocol):
    """What a ``LIF.spike_strategy`` offers to run inside the fused loop.

    ``fused_value`` maps ``x = u - V_th`` to the forward spike value (no
    gradient; may be random, e.g. ASGL's mask), or is None for the exact step;
    ``fused_shape`` gives the local derivatives ``grad(x, p) = ds/dx`` and
    ``grad_param(x, p) = ds/dp`` for the parameter ``fused_param`` (a tensor,
    possibly computed from a Parameter: its gradient flows back through it).
    A strategy without these attributes runs the plain loop (``lif_sequence``).
    """

    fused_shape: SurrogateShape
    fused_param: Tensor
    fused_value: ValueFn | None


@dataclass(frozen=True, eq=False)
class DualModeValue:
    """ASGL's dual-mode spike value, a ``ValueFn`` the compiled kernel also runs whole.

    ``H_alpha(x) + m (H(x) - H_alpha(x))`` with ``H_alpha = clip(x/alpha + 1/2, 0, 1)``
    (AsglRect's primitive) and ``m = r < p``, r ~ U[0, 1) the ``counter_uniforms`` of one
    key per call drawn from the global torch RNG (no draw for p <= 0: H_alpha, or p >= 1:
    H). Called per step it is the torch loop's value; ``fused_lif`` instead draws all T
    steps' keys at once (``dual_mode_keys``: the same keys as T per-step draws on CPU) and
    the kernel makes the same uniforms itself.
    """

    alpha: Tensor  # the width, 0-dim, already clamped by the caller; no gradient
    p: float

    def __call__(self, x: Tensor) -> Tensor:
        # float arithmetic only (bool masks and ``where`` cost more on CPU), exact:
        # H - H_alpha is 1 - H_alpha with H_alpha >= 1/2 (Sterbenz) or -H_alpha, so
        # m = 1 gives H itself; m = max(sign(p - r), 0) is r < p; H = max(sign x, 0)
        h_alpha = _RECT.primitive(x, self.alpha)
        if self.p <= 0.0:
            return h_alpha
        h = x.sign().clamp_min_(0.0)
        if self.p >= 1.0:
            return h
        m = step_uniforms(x).neg_().add_(self.p).sign_().clamp_min_(0.0)
        return h.sub_(h_alpha).mul_(m).add_(h_alpha)


def _dual_mode_forward(c: Tensor, lam: float, v_th: float, hard: bool, value_fn: ValueFn | None,
                       keep_x: bool) -> tuple[Tensor, Tensor | None] | None:
    """(spike values, x if asked) of a ``DualModeValue`` from the compiled kernel, with
    the torch loop's random draws; None where the kernel does not run it."""
    if not (isinstance(value_fn, DualModeValue) and value_fn.alpha.dim() == 0 and _kernel.available(c)):
        return None
    p = value_fn.p
    return _kernel.asgl_forward(c, lam, v_th, hard, float(value_fn.alpha), p, dual_mode_keys(c.shape[0], p), keep_x)


# ---- ASGL's mask uniforms: counter-based, keyed per step (the kernel's "uniform") ----
_GOLDEN, _MIX1, _MIX2 = (k - (1 << 64) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def counter_uniforms(key: int, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """U[0, 1) values 0..n-1 of the stream keyed by ``key``, as the kernel makes them
    (``uniform_f32/f64``): SplitMix64's output function of ``key + (i + 1) * golden``
    (int64 arithmetic wraps as uint64 does), the top 24 bits over 2^24 (53 over 2^53 in
    float64). Each value depends on (key, i) only: a step's uniforms are the same made
    at once, in chunks, or by the kernel."""
    z = torch.arange(1, n + 1, dtype=torch.int64, device=device).mul_(_GOLDEN).add_(key)
    z = (z ^ _shift_right(z, 30)).mul_(_MIX1)
    z = (z ^ _shift_right(z, 27)).mul_(_MIX2)
    z = z ^ _shift_right(z, 31)
    if dtype == torch.float64:
        return _shift_right(z, 11).to(dtype).mul_(2.0 ** -53)
    return _shift_right(z, 40).to(dtype).mul_(2.0 ** -24)


def dual_mode_keys(steps: int, p: float) -> Tensor | None:
    """The keys of a dual-mode pass over ``steps`` steps (int64, one per step, from the
    global torch RNG: the same numbers as one draw per step), none where p <= 0 or p >= 1
    (no mask is drawn)."""
    return torch.empty(steps, dtype=torch.int64).random_() if 0.0 < p < 1.0 else None


def step_uniforms(x: Tensor) -> Tensor:
    """One step's mask uniforms in x's shape, dtype and device: one key drawn from the
    generator of x's device, its stream."""
    key = int(torch.empty((), dtype=torch.int64, device=x.device).random_())
    return counter_uniforms(key, x.numel(), x.dtype, x.device).view(x.shape)


def _forward_torch(c: Tensor, lam: float, v_th: float, hard: bool, value_fn: ValueFn | None,
                   keep_u: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """x = u - V_th (T, ...), for a value_fn its spike values, and u if ``keep_u``.

    The update reproduces lif_step's rounding exactly: lam*u*(1-s) and
    lam*(u - V_th*s) are lam*u or 0, and lam*(u - V_th) or lam*u, for binary s.
    """
    x = torch.empty(c.shape, dtype=c.dtype, device=c.device)
    s_val = torch.empty_like(x) if value_fn is not None else None
    u_all = torch.empty_like(x) if keep_u else None
    u = c[0].clone()
    prev: Tensor | None = None  # spikes of the last step: bool (Heaviside) or values
    for t in range(c.shape[0]):
        if t > 0:
            if value_fn is None:
                if hard:
                    u = (lam * u).masked_fill_(prev, 0.0)
                else:
                    u = torch.where(prev, u - v_th, u).mul_(lam)
            else:  # non-binary spikes: the update as lif_step writes it
                u = lam * u * (1.0 - prev) if hard else lam * (u - v_th * prev)
            u = u.add_(c[t])
        if u_all is not None:
            u_all[t] = u
        xt = torch.sub(u, v_th, out=x[t])
        prev = xt > 0 if value_fn is None else s_val[t].copy_(value_fn(xt))
    return x, s_val, u_all


def _heaviside_forward(c: Tensor, lam: float, v_th: float, hard: bool, spikes: bool,
                       keep_x: bool) -> tuple[Tensor | None, Tensor | None]:
    """(spikes if asked, x if asked) for the exact step: compiled kernel or torch loop."""
    if _kernel.available(c):
        return _kernel.forward(c, lam, v_th, hard, spikes=spikes, keep_x=keep_x)
    x = _forward_torch(c, lam, v_th, hard, None)[0]
    return ((x > 0).to(c.dtype) if spikes else None), x


def _backward_torch(go: Tensor, x: Tensor, s: Tensor, g: Tensor, lam: float, v_th: float,
                    hard: bool, gext: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Return (gu, gs): the gradients of the membrane and of the spikes, (T, ...).

    ``g`` (the surrogate's values) is overwritten. ``gext`` is a gradient reaching u from
    outside (a loss on recorded membranes)."""
    if hard:
        u = x + v_th
        k = torch.mul(u, g).neg_().add_(1.0 - s).mul_(lam)
        b = u.mul_(-lam)
    else:
        k = torch.mul(g, -v_th * lam).add_(lam)
        b = None
    # g is the surrogate's fresh tensor, not read again: the gradient takes its memory
    gu = g.mul_(go) if g.shape == go.shape and g.is_contiguous() else torch.mul(go, g)
    if gext is not None:
        gu.add_(gext)
    for t in range(x.shape[0] - 2, -1, -1):
        gu[t].addcmul_(k[t], gu[t + 1])
    gs = go.clone()
    if hard:
        gs[:-1].addcmul_(b[:-1], gu[1:])
    else:
        gs[:-1].add_(gu[1:], alpha=-lam * v_th)
    return gu, gs


class FusedLIF(torch.autograd.Function):
    """``lif_sequence(c, LIFParams(lam, v_th, reset), surrogate spike, membrane)`` fused.

    With the exact step (no ``value_fn``) only x is kept, or, when the
    currents are one frame broadcast over T (a direct-encoded layer), only that
    frame, from which backward recomputes x (one cheap pass, T times less memory). A ``value_fn`` (possibly random) keeps x and
    its spike values instead. With ``membrane`` the potentials u (T, ...) are a
    second, differentiable output (PSG's PDA loss reads them); backward then
    takes x = u - V_th from that output, exactly as the forward computed it.
    """

    @staticmethod
    def forward(ctx, c: Tensor, p: Tensor, lam: float, v_th: float, reset: str,  # type: ignore[override]
                shape: SurrogateShape, value_fn: ValueFn | None, membrane: bool):
        hard = reset == "hard"
        ctx.consts = (lam, v_th, hard, shape)
        ctx.binary_spikes = value_fn is None and not membrane  # read by compact_spikes' pack hook
        if value_fn is None and not membrane:
            if c.shape[0] > 1 and c.stride(0) == 0:  # one frame broadcast over T: keep it
                spikes, _ = _heaviside_forward(c, lam, v_th, hard, spikes=True, keep_x=False)
                ctx.save_for_backward(c, p, None, None, None)
            else:  # x costs what c would, and saves backward a pass
                spikes, x = _heaviside_forward(c, lam, v_th, hard, spikes=True, keep_x=True)
                ctx.save_for_backward(None, p, x, None, None)
            return spikes
        compiled = None if membrane else _dual_mode_forward(c, lam, v_th, hard, value_fn, keep_x=True)
        if compiled is not None:
            s_val, x = compiled
            ctx.save_for_backward(None, p, x, s_val, None)
            return s_val
        if value_fn is None and _kernel.forward_membrane_available(c):  # u recorded for PDA
            spikes, u_all = _kernel.forward_membrane(c, lam, v_th, hard)
            ctx.save_for_backward(None, p, None, None, u_all)
            return spikes, u_all
        x, s_val, u_all = _forward_torch(c, lam, v_th, hard, value_fn, keep_u=membrane)
        spikes = s_val if value_fn is not None else (x > 0).to(c.dtype)
        ctx.save_for_backward(None, p, None if membrane else x, s_val, u_all)
        return (spikes, u_all) if membrane else spikes

    @staticmethod
    def backward(ctx, go: Tensor, gext: Tensor | None = None):  # type: ignore[override]
        c, p, x, s_val, u_all = ctx.saved_tensors
        lam, v_th, hard, shape = ctx.consts
        fresh = x is None  # x made here may be overwritten; a saved x may be needed again
        if u_all is not None:
            x = u_all - v_th
        elif x is None:
            _, x = _heaviside_forward(c, lam, v_th, hard, spikes=False, keep_x=True)
        need_p = ctx.needs_input_grad[1]
        if s_val is None and _kernel.available(x):
            gu, grad_p = _kernel.backward(go, x, p, shape, lam, v_th, hard, need_p, gext, overwrite=fresh)
        elif s_val is not None and isinstance(shape, AsglRect) and p.dim() == 0 and gext is None and _kernel.available(x):
            gu, grad_p = _kernel.asgl_backward(go, x, s_val, float(p), lam, v_th, hard, need_p)
        else:
            s = s_val if s_val is not None else (x > 0).to(x.dtype)
            gu, gs = _backward_torch(go.contiguous(), x, s, shape.grad(x, p), lam, v_th, hard, gext)
            grad_p = None
            if need_p:
                gp = gs * shape.grad_param(x, p)
                grad_p = gp.sum() if p.dim() == 0 else gp.sum_to_size(p.shape)
        return gu if ctx.needs_input_grad[0] else None, grad_p, None, None, None, None, None, None


class _CompactSpikes:
    """A saved spike tensor as bool, and the float dtype its unpacking gives back."""

    __slots__ = ("bits", "dtype")

    def __init__(self, bits: Tensor, dtype: torch.dtype) -> None:
        self.bits, self.dtype = bits, dtype


class _LateBound:
    """A saved tensor that backward reads as ``read(tensor)`` gives it when backward runs."""

    __slots__ = ("tensor", "read")

    def __init__(self, tensor: Tensor, read: Callable[[Tensor], Tensor]) -> None:
        self.tensor, self.read = tensor, read


# a tensor, by id, that backward reads late: what the callable gives when backward runs
LateReads = dict[int, Callable[[Tensor], Tensor]]


def _pack_saved(t: Tensor, late: LateReads | None = None) -> Tensor | _CompactSpikes | _LateBound:
    if late:
        read = late.get(id(t))
        if read is not None:
            return _LateBound(t, read)
    base = t if t._base is None else t._base
    # version 0: not changed in place since the exact step wrote 0.0 / 1.0 (autograd's own
    # check would only see changes made after saving)
    if getattr(base.grad_fn, "binary_spikes", False) and base._version == 0:
        return _CompactSpikes(t.to(torch.bool), t.dtype)
    return t


def _unpack_saved(saved: Tensor | _CompactSpikes | _LateBound) -> Tensor:
    if isinstance(saved, _LateBound):
        return saved.read(saved.tensor)
    if not isinstance(saved, _CompactSpikes):
        return saved
    return saved.bits.view(torch.uint8).to(saved.dtype)  # the same 0/1 bytes; torch converts uint8 faster


_REUSED_GRAPH: contextvars.ContextVar[bool] = contextvars.ContextVar("snn2hw_reused_graph", default=False)


@contextmanager
def reused_graph() -> Iterator[None]:
    """Forward passes recorded inside will be run backward more than once (``retain_graph``):
    a fused pass whose backward overwrites a saved tensor in place (to spare a copy of its
    size: ``fusion.FusedBNLIFPool``'s x) then works on a copy. Outside, such a pass refuses a
    second backward with an error (``backward_once``) instead of reading what the first left."""
    token = _REUSED_GRAPH.set(True)
    try:
        yield
    finally:
        _REUSED_GRAPH.reset(token)


def graph_reused() -> bool:
    """Whether the forward being recorded runs under ``reused_graph``."""
    return _REUSED_GRAPH.get()


def backward_once(ctx: object, name: str) -> None:
    """In a backward that overwrites its saved tensors (``ctx.reused`` false): raise on the second call."""
    if getattr(ctx, "spent", False):
        raise RuntimeError(f"{name}: backward ran twice through one recorded forward, but the first overwrote "
                           "the saved values the second needs (in place, to save memory); record the forward "
                           "under snn2hw.core.fused.reused_graph() to run backward more than once")
    ctx.spent = True  # type: ignore[attr-defined]


def compact_spikes(late: LateReads | None = None) -> torch.autograd.graph.saved_tensors_hooks:
    """Context manager: a tensor that a layer saves for backward and that is the output of
    an exact-step ``FusedLIF`` (or a view of it, unchanged since) is kept as bool and turned
    back into the same float values when backward reads it: exact, and a synapse's saved
    input spikes cost 1 byte per value instead of 4 (float32) while the float spikes are
    freed once the next layer ran. ``late``: tensors (by id, as saved) that backward reads
    as their callable gives them when it runs (Dspike's probes of several b from one
    forward). Any other saved tensor is kept as is."""
    if not late:
        return torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved)
    return torch.autograd.graph.saved_tensors_hooks(lambda t: _pack_saved(t, late), _unpack_saved)


def _plain_spike(shape: SurrogateShape, p: Tensor, value_fn: ValueFn | None) -> Callable[[Tensor], Tensor]:
    """The spike function ``fused_lif`` stands for, for the plain loop: forward ``value_fn``
    (or the step), backward the shape's derivatives (through its primitive, whose x- and
    p-derivatives are ``grad`` and ``grad_param``)."""
    if value_fn is None:
        return lambda x: spike(x, shape, p)

    def fn(x: Tensor) -> Tensor:
        smooth = shape.primitive(x, p)
        return value_fn(x).detach() + (smooth - smooth.detach())
    return fn


def fused_lif(currents: Tensor, p: Tensor, lam: float, v_th: float, reset: str,
              shape: SurrogateShape, value_fn: ValueFn | None = None,
              membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Spikes (T, ...) of LIF neurons driven by ``currents`` (T, ...), and with
    ``membrane`` also their potentials u (T, ...): ``(spikes, u)``.

    Equal to ``lif_sequence(currents, LIFParams(lam, v_th, reset), spike_fn, membrane)``
    where ``spike_fn`` has forward ``value_fn`` (default: strict Heaviside) and
    backward ``shape.grad(x, p)`` in x and ``shape.grad_param(x, p)`` in p;
    gradients flow to ``currents`` and ``p``.
    """
    if reset == "soft_nodecay":  # GSG's reset: no fused BPTT, the plain loop with the same spike
        s, u = lif_sequence(currents, LIFParams(lam, v_th, reset), _plain_spike(shape, p, value_fn), membrane)
        return (s, u) if membrane else s
    if reset not in ("hard", "soft"):
        raise ValueError(f"reset must be 'hard' or 'soft', got {reset!r}")
    lam, v_th, hard = float(lam), float(v_th), reset == "hard"
    if torch.is_grad_enabled() and (currents.requires_grad or p.requires_grad):
        return FusedLIF.apply(currents, p, lam, v_th, reset, shape, value_fn, membrane)
    # inference (evaluate, export checks, noise sweeps, probes): nothing kept for backward
    if value_fn is None and not membrane:
        return _heaviside_forward(currents, lam, v_th, hard, True, False)[0]
    compiled = None if membrane else _dual_mode_forward(currents, lam, v_th, hard, value_fn, keep_x=False)
    if compiled is not None:
        return compiled[0]
    x, s_val, u_all = _forward_torch(currents, lam, v_th, hard, value_fn, keep_u=membrane)
    spikes = s_val if value_fn is not None else (x > 0).to(currents.dtype)
    return (spikes, u_all) if membrane else spikes


def neuron_counts(spikes: Tensor, u: Tensor, units: int) -> tuple[Tensor, Tensor]:
    """hwsim's counts of a LIF layer's run, ``spikes`` and ``u`` (T, ..., ``units``): the
    spikes of each of the trailing ``units`` summed over T and the other axes, and the
    number of (t >= 1, neuron) at which the membrane changed, ``u[t] != u[t-1]`` (int64,
    0-dim): what the compiled kernel counts in its own pass (``_kernel.forward_counted``)."""
    changes = torch.count_nonzero(u[1:] != u[:-1]) if len(u) > 1 else torch.zeros((), dtype=torch.int64)
    return spikes.reshape(-1, units).sum(0), changes


def counted_lif(currents: Tensor, lam: float, v_th: float, reset: str, units: int
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Inference: ``(spikes, *neuron_counts(spikes, u, units))`` of the exact (Heaviside) LIF
    driven by ``currents`` (T, ..., ``units``). The compiled kernel counts in its forward
    pass (nothing of the neurons' size is kept for it); else the torch loop records u."""
    if reset in ("hard", "soft") and _kernel.available(currents):
        return _kernel.forward_counted(currents, float(lam), float(v_th), reset == "hard", units)
    with torch.no_grad():
        s, u = fused_lif(currents, torch.zeros(()), lam, v_th, reset, _STEP, membrane=True)
    return (s, *neuron_counts(s, u, units))
