"""Thin torch modules over the functional core.

Tensors flow time-major, ``(T, B, ...)``. Stateless layers (synapses, tdBN,
pooling, flatten) see ``T*B`` as one batch, so a convolution runs once over all
steps; temporal layers (``temporal = True``: LIF, residual blocks) see the time
axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _kernel
from .fused import DualModeValue, fused_lif
from .fusion import LIFArgs, PoolArgs, TDBNArgs, bn_lif_pool
from .neuron import (CUBAParams, CUBAState, LIFParams, LIFState, SpikeFn, cuba_initial_state,
                     cuba_step, initial_state, lif_sequence, lif_step, synaptic_current)
from .surrogate import AsglRect, SurrogateShape, Triangle, default_param, spike


class LIF(nn.Module):
    """A layer of LIF neurons; holds constants and the surrogate, calls the core.

    ``shape_param`` is a buffer (or a Parameter once a method makes it
    learnable) so that it is saved with the weights and can differ per layer.
    ``kind`` says what feeds it ("conv" or "fc"), which PSG needs.
    A method may install ``spike_strategy`` (x -> s) to replace the surrogate
    spike entirely (ASGL's dual-mode forward).
    """

    temporal = True
    use_fused = True  # run the fused loop (core/fused.py) where it applies; False: lif_sequence

    def __init__(
        self,
        lam: float = 0.5,
        v_th: float = 1.0,
        reset: str = "hard",
        surrogate: SurrogateShape | None = None,
        kind: str = "fc",
    ) -> None:
        super().__init__()
        self.lam, self.v_th, self.reset = float(lam), float(v_th), reset
        self.surrogate = surrogate if surrogate is not None else Triangle()
        self.kind = kind
        self.register_buffer("shape_param", torch.tensor(default_param(self.surrogate)))
        self.spike_strategy = None
        # neurons read from other frameworks (core.neuron.LIFParams); the defaults are ours
        self.v_reset: float | Tensor = 0.0
        self.spike_geq = self.multi_spike = False
        self.v_min: float | Tensor | None = None
        self.record_membrane = False
        self.last_membrane: Tensor | None = None

    @property
    def params(self) -> LIFParams:
        return LIFParams(self.lam, self.v_th, self.reset, self.v_reset, self.spike_geq,
                         self.multi_spike, self.v_min)

    def surrogate_spike(self, x: Tensor) -> Tensor:
        return spike(x, self.surrogate, self.shape_param)

    @property
    def spike_fn(self) -> SpikeFn:
        """x -> s as training runs it: the installed strategy, else the surrogate spike."""
        return self.spike_strategy or self.surrogate_spike

    def initial_state(self, like: Tensor) -> LIFState:
        return initial_state(like)

    def step(self, c: Tensor, state: LIFState) -> tuple[Tensor, LIFState]:
        """One ``lif_step`` with this layer's constants and spike function (recurrent layers)."""
        return lif_step(c, state, self.params, self.spike_fn)

    def forward(self, currents: Tensor) -> Tensor:
        if currents.dtype in (torch.float16, torch.bfloat16):
            # under autocast the synapses hand over half-precision currents: the membrane
            # and the comparison with V_th stay fp32, so no spike depends on a short mantissa
            currents = currents.float()
        # membranes are for training-time losses and probes (PDA, CPNG): never kept in eval
        record = self.record_membrane and self.training
        fused = self._fused_args()
        if fused is not None:
            out = fused_lif(currents, *fused, membrane=record)
            s, self.last_membrane = out if record else (out, None)
            return s
        s, u = lif_sequence(currents, self.params, self.spike_fn, record)
        self.last_membrane = u
        return s

    def _fused_args(self) -> tuple | None:
        """Arguments of ``fused_lif`` (same numbers as lif_sequence), or None where it
        does not apply: per-neuron constants, a strategy that offers no fused
        interface (``fused.FusedStrategy``)."""
        if not self.use_fused or not self.params.native:
            return None
        if not (isinstance(self.lam, float) and isinstance(self.v_th, float)):
            return None
        strategy = self.spike_strategy
        if strategy is None:
            return self.shape_param, self.lam, self.v_th, self.reset, self.surrogate, None
        if not all(hasattr(strategy, a) for a in ("fused_value", "fused_shape", "fused_param")):
            return None
        return (strategy.fused_param, self.lam, self.v_th, self.reset, strategy.fused_shape,
                strategy.fused_value)

    def extra_repr(self) -> str:
        p = self.params
        foreign = "" if p.native else (f", v_reset={p.v_reset}, spike_geq={p.spike_geq}, "
                                       f"multi_spike={p.multi_spike}, v_min={p.v_min}")
        return (
            f"lam={self.lam}, v_th={self.v_th}, reset={self.reset}, "
            f"surrogate={self.surrogate.name}({float(self.shape_param):.4g}), kind={self.kind}"
            + foreign
        )


class CUBA(nn.Module):
    """A layer of current-based LIF neurons (``neuron.cuba_step``): a synaptic
    filter ``i[t] = alpha i[t-1] + c[t]`` before a LIF.

    The LIF part is the submodule ``lif``, so everything that finds ``LIF``
    modules (training methods installing surrogate shapes and strategies,
    membrane probes, spike recording) sees it unchanged. Feed-forward, the filter
    runs over all of T first and the LIF's fused loop after it
    (``neuron.synaptic_current``). Exporters have no rule for this type yet, so
    they refuse it by name rather than export it as a plain LIF.
    """

    temporal = True

    def __init__(self, alpha: float = 0.5, lam: float = 0.5, v_th: float = 1.0,
                 reset: str = "hard", surrogate: SurrogateShape | None = None,
                 kind: str = "fc") -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.lif = LIF(lam, v_th, reset, surrogate, kind)

    @property
    def params(self) -> CUBAParams:
        lif = self.lif
        return CUBAParams(self.alpha, lif.lam, lif.v_th, lif.reset)

    def initial_state(self, like: Tensor) -> CUBAState:
        return cuba_initial_state(like)

    def step(self, c: Tensor, state: CUBAState) -> tuple[Tensor, CUBAState]:
        """One ``cuba_step`` with this layer's constants and its LIF's spike function."""
        return cuba_step(c, state, self.params, self.lif.spike_fn)

    def forward(self, currents: Tensor) -> Tensor:
        return self.lif(synaptic_current(currents, self.alpha))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


Neuron = LIF | CUBA


def neuron_lif(neuron: Neuron) -> LIF:
    """The ``LIF`` module that holds a neuron layer's surrogate, strategy and probes."""
    return neuron if isinstance(neuron, LIF) else neuron.lif


class RecurrentSpiking(nn.Module):
    """Spiking neurons driven by the previous layer's currents plus their own
    spikes of the last step through recurrent weights:

        c_rec[t] = c[t] + W_rec s[t-1],   s[0] = 0,   then the neuron's step on c_rec[t]

    ``neuron`` (a ``LIF`` or ``CUBA`` module) is a submodule whose ``step`` the
    loop calls, so training methods find its ``LIF`` and install shapes and
    strategies as on any other layer. The input weights are the ``nn.Linear``
    before this layer (run once over all of T); ``W_rec`` has no bias.

    This is a plain per-step loop, BPTT by autograd: the fused LIF loop
    (``core/fused.py``) cannot run here because each step's current depends on
    the spikes of the step before, which that loop only computes inside itself.
    """

    temporal = True

    def __init__(self, width: int, neuron: Neuron) -> None:
        super().__init__()
        self.recurrent = nn.Linear(width, width, bias=False)
        self.neuron = neuron

    def forward(self, currents: Tensor) -> Tensor:
        lif = neuron_lif(self.neuron)
        record = lif.record_membrane and self.training  # as LIF.forward: training-time probes only
        state = self.neuron.initial_state(currents[0])
        w_rec_t = self.recurrent.weight.t()
        spikes, membrane = [], []
        for c in currents:
            # one fused op per step: c + s[t-1] W_rec^T
            s, state = self.neuron.step(torch.addmm(c, state.s, w_rec_t), state)
            spikes.append(s)
            if record:
                membrane.append(state.u)
        lif.last_membrane = torch.stack(membrane) if record else None
        return torch.stack(spikes)


class TDBatchNorm(nn.Module):
    """Threshold-dependent BN (Dspike Sec. 3.2, Zheng et al. 2021).

    Statistics over (T x batch, spatial) per channel; the normalised value is
    multiplied by ``alpha * V_th`` before the affine. ``x`` is (T*B, C, ...).
    ``norm_strategy`` ((x, self) -> normalised x) may replace the training-mode
    normalisation, e.g. with statistics synchronised over ranks (sync-BN).
    """

    def __init__(self, channels: int, v_th: float = 1.0, alpha: float = 1.0,
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.scale = float(alpha) * float(v_th)
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.norm_strategy = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.norm_strategy is not None:
            xn = self.norm_strategy(x, self)
        else:
            xn = F.batch_norm(x, self.running_mean, self.running_var, None, None,
                              self.training, self.momentum, self.eps)
        view = (1, -1) + (1,) * (x.dim() - 2)
        return xn * (self.scale * self.weight).view(view) + self.bias.view(view)

    def fold_factors(self) -> tuple[Tensor, Tensor]:
        """(gain, offset) per channel so that ``BN(z) = gain * z + offset`` in eval."""
        gain = self.scale * self.weight / torch.sqrt(self.running_var + self.eps)
        return gain, self.bias - gain * self.running_mean

    def fold_into(self, weight: Tensor, bias: Tensor | None,
                  detach: bool = True) -> tuple[Tensor, Tensor]:
        """``(W', b')`` with ``BN(W x + b) = W' x + b'`` in eval, per output channel,
        in ``weight``'s dtype (the exporters fold in float64); ``detach=False`` keeps
        the BN parameters in the graph (QAT)."""
        gain, offset = (t.to(weight.dtype) for t in self.fold_factors())
        if detach:
            gain, offset = gain.detach(), offset.detach()
        bias = bias if bias is not None else torch.zeros_like(gain)
        return weight * gain.view((-1,) + (1,) * (weight.dim() - 1)), gain * bias + offset


class Pool(nn.Module):
    """Average, max or sum pooling (kernel = stride = k), 1-D or 2-D."""

    def __init__(self, mode: str, k: int, dims: int) -> None:
        super().__init__()
        if mode not in ("avg", "max", "sum"):
            raise ValueError(f"pool must be avg, max or sum, got {mode!r}")
        self.mode, self.k, self.dims = mode, int(k), int(dims)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "max":
            fn = F.max_pool1d if self.dims == 1 else F.max_pool2d
            return fn(x, self.k, self.k)
        fn = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
        y = fn(x, self.k, self.k)
        return y * (self.k ** self.dims) if self.mode == "sum" else y

    def extra_repr(self) -> str:
        return f"mode={self.mode}, k={self.k}, dims={self.dims}"


fuse_layers = True  # run_layers fuses tdBN/LIF/pool runs where they qualify; False: never


def plain_module(m: nn.Module) -> bool:
    """No hook of any kind and its class's own forward (QAT overrides instance forwards;
    hwsim, probes and CPNG register hooks): such a module must run by itself."""
    return ("forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks
            and not m._backward_hooks and not m._backward_pre_hooks)


def no_global_hooks() -> bool:
    """No hook registered for every module (``torch.nn.modules.module.register_module_*``)."""
    g = torch.nn.modules.module
    return not (g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks or g._global_forward_hooks_always_called)


def fusable_run(layers: list, i: int, x: Tensor) -> tuple[int, TDBatchNorm | None, LIF, Pool | None] | None:
    """(length, tdBN or None, LIF, Pool or None) of a run ``[TDBatchNorm, LIF, Pool]``,
    ``[TDBatchNorm, LIF]`` or ``[LIF, Pool]`` at ``layers[i]`` that ``fusion.bn_lif_pool``
    computes with the same numbers, or None: the run's modules are then applied one by one.
    Every condition is one that op needs (exact Heaviside LIF, avg/sum pooling, plain
    modules, CPU float32/64 conv activations (T, B, C, L) or (T, B, C, H, W), the kernel)."""
    run = layers[i:i + 3]
    bn = run[0] if isinstance(run[0], TDBatchNorm) else None
    rest = run[1:] if bn is not None else run
    lif = rest[0] if rest and type(rest[0]) is LIF else None
    pool = rest[1] if len(rest) > 1 and type(rest[1]) is Pool and rest[1].mode != "max" else None
    if lif is None or (bn is None and pool is None):
        return None
    if type(x) is not Tensor or x.dim() not in (4, 5) or not _kernel.available(x):
        return None
    if (torch.is_autocast_enabled("cpu") or torch.jit.is_tracing()
            or torch._C._functorch.is_functorch_wrapped_tensor(x)):
        return None
    fused = lif._fused_args()  # (p, lam, v_th, reset, shape, value_fn)
    if fused is None or fused[3] not in _kernel.POOL_RESETS or not _fusable_value(lif, *fused):
        return None
    if bn is not None and not (type(bn) is TDBatchNorm and (bn.norm_strategy is None or not bn.training)
                               and isinstance(bn.momentum, float) and bn.weight.dtype == x.dtype
                               and bn.weight.shape[0] == x.shape[2]):
        return None
    if pool is not None and (pool.dims != x.dim() - 3 or min(x.shape[3:]) < pool.k or not plain_module(pool)):
        pool = None  # the tdBN and LIF may still fuse; the pool runs by itself
        if bn is None:
            return None
    modules = [m for m in (bn, lif, pool) if m is not None]
    if not all(plain_module(m) for m in modules) or not no_global_hooks():
        return None
    return len(modules), bn, lif, pool


def _fusable_value(lif: LIF, p, lam, v_th, reset: str, shape: SurrogateShape, value_fn) -> bool:
    """Whether the fused op runs this LIF's spike value: the exact step, or ASGL's dual-mode
    value as FusedLIF's compiled loops run it (``fused.DualModeValue`` at a single width,
    ``AsglRect``'s derivatives, hard or soft reset, no recorded membrane)."""
    if value_fn is None:
        return True
    return (type(value_fn) is DualModeValue and value_fn.alpha.dim() == 0 and type(shape) is AsglRect
            and isinstance(p, Tensor) and p.dim() == 0 and reset in ("hard", "soft")
            and not (lif.record_membrane and lif.training))


def run_fused(bn: TDBatchNorm | None, lif: LIF, pool: Pool | None, x: Tensor) -> Tensor:
    """The run ``fusable_run`` accepted, as one ``fusion.bn_lif_pool`` pass (the LIF's
    membrane recorded as ``LIF.forward`` records it)."""
    p, lam, v_th, reset, shape, value_fn = lif._fused_args()
    bn_args = None if bn is None else TDBNArgs(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.scale,
                                               bn.eps, bn.momentum, bn.training)
    pool_args = None if pool is None else PoolArgs(pool.mode, pool.k, pool.dims)
    record = lif.record_membrane and lif.training  # as LIF.forward: membranes for training-time losses
    lif_args = LIFArgs(p, lam, v_th, reset == "hard", shape, reset == "soft_nodecay", value_fn)
    out = bn_lif_pool(x, bn_args, lif_args, pool_args, record)
    y, lif.last_membrane = out if record else (out, None)
    return y


def run_layers(layers: nn.ModuleList | list, x: Tensor) -> Tensor:
    """Apply layers to a (T, B, ...) tensor, folding time into batch where stateless.

    Runs of tdBN, LIF and avg/sum pooling that ``fusable_run`` accepts go through
    ``fusion.bn_lif_pool`` (same numbers, two full passes fewer each way);
    ``fuse_layers = False`` turns that off."""
    T, B = x.shape[:2]
    layers = list(layers)
    i = 0
    while i < len(layers):
        run = fusable_run(layers, i, x) if fuse_layers else None
        if run is not None:
            x = run_fused(*run[1:], x)
            i += run[0]
            continue
        layer = layers[i]
        if getattr(layer, "temporal", False):
            x = layer(x)
        else:
            x = layer(x.flatten(0, 1)).unflatten(0, (T, B))
        i += 1
    return x


class ResidualBlock(nn.Module):
    """``LIF(body(x) + shortcut(x))``: the spiking BasicBlock of ResNet-18/19."""

    temporal = True

    def __init__(self, body: list[nn.Module], shortcut: list[nn.Module], out: Neuron) -> None:
        super().__init__()
        self.body = nn.ModuleList(body)
        self.shortcut = nn.ModuleList(shortcut)
        self.out = out

    def forward(self, x: Tensor) -> Tensor:
        return self.out(run_layers(self.body, x) + run_layers(self.shortcut, x))
