"""``dspike``: the Dspike surrogate with one global temperature b tuned by
finite-difference gradients (Li et al., NeurIPS 2021; methods.md "Dspike and TIT").

At the start of every epoch, on the fixed probe batch and in train mode (BN
running statistics untouched):

1. FDG of the loss w.r.t. the first layer's weights W1,
   ``g_i = (L(W1 + eps e_i) - L(W1 - eps e_i)) / (2 eps)``; the 2K perturbed
   networks run as copies stacked along the batch axis, ``fdg_chunk`` copies per
   forward call, without autograd and through the fused LIF loop (compiled
   kernel; tdBN -> LIF -> pool as one compiled pass); each copy keeps its own tdBN
   statistics. When W1 has more than ``fdg_max_coords``
   entries, a fixed random subset of that many coordinates is used (recorded in
   the history as ``fdg_coords`` of ``fdg_weights``).
2. The surrogate gradient of the same coordinates for b - db, b, b + db (one forward,
   three backward passes: b enters only the backward).
3. b becomes the candidate with the highest cosine similarity to the FDG.

TIT (train at high T, fine-tune at low T) is ``--init-from CKPT --timesteps T``:
the checkpoint's b carries over with the weights (its method state, trainer).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import _kernel, layers as core_layers
from ..core.encoders import encode
from ..core.fused import reused_graph
from ..core.fusion import LIFArgs, PoolArgs, TDBNArgs, bn_lif_pool
from ..core.layers import CUBA, LIF, Pool, TDBatchNorm
from ..core.surrogate import Dspike
from ..errors import ConfigError
from ..models.network import SpikingNetwork
from ..distributed import broadcast_object
from ._util import frozen_buffers, install_shape, named_lifs, unwrap
from .base import MethodContext

LossFn = Callable[[Tensor, Tensor], Tensor]


def first_weight_name(model: nn.Module) -> str:
    """Name of the first weight matrix/kernel (the input layer's W1)."""
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() >= 2:
            return name
    raise ConfigError("dspike: the model has no weight matrix to take finite differences on")


def coordinate_subset(numel: int, max_coords: int, seed: int = 0) -> Tensor:
    """All coordinates if few enough, else a fixed random subset (sorted)."""
    if numel <= max_coords:
        return torch.arange(numel)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=gen)[:max_coords].sort().values


@contextmanager
def _exact_step(model: nn.Module) -> Iterator[None]:
    """Spike with the exact step: no installed strategy (ASGL's mask), so the fused loop
    (compiled kernel) runs; under no_grad the surrogate spike's forward is the step."""
    lifs = named_lifs(model)
    saved = [m.spike_strategy for _, m in lifs]
    for _, m in lifs:
        m.spike_strategy = None
    try:
        yield
    finally:
        for (_, m), s in zip(lifs, saved):
            m.spike_strategy = s


class _Copies:
    """P perturbed copies of the network stacked along the batch axis, sample-major
    (sample b of copy p at b * P + p, so that a (N, C, ...) tensor is (N / P, P * C, ...)
    without a copy): the first layer computes each copy with its own weight, every tdBN
    takes training statistics per copy; the other layers act per sample anyway.

    ``count`` (P) and, for the first layer, ``weights`` (P, *W.shape) are set before each pass."""

    def __init__(self, model: nn.Module, weight: str, batch: int) -> None:
        self.model, self.batch = model, batch
        owner, _, self.param = weight.rpartition(".")
        self.layer = model.get_submodule(owner)
        self.weights: Tensor | None = None
        self.count = 0
        self._own: Callable[[Tensor], Tensor] | None = None
        self._inside = False
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(f"dspike: layer {name} ({type(m).__name__}) mixes the samples of a batch, "
                                  "which the FDG's batched passes cannot keep apart; use tdBN (TDBatchNorm)")

    def _groups(self, x: Tensor) -> Tensor:
        """(N, ...) with N = R * B * P -> (R, B, P, ...)."""
        return x.view(-1, self.batch, self.count, *x.shape[1:])

    def _first_layer(self, x: Tensor) -> Tensor:
        if self._inside or self.weights is None:  # called again by functional_call below, or the
            # unperturbed pass of _ChannelLocal: the layer's own forward (QAT's, if it has one)
            return self._own(x) if self._own is not None else type(self.layer).forward(self.layer, x)

        def one(xc: Tensor, wc: Tensor) -> Tensor:  # xc (R, B, ...): one copy
            out = torch.func.functional_call(self.layer, {self.param: wc}, (xc.flatten(0, 1),))
            return out.unflatten(0, xc.shape[:2])

        self._inside = True
        try:  # vmap over copies of one layer: a grouped conv / batched matmul, one call; an
            # installed forward (QAT's grid, numpy inside) one copy at a time
            if self._own is None:
                out = torch.func.vmap(one, in_dims=(2, 0), out_dims=2)(self._groups(x), self.weights)
            else:
                g = self._groups(x)
                out = torch.stack([one(g[:, :, i], wi) for i, wi in enumerate(self.weights)], dim=2)
        finally:
            self._inside = False
        return out.flatten(0, 2)

    def _norm(self, x: Tensor, bn: TDBatchNorm) -> Tensor:
        """Training-mode normalisation with statistics per copy and channel: copies
        become extra channels of one ``F.batch_norm``."""
        as_channels = x.reshape(-1, self.count * x.shape[1], *x.shape[2:])
        return F.batch_norm(as_channels, None, None, None, None, True, 0.0, bn.eps).view(x.shape)

    @contextmanager
    def installed(self) -> Iterator[None]:
        bns = [m for m in self.model.modules() if isinstance(m, TDBatchNorm)]
        saved = [m.norm_strategy for m in bns]
        for m in bns:
            m.norm_strategy = self._norm
        self._own = vars(self.layer).get("forward")  # a forward installed on the instance (QAT)
        self.layer.forward = self._first_layer  # an instance attribute: nn.Module calls it
        try:
            yield
        finally:
            if self._own is not None:
                self.layer.forward = self._own
            else:
                del self.layer.forward
            for m, s in zip(bns, saved):
                m.norm_strategy = s


def _shared_input(model: nn.Module, x: Tensor) -> tuple[Tensor, int]:
    """(input every copy sees, its batch axis). A static batch under a random encoding is
    encoded once here, so that all copies see the same draw (a finite difference of the
    weights, not of the encoding's noise)."""
    config = getattr(model, "config", None)
    if config is None or x.dim() != len(config.input_shape) + 1:
        return x, (0 if config is None else 1)
    if config.encoding != "direct":
        return encode(config.encoding, x, config.timesteps), 1
    return x, 0


CHANGE_BYTES = 32 << 20  # the FDG's perturbed channels kept at once (all 192 of the mnist1d conv net: 3.9 MB)
# The automatic chunk: as many copies per pass as keep its widest tensor under this (19 on the
# mnist1d conv net, 0.66 MB a copy). FDG there, allocator settled: chunks of 4 0.141 s, 8 0.130,
# 12 0.110, 16 0.109, 20 0.105-0.110, 24 0.113-0.119, 32 0.16-0.18 (the pass's tensors then
# near glibc's largest mmap threshold, and page faults again).
PASS_BYTES = 12 << 20
SETTLE_BYTES = 30 << 20  # below glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit)
_PER_CHANNEL = (TDBatchNorm, LIF, CUBA, Pool)  # layers in which channel c of the output reads channel c only


def _mixes_channels(layer: nn.Module) -> bool:
    """A layer whose output is linear in its input, computed per copy below."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return layer.groups == 1 and layer.padding_mode == "zeros"
    return isinstance(layer, nn.Linear)


def _own_synapse(layer: nn.Module) -> bool:
    """A Linear/Conv whose output is its class's own function of its weight: no hook, no
    forward of a subclass or the instance. The FDG computes such a synapse from its weight
    (the channel-local one, ``_ChannelLocal._later``'s), not by calling it."""
    return (type(layer).forward in (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward)
            and core_layers.plain_module(layer) and core_layers.no_global_hooks())


def _channel_local_span(model: nn.Module, weight: str) -> tuple[int, int] | None:
    """(f, m) when W1 is ``layers[f].weight``, every layer strictly between f and m acts
    per channel and ``layers[m]`` is a Linear/Conv: a perturbation of W1's row o then
    changes channel o only, up to layer m. None for any other structure."""
    if not isinstance(model, SpikingNetwork) or any("forward" in vars(m) for m in model.modules()):
        return None  # a forward installed on a module (QAT's grid) is not what this path computes
    layers = list(model.layers)
    f = next((i for i in range(len(layers)) if weight == f"layers.{i}.weight"), None)
    if f is None or not _mixes_channels(layers[f]):
        return None
    for m in range(f + 1, len(layers)):
        if _mixes_channels(layers[m]):
            return (f, m) if _own_synapse(layers[m]) else None
        if not isinstance(layers[m], _PER_CHANNEL):
            return None
    return None


def settle_allocator() -> None:
    """Raise glibc's malloc thresholds once for the process, so that a pass's tensors of some
    MB come from the heap instead of fresh pages. glibc serves a block above its mmap
    threshold (128 KiB at first) with new pages, each zeroed at its first touch, and gives
    the heap's top back to the system beyond twice that threshold; freeing a mapped block
    raises the threshold to its size (up to 32 MiB). The FDG's passes of 10 MB tensors
    took 0.125-0.196 s by the allocator's state left from before, 0.108-0.116 s settled:
    one block of SETTLE_BYTES allocated (pages never touched) and freed. Elsewhere
    (another allocator, a threshold set by the user) an allocation and a free."""
    block = torch.empty(SETTLE_BYTES, dtype=torch.uint8)
    del block


def _bytes_per_copy(model: nn.Module, x: Tensor, layers: list[nn.Module] | None) -> int:
    """What one copy adds to a pass: the bytes of the widest output of ``layers`` (every
    submodule for None) in one unperturbed forward of the probe batch (``_Copies`` with a
    count of one: training statistics, no buffer written)."""
    widest = 0

    def hook(_module: nn.Module, _inputs: object, out: object) -> None:
        nonlocal widest
        if isinstance(out, Tensor):
            widest = max(widest, out.numel() * out.element_size())

    watched = layers if layers is not None else [m for m in model.modules() if m is not model]
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        model.forward_sequence(x)
    finally:
        for h in handles:
            h.remove()
    return widest


def _widest_chunk(model: nn.Module, shared: Tensor, span: tuple[int, int] | None, copies: int) -> int:
    """``auto_chunk`` of the widest per-copy tensor: after layer m only where channels stay
    apart (inside ``finite_difference_grad``'s contexts, ``_Copies`` counting one)."""
    return auto_chunk(_bytes_per_copy(model, shared, list(model.layers)[span[1]:] if span else None), copies)


def automatic_chunk(model: nn.Module, weight: str, x: Tensor, y: Tensor, coords: Tensor) -> int:
    """What ``finite_difference_grad``'s chunk_size 0 chooses for these arguments (one
    unperturbed forward of ``x``). It depends on shapes only, so a caller that runs the FDG
    on a batch of the same shape every epoch can choose it once and pass it."""
    # sizes only: a random encoding's draw here must not move the generator the FDG draws from
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        shared, _ = _shared_input(model, x)
    span = _channel_local_span(model, weight)  # before the copies' forward is installed
    copies = _Copies(model, weight, len(y))
    with torch.no_grad(), _exact_step(model), copies.installed():
        copies.count = 1
        return _widest_chunk(model, shared, span, 2 * len(coords))


def auto_chunk(copy_bytes: int, copies: int) -> int:
    """Copies per pass: as many as PASS_BYTES holds (at least one, at most all)."""
    return max(1, min(copies, PASS_BYTES // max(copy_bytes, 1)))


def _folded(fn: Callable[[Tensor], Tensor], h: Tensor, temporal: bool) -> Tensor:
    """A stateless layer on (T, N, ...) with time folded into the batch, as run_layers does."""
    return fn(h.flatten(0, 1)).unflatten(0, h.shape[:2]) if temporal else fn(h)


# (z, tdBN) -> (z viewed as (M, G, ...) with training statistics per channel g of G, and the
# tdBN's weight and bias per g): how a pass of copies groups its samples into statistics
Grouping = Callable[[Tensor, TDBatchNorm], tuple[Tensor, Tensor, Tensor]]


def _grouped_norm(z: Tensor, bn: TDBatchNorm, group: Grouping) -> Tensor:
    """``TDBatchNorm.forward`` in training with the statistics ``group`` says (z: (N, C, ...))."""
    v, weight, bias = group(z, bn)
    view = (1, -1) + (1,) * (v.dim() - 2)
    zn = F.batch_norm(v, None, None, None, None, True, 0.0, bn.eps)
    return (zn * (bn.scale * weight).view(view) + bias.view(view)).view(z.shape)


def _grouped_bn_lif_pool(run: list[nn.Module], h: Tensor, group: Grouping) -> Tensor | None:
    """``[TDBatchNorm, LIF, Pool]`` on the temporal ``h`` (T, N, C, ...) as one compiled
    inference pass (``fusion.bn_lif_pool``) with the statistics ``group`` says, or None where
    that pass does not apply (``layers.fusable_run`` on the LIF and pool; plain tdBN). The
    kernel sees the grouped view's G channels, each with its own weight and bias: the
    numbers of ``_grouped_norm``, the LIF and the pool run in turn."""
    if not core_layers.fuse_layers or len(run) < 3 or type(run[0]) is not TDBatchNorm:
        return None
    bn = run[0]
    fusable = core_layers.fusable_run(run, 1, h)
    if fusable is None or fusable[0] != 2 or fusable[2].record_membrane or not core_layers.plain_module(bn):
        return None
    _, _, lif, pool = fusable
    p, lam, v_th, reset, shape, value_fn = lif._fused_args()
    T = h.shape[0]
    v, weight, bias = group(h.flatten(0, 1), bn)
    if value_fn is not None or weight.dtype != h.dtype:  # the exact step only (``_exact_step``)
        return None
    pooled = bn_lif_pool(v.unflatten(0, (T, -1)), TDBNArgs(weight, bias, None, None, bn.scale, bn.eps, 0.0, True),
                         LIFArgs(p, lam, v_th, reset == "hard", shape, reset == "soft_nodecay"),
                         PoolArgs(pool.mode, pool.k, pool.dims))
    return pooled.view(*h.shape[:3], *pooled.shape[3:])


# (layer, input (N, ...) with time folded into the batch) -> its output: how a pass of copies
# runs a synapse (``_ChannelLocal._later``)
Synapse = Callable[[nn.Module, Tensor], Tensor]


def _run(layers: list[nn.Module], h: Tensor, temporal: bool, timesteps: int,
         group: Grouping | None = None, synapse: Synapse | None = None) -> tuple[Tensor, bool]:
    """``SpikingNetwork.forward_sequence`` over ``layers``: static frames broadcast over T
    at the first temporal layer; ``group`` sets tdBN's statistics (channels = copies),
    ``synapse`` may run a Linear/Conv. ``[TDBatchNorm, LIF, Pool]`` and ``[LIF, Pool]`` run
    as one compiled pass where ``run_layers`` would fuse them (the same numbers, two passes
    fewer and no avg_pool)."""
    i = 0
    while i < len(layers):
        layer = layers[i]
        if temporal and group is not None:
            fused = _grouped_bn_lif_pool(layers[i:i + 3], h, group)
            if fused is not None:
                h, i = fused, i + 3
                continue
        if getattr(layer, "temporal", False):
            if not temporal:
                h, temporal = h.unsqueeze(0).expand(timesteps, *h.shape), True
            run = core_layers.fusable_run(layers, i, h) if core_layers.fuse_layers else None
            if run is not None and run[1] is None:  # [LIF, Pool]; a tdBN before it ran above
                h, i = core_layers.run_fused(None, run[2], run[3], h), i + run[0]
                continue
            h = layer(h)
        elif group is not None and isinstance(layer, TDBatchNorm):
            h = _folded(lambda z, bn=layer: _grouped_norm(z, bn, group), h, temporal)
        elif synapse is not None and _mixes_channels(layer):
            h = _folded(lambda z, s=layer: synapse(s, z), h, temporal)
        else:
            h = _folded(layer, h, temporal)
        i += 1
    return h, temporal


class _ChannelLocal:
    """The FDG's copies where W1's output channels stay apart up to layer m
    (``_channel_local_span``): copy p perturbs row o_p of W1, so up to layer m it differs
    from the unperturbed network in channel o_p only. That one channel is computed per copy
    (a tensor whose channel axis holds the copies), and layer m's output is
    ``m(base) + m_o(change)``, with ``m_o`` the weights of input channel o only: the same
    numbers as the full copies up to rounding, at 1/C of their work up to m. Later layers
    run on all copies stacked along the batch axis, a convolution among them as the
    unperturbed network's output plus the convolution of what changed (``_later``)."""

    def __init__(self, model: SpikingNetwork, span: tuple[int, int], x: Tensor, temporal: bool, w: Tensor,
                 flat: Tensor, signed: Tensor, chunk: int) -> None:
        self.f, self.m = span
        self.layers, self.timesteps = list(model.layers), model.config.timesteps
        self.w, self.flat, self.signed = w, flat, signed
        self.x, self.temporal0 = _run(self.layers[:self.f], x, temporal, self.timesteps)
        self.base, self.temporal = _run(self.layers[self.f:self.m], self.x, self.temporal0, self.timesteps)
        self.base_out = _folded(self.layers[self.m], self.base, self.temporal)
        # the tdBN affines tiled over P copies, per (tdBN, P): the weights are fixed during an FDG
        self.tiled: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        # the copies' changed channels are made for a block of copies at once (a whole number
        # of chunks, CHANGE_BYTES at most): one call per layer where each chunk made ~10 small ones
        per_copy = self.base.numel() // self.base.shape[2 if self.temporal else 1] * self.base.element_size()
        self.block = max(1, CHANGE_BYTES // max(per_copy, 1) // chunk) * chunk
        self.changes: tuple[int, Tensor] | None = None  # (first copy, its block's changes)
        # the convolutions after layer m: the unperturbed pass's input and output of each, run
        # as a copy whose change is zero would run them (``_later``)
        self.later: dict[int, tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, ...]]] = {}
        h, temporal, start = self.base_out, self.temporal, self.m + 1
        for j in range(self.m + 1, len(self.layers)):
            layer = self.layers[j]
            if not (isinstance(layer, (nn.Conv1d, nn.Conv2d)) and _mixes_channels(layer) and _own_synapse(layer)
                    and not isinstance(layer.padding, str) and _kernel.available(h)):
                continue
            h, temporal = _run(self.layers[start:j], h, temporal, self.timesteps, self._tiled(1))
            z = h.flatten(0, 1) if temporal else h
            out = layer(z)
            table = _kernel.conv_taps(tuple(z.shape[2:]), tuple(out.shape[2:]), layer.kernel_size, layer.stride,
                                      layer.padding, layer.dilation)
            wt = layer.weight.detach().flatten(2).permute(1, 2, 0).contiguous()  # (Ci, K, Co)
            self.later[id(layer)] = (z.contiguous(), out.flatten(2).transpose(1, 2).contiguous(), wt, table,
                                     tuple(out.shape[2:]))
            h, start = (out.unflatten(0, h.shape[:2]) if temporal else out), j + 1

    def _tiled(self, p: int) -> Grouping:
        """Training statistics per copy and channel for a pass of p copies (as ``_Copies._norm``)."""
        def per_copy(z: Tensor, bn: TDBatchNorm) -> tuple[Tensor, Tensor, Tensor]:
            key = (id(bn), p)
            if key not in self.tiled:
                self.tiled[key] = bn.weight.repeat(p), bn.bias.repeat(p)
            return z.view(-1, p * z.shape[1], *z.shape[2:]), *self.tiled[key]
        return per_copy

    def _later(self, layer: nn.Module, z: Tensor) -> Tensor:
        """A convolution after layer m on the copies' rows z (N, ...) (row n: sample n // P of
        the unperturbed pass, perturbed): that pass's output plus the convolution of the
        change, which is a few spikes (``_kernel.delta_conv``); any other layer runs itself."""
        entry = self.later.get(id(layer))  # (one module placed twice: its last place's; the shape tells)
        if entry is None or z.dtype != entry[0].dtype or z.shape[1:] != entry[0].shape[1:] \
                or z.shape[0] % entry[0].shape[0]:
            return layer(z)
        return _kernel.delta_conv(z, *entry)

    def _changes(self, j0: int, j1: int) -> Tensor:
        """The copies j0..j1-1's perturbed channel after layers f..m-1 minus the unperturbed
        network's, channels = copies: (T, N, P, ...) or, static, (N, P, ...)."""
        w, flat, signed = self.w, self.flat[j0:j1], self.signed[j0:j1]
        first, p = self.layers[self.f], len(flat)
        o, r = flat // w[0].numel(), flat % w[0].numel()
        rows = w.flatten(1)[o]  # row o_p of each copy's W1, perturbed
        rows[torch.arange(p, device=w.device), r] += signed
        bias = None if first.bias is None else first.bias[o]
        if isinstance(first, nn.Linear):
            h = _folded(lambda z: F.linear(z, rows, bias), self.x, self.temporal0)
        else:
            h = _folded(lambda z: first._conv_forward(z, rows.view(p, *w.shape[1:]), bias), self.x, self.temporal0)

        def selected(z: Tensor, bn: TDBatchNorm) -> tuple[Tensor, Tensor, Tensor]:  # channel p is channel o_p
            return z, bn.weight[o], bn.bias[o]

        h, temporal = _run(self.layers[self.f + 1:self.m], h, self.temporal0, self.timesteps, selected)
        return h - self.base.index_select(2 if temporal else 1, o)  # channel axis: copies

    def forward(self, j0: int, j1: int) -> Tensor:
        """Per-step outputs (T, B * P, K), sample-major, of the copies j0..j1-1 (those
        perturbing ``flat[j0:j1]``), which lie in one block (j0 a multiple of it)."""
        if self.changes is None or not self.changes[0] <= j0 < self.changes[0] + self.block:
            start = j0 // self.block * self.block
            self.changes = start, self._changes(start, min(start + self.block, len(self.flat)))
        start, block = self.changes
        change = block.narrow(2 if self.temporal else 1, j0 - start, j1 - j0)
        mix, p = self.layers[self.m], j1 - j0
        o = self.flat[j0:j1] // self.w[0].numel()
        temporal = self.temporal
        z = change.flatten(0, 1) if temporal else change  # (N, P, ...)
        base_out = self.base_out.flatten(0, 1) if temporal else self.base_out
        if isinstance(mix, nn.Linear):
            delta = z.unsqueeze(-1) * mix.weight[:, o].t()  # (N, P, C_out)
            out = base_out.unsqueeze(1) + delta
        elif _kernel.available(z) and not isinstance(mix.padding, str):  # one compiled pass: the sum, base + sum
            out = _kernel.channel_local_conv(z, mix.weight[:, o].transpose(0, 1), base_out, mix.stride, mix.padding,
                                             mix.dilation)
        else:
            conv = F.conv1d if isinstance(mix, nn.Conv1d) else F.conv2d
            wo = mix.weight[:, o].transpose(0, 1).reshape(p * mix.out_channels, 1, *mix.weight.shape[2:])
            delta = conv(z, wo, None, mix.stride, mix.padding, mix.dilation, p)
            out = base_out.unsqueeze(1) + delta.view(delta.shape[0], p, mix.out_channels, *delta.shape[2:])
        out = out.flatten(0, 1)  # (N * P, C_out, ...), sample-major
        if temporal:
            out = out.unflatten(0, (self.timesteps, -1))

        out, temporal = _run(self.layers[self.m + 1:], out, temporal, self.timesteps, self._tiled(p), self._later)
        return out if temporal else out.unsqueeze(0).expand(self.timesteps, *out.shape)


def finite_difference_grad(model: nn.Module, weight: str, x: Tensor, y: Tensor, loss_fn: LossFn,
                           coords: Tensor, eps: float = 0.1, chunk_size: int | None = 0) -> Tensor:
    """Central differences ``(L(w + eps e_i) - L(w - eps e_i)) / 2 eps`` for i in ``coords``.

    ``model`` must have ``forward_sequence`` (per-step outputs (T, B, K), as ``loss_fn``
    takes) and its first weight ``weight`` in a layer that acts per sample (Linear, Conv).
    The 2K perturbed copies run ``chunk_size`` at a time (all at once for None; 0: as many
    as keep a pass's widest tensor under PASS_BYTES, ``auto_chunk``), each chunk
    as ONE forward of the copies stacked along the batch axis, under no_grad: per-copy
    first-layer weights, per-copy tdBN training statistics, the fused LIF loop (compiled
    kernel) for all copies at once; where W1's output channels stay apart up to the next
    synapse (``_ChannelLocal``), only the perturbed channel is computed per copy there (for
    as many copies at once as ``CHANGE_BYTES`` holds, all of them on small nets), the
    convolutions after that synapse as the unperturbed output plus the convolution of the
    copy's few changed spikes (``_ChannelLocal._later``), and the blocks tdBN -> LIF -> pool
    run as one compiled pass (``_grouped_bn_lif_pool``).
    Spikes are the exact step (an installed strategy is set aside). No buffer of ``model``
    changes.
    """
    batch = len(y)
    w = dict(model.named_parameters())[weight].detach()
    k = len(coords)
    flat = torch.cat([coords, coords]).to(w.device)  # copy j perturbs coordinate flat[j]
    signed = torch.cat([torch.full((k,), eps), torch.full((k,), -eps)]).to(w)
    shared, axis = _shared_input(model, x)
    copies = _Copies(model, weight, batch)
    losses = []
    span = _channel_local_span(model, weight)
    per_copy = getattr(loss_fn, "per_copy", None)
    with torch.no_grad(), _exact_step(model), copies.installed():
        copies.count = 1
        if chunk_size == 0:
            step = _widest_chunk(model, shared, span, 2 * k)
        else:
            step = chunk_size or 2 * k
        settle_allocator()
        local = _ChannelLocal(model, span, shared, axis == 1, w, flat, signed, step) if span else None
        for start in range(0, 2 * k, step):
            j = torch.arange(start, min(start + step, 2 * k), device=w.device)
            copies.count = len(j)
            if local is not None:
                seq = local.forward(start, start + len(j))
            else:
                stacked = w.flatten().repeat(len(j), 1)
                stacked[torch.arange(len(j), device=w.device), flat[j]] += signed[j]
                copies.weights = stacked.view(len(j), *w.shape)
                tiled = shared.unsqueeze(axis + 1).expand(*shared.shape[:axis + 1], len(j), *shared.shape[axis + 1:])
                seq = model.forward_sequence(tiled.flatten(axis, axis + 1))
            seq = seq.view(seq.shape[0], batch, len(j), *seq.shape[2:])
            if per_copy is not None:  # the chunk's losses in a few calls (make_loss's)
                losses.append(per_copy(seq, y))
            else:
                losses.append(torch.stack([loss_fn(seq[:, :, i], y) for i in range(len(j))]))
    losses_t = torch.cat(losses)
    return (losses_t[:k] - losses_t[k:]) / (2.0 * eps)


def surrogate_grad(model: SpikingNetwork, weight: str, x: Tensor, y: Tensor, loss_fn: LossFn,
                   coords: Tensor) -> Tensor:
    """The backprop (surrogate) gradient of the probe loss w.r.t. W1 at ``coords``."""
    w = dict(model.named_parameters())[weight]
    loss = loss_fn(model.forward_sequence(x), y)
    (g,) = torch.autograd.grad(loss, [w])
    return g.flatten()[coords.to(g.device)]


def surrogate_grads(model: SpikingNetwork, weight: str, x: Tensor, y: Tensor, loss_fn: LossFn, coords: Tensor,
                    values: list[float]) -> list[Tensor]:
    """``surrogate_grad`` for each value of every LIF's shape parameter (Dspike's b), from
    ONE forward where it can: the forward is the exact step whatever b is, and b enters
    only the backward, through the shape parameter each LIF saves for it. That saved tensor
    is read late (``forward_sequence``'s ``late``): as the value of the backward running.
    The forward runs with the parameters at ``values[0]``, so the first backward is right
    in any case; if it did not read every LIF's parameter late (a path that saves a copy
    of it), the other values take a forward each. The parameters are restored after."""
    lifs = [m for _, m in named_lifs(model)]
    kept = [m.shape_param.detach().clone() for m in lifs]
    params = {id(m.shape_param) for m in lifs}
    read: set[int] = set()
    current = [values[0]]

    def late_value(t: Tensor) -> Tensor:
        read.add(id(t))
        return torch.full_like(t, current[0])

    w = dict(model.named_parameters())[weight]
    grads = []
    try:
        for m in lifs:
            m.shape_param.data.fill_(values[0])
        with reused_graph():
            loss = loss_fn(model.forward_sequence(x, late=dict.fromkeys(params, late_value)), y)
        for i, v in enumerate(values):
            if i and not read >= params:  # some LIF saved a copy of its parameter
                for m in lifs:
                    m.shape_param.data.fill_(v)
                grads.append(surrogate_grad(model, weight, x, y, loss_fn, coords))
                continue
            current[0] = v
            (g,) = torch.autograd.grad(loss, [w], retain_graph=i + 1 < len(values))
            grads.append(g.flatten()[coords.to(g.device)])
    finally:
        for m, b in zip(lifs, kept):
            m.shape_param.data.copy_(b)
    return grads


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@dataclass
class DspikeMethod:
    """Options: initial b, its step db, the FDG step eps, the coordinate cap, the copies per call."""

    b_init: float = field(default=1.0, metadata={"help": "Dspike: initial temperature b (default 1)"})
    db: float = field(default=0.2, metadata={"help": "Dspike: step of b per epoch (default 0.2)"})
    fdg_eps: float = field(default=0.1, metadata={"help": "Dspike: finite-difference step (default 0.1)"})
    fdg_max_coords: int = field(default=576, metadata={"help": "Dspike: most W1 coordinates in the FDG (default 576)"})
    fdg_chunk: int = field(default=0, metadata={"help": "Dspike: perturbed copies per batched forward call (default 0: as many as keep the pass's widest tensor under " f"{PASS_BYTES >> 20} MiB)"})
    name: ClassVar[str] = "dspike"
    surrogates: ClassVar[tuple[str, ...]] = (Dspike.name,)

    def __post_init__(self) -> None:
        if self.b_init <= 0 or self.db <= 0 or self.fdg_eps <= 0 or self.fdg_max_coords < 1 or self.fdg_chunk < 0:
            raise ConfigError("dspike: b_init, db, fdg_eps must be > 0, fdg_max_coords >= 1, fdg_chunk >= 0")
        self.b = float(self.b_init)
        # fdg_chunk 0: the automatic chunk, chosen on the first epoch for the probe batch's shape
        self._chunk: tuple[tuple, int] | None = None

    def _fdg_chunk(self, net: nn.Module, weight: str, x: Tensor, y: Tensor, coords: Tensor) -> int:
        if self.fdg_chunk:
            return self.fdg_chunk
        key = (id(net), weight, tuple(x.shape), x.dtype, len(coords))
        if self._chunk is None or self._chunk[0] != key:
            self._chunk = key, automatic_chunk(net, weight, x, y, coords)
        return self._chunk[1]

    def setup(self, model: SpikingNetwork) -> None:
        for _, m in named_lifs(model):  # the window is +-V_th of each layer
            install_shape(m, Dspike(self.b, float(m.v_th)), self.b)

    def _set_b(self, model: nn.Module, b: float) -> None:
        for _, m in named_lifs(model):
            m.shape_param.fill_(b)

    def on_epoch_start(self, ctx: MethodContext) -> dict[str, float]:
        net = unwrap(ctx.model)
        weight = first_weight_name(net)
        numel = dict(net.named_parameters())[weight].numel()
        coords = coordinate_subset(numel, self.fdg_max_coords)
        labelled = [(lab, b) for lab, b in (("-db", self.b - self.db), ("", self.b), ("+db", self.b + self.db)) if b > 0]
        candidates = [b for _, b in labelled]
        was_training = net.training
        net.train()
        try:
            with frozen_buffers(net):
                chunk = self._fdg_chunk(net, weight, ctx.probe_x, ctx.probe_y, coords)
                fdg = finite_difference_grad(net, weight, ctx.probe_x, ctx.probe_y, ctx.loss_fn,
                                             coords, self.fdg_eps, chunk)
                sims = [cosine(g, fdg) for g in surrogate_grads(net, weight, ctx.probe_x, ctx.probe_y, ctx.loss_fn,
                                                                 coords, candidates)]
        finally:
            net.train(was_training)
        best = max(range(len(candidates)), key=lambda i: sims[i])
        self.b = float(broadcast_object(candidates[best]))  # rank 0's choice on every rank
        self._set_b(net, self.b)
        row = {f"cos/b{lab}": s for (lab, _), s in zip(labelled, sims)}
        row.update(b=self.b, fdg_coords=float(len(coords)), fdg_weights=float(numel))
        return row

    def extra_loss(self, model: SpikingNetwork) -> Tensor | None:
        return None

    def on_epoch_end(self, ctx: MethodContext) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {"b": self.b}

    def load_state_dict(self, state: dict) -> None:
        self.b = float(state.get("b", self.b))
