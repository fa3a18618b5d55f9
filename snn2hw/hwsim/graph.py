"""The surrogate-free network as a chip runs it, with a chip axis in the batch.

``lower(model)`` turns a :class:`SpikingNetwork` into a flat list of ops:
``Synapse`` (Linear/Conv, tdBN folded into its weight and bias), ``Neuron``
(the LIF constants; a CUBA layer is a Neuron with its synaptic decay ``alpha``),
``Recurrent`` (a neuron layer with ``W_rec s[t-1]``, stepped one step at a time),
``Stateless`` (pooling, flatten) and ``Residual``. A dry
run records every op's input and output feature shapes.

``run(net, x, ...)`` evaluates the lowered network for C simulated chips at
once. Activations are ``(T, B, C, *features)``: the chip axis sits next to the
batch, so a layer whose weights are the same on every chip is one ordinary
call over ``T*B*C`` rows, and a layer with per-chip weights is one batched
matrix product (``torch.baddbmm``) or one grouped convolution (``groups = C``).
Neurons call :func:`snn2hw.core.neuron.lif_sequence` / ``lif_step`` with
per-chip, per-neuron ``lam`` and ``V_th`` tensors: the LIF update is not
re-written here. A target with its own arithmetic (Xylo, ``hwsim/xylo.py``) passes
its neuron step, readout and input grid in ``ChipParams``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.encoders import encode
from ..core.fused import counted_lif, fused_lif, neuron_counts
from ..core.layers import CUBA, LIF, RecurrentSpiking, ResidualBlock
from ..core.neuron import (LIFParams, LIFState, cuba_initial_state, initial_state, lif_sequence, lif_step,
                           synaptic_current)
from ..core.surrogate import Triangle, heaviside
from ..errors import ExportError
from ..models.network import SpikingNetwork
from ..models.walk import Rule, Step, walk
from .pooling import lif_pool, pool_args


@dataclass
class Synapse:
    """``y = W x + b`` (Linear) or ``y = conv(x, W) + b``; tdBN already folded in."""

    name: str
    kind: str                      # "linear" | "conv1d" | "conv2d"
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    def conv_args(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


@dataclass
class Neuron:
    """A LIF layer: nominal constants and the synapse whose grid its state uses."""

    name: str
    lam: float
    v_th: float
    reset: str
    source: str = ""               # name of the synapse feeding it (quantisation grid)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    alpha: float = 0.0             # CUBA: i <- alpha i + c before the LIF; 0: a LIF (exactly)
    cuba: bool = False             # a synaptic current state is updated every step


@dataclass
class Recurrent:
    """``neuron(c[t] + W_rec s[t-1])``, ``s[0] = 0``: the recurrent weights are a Synapse
    (no bias) whose input is the layer's own delivered spikes of the step before."""

    name: str
    synapse: Synapse
    neuron: Neuron
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


@dataclass
class Stateless:
    """Pooling, flatten, adaptive pooling: the same on every chip, no parameters."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


@dataclass
class Residual:
    """``out(body(x) + shortcut(x))``; an empty shortcut is the identity."""

    name: str
    body: list
    shortcut: list
    out: Neuron
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()




@dataclass
class LoweredNet:
    ops: list
    input_shape: tuple[int, ...]
    timesteps: int
    # 'rate' | 'latency': the host encodes a static frame into events before the chip (run())
    encoding: str = "direct"
    # (min, max) of the analog input the model was trained on; a target's input grid follows it
    input_range: tuple[float, float] | None = None
    # what reports derive from the weights alone, keyed on the weights' versions (energy.py);
    # not an init field, so ``to`` and ``replace`` start a copy with an empty one
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def walk(self) -> list:
        """Every op in execution order, residual bodies and shortcuts included."""
        out: list = []

        def visit(ops: list) -> None:
            for op in ops:
                if isinstance(op, Residual):
                    visit(op.body)
                    visit(op.shortcut)
                    out.append(op.out)
                elif isinstance(op, Recurrent):
                    out.extend((op.synapse, op.neuron))
                else:
                    out.append(op)

        visit(self.ops)
        return out

    def synapses(self) -> list[Synapse]:
        return [op for op in self.walk() if isinstance(op, Synapse)]

    def neurons(self) -> list[Neuron]:
        return [op for op in self.walk() if isinstance(op, Neuron)]

    def to(self, device: torch.device | str) -> "LoweredNet":
        """The same network with its weights on ``device`` (a copy; ``self`` is unchanged)."""
        def move(ops: list) -> list:
            out = []
            for op in ops:
                if isinstance(op, Synapse):
                    op = replace(op, weight=op.weight.to(device),
                                 bias=None if op.bias is None else op.bias.to(device))
                elif isinstance(op, Stateless):
                    op = replace(op, module=op.module.to(device))
                elif isinstance(op, Residual):
                    op = replace(op, body=move(op.body), shortcut=move(op.shortcut))
                out.append(op)
            return out

        return replace(self, ops=move(self.ops))


def _synapse(step: Step, _: None) -> Synapse:
    m, name = step.module, step.name
    if isinstance(m, nn.Linear):
        return Synapse(name, "linear", *step.folded())
    kind = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}.get(type(m))
    if kind is None or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ExportError(f"{name}: {type(m).__name__} with padding {m.padding!r} is not supported "
                          "by hwsim; use Linear, Conv1d or Conv2d with zero, numeric padding")
    w, b = step.folded()
    return Synapse(name, kind, w, b, tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups)


def _neuron(step: Step, _: None) -> Neuron:
    m = step.module
    return Neuron(step.name, m.lam, m.v_th, m.reset)


def _neuron_op(m: nn.Module, name: str) -> Neuron:
    """A LIF or CUBA module as a Neuron op."""
    if isinstance(m, CUBA):
        return Neuron(name, m.lif.lam, m.lif.v_th, m.lif.reset, alpha=float(m.alpha), cuba=True)
    return Neuron(name, m.lam, m.v_th, m.reset)


def _cuba(step: Step, _: None) -> Neuron:
    return _neuron_op(step.module, step.name)


def _recurrent(step: Step, _: None) -> Recurrent:
    m = step.module
    w = m.recurrent.weight.detach().clone()
    return Recurrent(step.name, Synapse(f"{step.name}.recurrent", "linear", w, None),
                     _neuron_op(m.neuron, f"{step.name}.neuron"))


def _residual(step: Step, _: None) -> Residual:
    return Residual(step.name, step.walk_inside("body", None), step.walk_inside("shortcut", None),
                    _neuron_op(step.module.out, f"{step.name}.out"))


def _stateless(step: Step, _: None) -> Stateless:
    """Any other layer runs as is on every chip, if it has no parameters and no state."""
    m = step.module
    if getattr(m, "temporal", False) or any(True for _ in m.parameters()):
        raise step.unsupported("other layers run only if they have no parameters and no state")
    return Stateless(step.name, m)


# torch layer type -> rule making its op (tdBN is folded into the synapse by the walk).
LOWERING: dict[type, Rule] = {
    nn.Linear: _synapse,
    nn.Conv1d: _synapse,
    nn.Conv2d: _synapse,
    LIF: _neuron,
    CUBA: _cuba,
    RecurrentSpiking: _recurrent,
    ResidualBlock: _residual,
    nn.Module: _stateless,
}


def _link_sources(ops: list, last: str = "") -> str:
    """Record, for each neuron, the synapse whose output grid it integrates."""
    for op in ops:
        if isinstance(op, Synapse):
            last = op.name
        elif isinstance(op, Neuron):
            op.source = last
        elif isinstance(op, Recurrent):
            op.neuron.source = last
        elif isinstance(op, Residual):
            op.out.source = _link_sources(op.body, last)
            _link_sources(op.shortcut, last)
            last = op.out.source
    return last


def lower(model) -> LoweredNet:
    """The eval-mode, surrogate-free network as a list of ops with tdBN folded."""
    ops = walk(model.layers, LOWERING, rules_name="snn2hw.hwsim.graph.LOWERING")
    _link_sources(ops)
    net = LoweredNet(ops, tuple(model.config.input_shape), model.timesteps,
                     getattr(model.config, "encoding", "direct"))
    device = net.synapses()[0].weight.device if net.synapses() else torch.device("cpu")
    with torch.inference_mode():  # dry run on the model's device: record shapes
        run(net, torch.zeros(1, *net.input_shape, device=device), record_shapes=True)
    return net


# ---------------------------------------------------------------------------- chips


@dataclass
class ChipParams:
    """Per-chip parameters (leading axis C); ``None`` means the nominal value on every chip."""

    chips: int = 1
    weights: dict[str, tuple[Tensor | None, Tensor | None]] = field(default_factory=dict)
    lam: dict[str, Tensor] = field(default_factory=dict)
    v_th: dict[str, Tensor] = field(default_factory=dict)
    alive: dict[str, Tensor] = field(default_factory=dict)   # bool (C, *features)
    state_q: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    # a target's own arithmetic (hwsim/xylo.py): neuron name -> its step (c, state, spike_fn) run
    # instead of the float one; readout synapse name -> (T, ..., K) currents to logits; input grid
    steps: dict[str, Callable] = field(default_factory=dict)
    readout: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    input_q: Callable[[Tensor], Tensor] | None = None

    def to(self, device: torch.device | str) -> "ChipParams":
        """The same chips with their parameters on ``device`` (drawn on the CPU, so a seed
        gives the same chips on every device)."""
        def move(d: dict) -> dict:
            return {k: (tuple(None if t is None else t.to(device) for t in v) if isinstance(v, tuple)
                        else v.to(device)) for k, v in d.items()}

        return replace(self, weights=move(self.weights), lam=move(self.lam), v_th=move(self.v_th),
                       alive=move(self.alive))


@dataclass
class RunNoise:
    """Noise drawn afresh at every step: thermal current noise, lost spikes."""

    thermal: float = 0.0           # std of the added current, in units of the layer's nominal V_th
    spike_loss: float = 0.0        # probability that an emitted spike is not delivered
    generator: torch.Generator | None = None


class Observer(Protocol):
    """Sees every synapse's input and every neuron layer's delivered spikes (T, B, C, ...);
    an observer whose ``wants_counts`` is True also gets ``fused.neuron_counts``: the
    delivered spikes per unit (flattened features, summed over T, B and C) and how many
    times (t >= 1, neuron) the membrane u changed (the compiled kernel counts them in
    its own pass). An observer whose ``reads_spikes`` is False uses only the shape and
    identity of ``spikes``: a LIF layer may then run fused with the avg/sum pooling after it
    (``pooling.py``) and ``spikes`` is a zero-stride stand-in of their shape."""

    wants_counts: bool

    def synapse(self, op: Synapse, x: Tensor, nlead: int) -> None: ...

    def neuron(self, op: Neuron, spikes: Tensor, counts: tuple[Tensor, Tensor] | None = None) -> None: ...


def _shared(fn: Callable[[Tensor], Tensor], x: Tensor, nlead: int) -> Tensor:
    lead = x.shape[:nlead]
    y = fn(x.reshape(-1, *x.shape[nlead:]))
    return y.reshape(*lead, *y.shape[1:])


_CONV = {"conv1d": F.conv1d, "conv2d": F.conv2d}
# fused_lif's surrogate arguments; unused without gradients (the exact step runs)
_NO_PARAM, _EXACT = torch.zeros(()), Triangle()


def _apply_synapse(op: Synapse, x: Tensor, nlead: int, chips: ChipParams) -> Tensor:
    w, b = chips.weights.get(op.name, (None, None))
    if w is None:  # same weights on every chip: one ordinary call over all rows
        w0, b0 = op.weight, op.bias
        if op.kind == "linear":
            return _shared(lambda z: F.linear(z, w0, b0), x, nlead)
        conv = _CONV[op.kind]
        return _shared(lambda z: conv(z, w0, b0, groups=op.groups, **op.conv_args()), x, nlead)
    C = w.shape[0]
    lead = x.shape[:nlead]
    z = x.reshape(-1, C, *x.shape[nlead:])          # (N, C, *features)
    if op.kind == "linear":
        zt = z.transpose(0, 1)                      # (C, N, in)
        bias = b.unsqueeze(1) if b is not None else torch.zeros(C, 1, w.shape[1], dtype=w.dtype, device=w.device)
        y = torch.baddbmm(bias, zt, w.transpose(1, 2)).transpose(0, 1)
    else:                                           # grouped conv: chip c uses group c
        N = z.shape[0]
        y = _CONV[op.kind](z.reshape(N, -1, *z.shape[3:]), w.reshape(-1, *w.shape[2:]),
                           b.reshape(-1) if b is not None else None,
                           groups=C * op.groups, **op.conv_args())
        y = y.reshape(N, C, -1, *y.shape[2:])
    return y.reshape(*lead, *y.shape[2:])


def _apply_neuron(op: Neuron, c: Tensor, chips: ChipParams, noise: RunNoise,
                  observer: Observer | None = None) -> Tensor:
    """c: (T, B, C, *features) currents -> spikes delivered downstream (shown to ``observer``)."""
    if noise.thermal > 0:
        c = c + (noise.thermal * abs(op.v_th)) * torch.randn(
            c.shape, generator=noise.generator, dtype=c.dtype).to(c.device)  # drawn on the CPU: same on any device
    step = chips.steps.get(op.name)
    if op.cuba and step is None:
        c = synaptic_current(c, op.alpha)   # CUBA.forward's filter, the same numbers
    p = LIFParams(chips.lam.get(op.name, op.lam), chips.v_th.get(op.name, op.v_th), op.reset)
    q = chips.state_q.get(op.name)
    want_counts = getattr(observer, "wants_counts", False)
    counts = None
    if step is not None:  # the target's own step (states in its units), one step at a time
        state, out, us = cuba_initial_state(c[0]), [], []
        for ct in c:
            st, state = step(ct, state, heaviside)
            out.append(st)
            us.append(state.u)
        s, u = torch.stack(out), torch.stack(us)
    elif q is None and op.name not in chips.lam and op.name not in chips.v_th:
        # nominal constants: the fused loop (compiled kernel), the same numbers as lif_sequence
        if want_counts:
            s, *counts = counted_lif(c, op.lam, op.v_th, op.reset, math.prod(c.shape[3:]))
            u = None
        else:
            s, u = fused_lif(c, _NO_PARAM, op.lam, op.v_th, op.reset, _EXACT), None
    elif q is None:
        s, u = lif_sequence(c, p, record_membrane=want_counts)
    else:  # state held at finite precision between steps
        state, out, us = initial_state(c[0]), [], []
        for ct in c:
            st, state = lif_step(ct, state, p)
            state = LIFState(q(state.u), st)
            out.append(st)
            us.append(state.u)
        s, u = torch.stack(out), (torch.stack(us) if want_counts else None)
    if noise.spike_loss > 0:  # the neuron still resets; the event is lost on the way
        s = s * (torch.rand(s.shape, generator=noise.generator) >= noise.spike_loss).to(s.device, s.dtype)
    alive = chips.alive.get(op.name)
    if alive is not None:
        s = s * alive.to(s.dtype)
    if observer is not None and want_counts:
        units = math.prod(s.shape[3:])
        if u is not None:
            counts = neuron_counts(s, u, units)
        elif noise.spike_loss > 0 or alive is not None:  # count what is delivered
            counts = (s.reshape(-1, units).sum(0), counts[1])
        observer.neuron(op, s, tuple(counts))
    elif observer is not None:
        observer.neuron(op, s)
    return s


def _apply_recurrent(op: Recurrent, c: Tensor, chips: ChipParams, noise: RunNoise,
                     observer: Observer | None = None) -> Tensor:
    """c: (T, B, C, n) input currents -> delivered spikes, one step at a time: the recurrent
    current comes from the spikes delivered at t-1 (lost or dead ones reach no one), with
    ``RecurrentSpiking``'s arithmetic (one ``addmm``) where the weights are the same on every
    chip. The observer sees the neuron's spikes, then the recurrent synapse's input s[t-1]."""
    n, syn = op.neuron, op.synapse
    p = LIFParams(chips.lam.get(n.name, n.lam), chips.v_th.get(n.name, n.v_th), n.reset)
    q, alive = chips.state_q.get(n.name), chips.alive.get(n.name)
    w_chip, _ = chips.weights.get(syn.name, (None, None))
    w_t = syn.weight.t()
    step = chips.steps.get(n.name)
    state, i = (initial_state(c[0]) if step is None else cuba_initial_state(c[0])), torch.zeros_like(c[0])
    delivered, spikes, us = torch.zeros_like(c[0]), [], []
    want_counts = getattr(observer, "wants_counts", False)
    for ct in c:
        if w_chip is None:
            ct = torch.addmm(ct.reshape(-1, ct.shape[-1]), delivered.reshape(-1, ct.shape[-1]), w_t).reshape(ct.shape)
        else:
            ct = ct + _apply_synapse(syn, delivered, 2, chips)
        if noise.thermal > 0:
            ct = ct + (noise.thermal * abs(n.v_th)) * torch.randn(ct.shape, generator=noise.generator, dtype=ct.dtype)
        if step is not None:   # the target's own step: spike counts, its states
            s, state = step(ct, state, heaviside)
        else:
            if n.cuba:
                i = n.alpha * i + ct
                ct = i
            s, state = lif_step(ct, state, p)
        if q is not None:
            state = LIFState(q(state.u), s)
        if noise.spike_loss > 0:
            s = s * (torch.rand(s.shape, generator=noise.generator) >= noise.spike_loss).to(s.dtype)
        if alive is not None:
            s = s * alive.to(s.dtype)
        delivered = s
        spikes.append(s)
        us.append(state.u)
    s = torch.stack(spikes)
    if observer is not None:
        observer.neuron(n, s, neuron_counts(s, torch.stack(us), s[0, 0, 0].numel())) if want_counts else observer.neuron(n, s)
        observer.synapse(syn, torch.cat([torch.zeros_like(s[:1]), s[:-1]]), 3)
    return s


def _fused_pool(op: Neuron, nxt, x: Tensor, chips: ChipParams, noise: RunNoise,
                observer: Observer | None):
    """``pooling.pool_args`` where ``op`` and the pooling ``nxt`` may run as one op: the
    nominal exact LIF on every chip, no noise, an observer that needs no spike values."""
    if not isinstance(nxt, Stateless) or op.cuba or noise.thermal > 0 or noise.spike_loss > 0:
        return None
    if observer is not None and (not getattr(observer, "wants_counts", False)
                                 or getattr(observer, "reads_spikes", True)):
        return None
    if any(op.name in d for d in (chips.steps, chips.lam, chips.v_th, chips.state_q, chips.alive)):
        return None
    return pool_args(nxt.module, op.reset, x)


def _run_ops(ops: list, x: Tensor, nlead: int, T: int, chips: ChipParams, noise: RunNoise,
             observer: Observer | None, record: bool, outputs: bool = True) -> tuple[Tensor | None, int]:
    pooled_by: Neuron | None = None  # the neuron whose fused op already ran the next (pooling) op
    for i, op in enumerate(ops):
        if pooled_by is not None:
            pooled_by = None
            continue
        in_shape = tuple(x.shape[nlead:])
        if isinstance(op, Synapse):
            if observer is not None:
                observer.synapse(op, x, nlead)
            if not outputs and i + 1 == len(ops):  # its input is counted; its output read by no one
                return None, nlead
            x = _apply_synapse(op, x, nlead, chips)
            if op.name in chips.readout:
                x = chips.readout[op.name](x if nlead == 3 else x.unsqueeze(0).expand(T, *x.shape))
                nlead = 3
        elif isinstance(op, Stateless):
            x = _shared(op.module, x, nlead)
        else:
            if nlead == 2:  # static input reaches the first temporal op: direct encoding
                x, nlead = x.unsqueeze(0).expand(T, *x.shape), 3
            pool = (None if record or not isinstance(op, Neuron) or i + 1 == len(ops)
                    else _fused_pool(op, ops[i + 1], x, chips, noise, observer))
            if pool is not None:
                shape = x.shape
                x, counts = lif_pool(op.lam, op.v_th, op.reset, pool, x, observer is not None)
                if observer is not None:  # a stand-in of the spikes' shape (Observer)
                    observer.neuron(op, x.new_zeros(()).expand(shape), counts)
                pooled_by = op
            elif isinstance(op, Neuron):
                x = _apply_neuron(op, x, chips, noise, observer)
            elif isinstance(op, Recurrent):
                x = _apply_recurrent(op, x, chips, noise, observer)
                if record:
                    for sub in (op.synapse, op.neuron):
                        sub.in_shape = sub.out_shape = tuple(x.shape[3:])
            else:
                a, _ = _run_ops(op.body, x, 3, T, chips, noise, observer, record)
                b, _ = _run_ops(op.shortcut, x, 3, T, chips, noise, observer, record)
                if record:
                    op.out.in_shape = op.out.out_shape = tuple(a.shape[3:])
                x = _apply_neuron(op.out, a + b, chips, noise, observer)
        if record:
            op.in_shape, op.out_shape = in_shape, tuple(x.shape[nlead:])
    return x, nlead


def run(net: LoweredNet, x: Tensor, chips: ChipParams | None = None, noise: RunNoise | None = None,
        observer: Observer | None = None, record_shapes: bool = False, outputs: bool = True) -> Tensor | None:
    """Per-step readout currents ``(T, B, C, classes)`` of C chips on input ``x``.

    ``outputs=False`` (an observer that only counts): the last op, if a synapse, is shown
    to the observer but not applied, and nothing is returned (a small net's readout layer
    is a fifth of its inference).

    ``x`` is static ``(B, *input_shape)`` (direct encoding, the same frame at
    every step) or time-major ``(T, B, *input_shape)``. A static ``x`` of a rate- or
    latency-encoded network is encoded first, on the host, as the model does in eval
    (``SpikingNetwork.EVAL_ENCODING_SEED``): the chip sees binary events.
    """
    chips = chips or ChipParams()
    noise = noise or RunNoise()
    C, T = chips.chips, net.timesteps
    static = x.dim() == len(net.input_shape) + 1
    if static and net.encoding != "direct":
        generator = torch.Generator(device=x.device).manual_seed(SpikingNetwork.EVAL_ENCODING_SEED)
        x, static = encode(net.encoding, x, T, generator), False
    nlead = 2 if static else 3
    if chips.input_q is not None:
        x = chips.input_q(x)
    x = x.unsqueeze(nlead - 1).expand(*x.shape[:nlead - 1], C, *x.shape[nlead - 1:])
    y, nlead = _run_ops(net.ops, x, nlead, T, chips, noise, observer, record_shapes, outputs or record_shapes)
    if y is None:
        return None
    if nlead == 2:  # a network without temporal layers
        y = y.unsqueeze(0).expand(T, *y.shape)
    return y
