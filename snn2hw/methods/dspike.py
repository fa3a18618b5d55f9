"""``dspike``: the Dspike surrogate with one global temperature b tuned by
finite-difference gradients (Li et al., NeurIPS 2021; methods.md "Dspike and TIT").

At the start of every epoch, on the fixed probe batch and in train mode (BN
running statistics untouched):

1. FDG of the loss w.r.t. the first layer's weights W1,
   ``g_i = (L(W1 + eps e_i) - L(W1 - eps e_i)) / (2 eps)``; the 2K perturbed
   networks run as copies stacked along the batch axis, ``fdg_chunk`` copies per
   forward call, without autograd and through the fused LIF loop (compiled
   kernel); each copy keeps its own tdBN statistics. When W1 has more than ``fdg_max_coords``
   entries, a fixed random subset of that many coordinates is used (recorded in
   the history as ``fdg_coords`` of ``fdg_weights``).
2. The surrogate gradient of the same coordinates for b - db, b, b + db.
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

from ..core.encoders import encode
from ..core.layers import TDBatchNorm
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

    ``weights`` (P, *W.shape) is set before each batched pass."""

    def __init__(self, model: nn.Module, weight: str, batch: int) -> None:
        self.model, self.batch = model, batch
        owner, _, self.param = weight.rpartition(".")
        self.layer = model.get_submodule(owner)
        self.weights: Tensor | None = None
        self._inside = False
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(f"dspike: layer {name} ({type(m).__name__}) mixes the samples of a batch, "
                                  "which the FDG's batched passes cannot keep apart; use tdBN (TDBatchNorm)")

    def _groups(self, x: Tensor) -> Tensor:
        """(N, ...) with N = R * B * P -> (R, B, P, ...)."""
        return x.view(-1, self.batch, self.weights.shape[0], *x.shape[1:])

    def _first_layer(self, x: Tensor) -> Tensor:
        if self._inside:  # functional_call below calls the module again: its own forward
            return type(self.layer).forward(self.layer, x)

        def one(xc: Tensor, wc: Tensor) -> Tensor:  # xc (R, B, ...): one copy
            out = torch.func.functional_call(self.layer, {self.param: wc}, (xc.flatten(0, 1),))
            return out.unflatten(0, xc.shape[:2])

        self._inside = True
        try:  # vmap over copies of one layer: a grouped conv / batched matmul, one call
            out = torch.func.vmap(one, in_dims=(2, 0), out_dims=2)(self._groups(x), self.weights)
        finally:
            self._inside = False
        return out.flatten(0, 2)

    def _norm(self, x: Tensor, bn: TDBatchNorm) -> Tensor:
        """Training-mode normalisation with statistics per copy and channel: copies
        become extra channels of one ``F.batch_norm``."""
        p = self.weights.shape[0]
        as_channels = x.reshape(-1, p * x.shape[1], *x.shape[2:])
        return F.batch_norm(as_channels, None, None, None, None, True, 0.0, bn.eps).view(x.shape)

    @contextmanager
    def installed(self) -> Iterator[None]:
        bns = [m for m in self.model.modules() if isinstance(m, TDBatchNorm)]
        saved = [m.norm_strategy for m in bns]
        for m in bns:
            m.norm_strategy = self._norm
        self.layer.forward = self._first_layer  # an instance attribute: nn.Module calls it
        try:
            yield
        finally:
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


def finite_difference_grad(model: nn.Module, weight: str, x: Tensor, y: Tensor, loss_fn: LossFn,
                           coords: Tensor, eps: float = 0.1, chunk_size: int | None = 64) -> Tensor:
    """Central differences ``(L(w + eps e_i) - L(w - eps e_i)) / 2 eps`` for i in ``coords``.

    ``model`` must have ``forward_sequence`` (per-step outputs (T, B, K), as ``loss_fn``
    takes) and its first weight ``weight`` in a layer that acts per sample (Linear, Conv).
    The 2K perturbed copies run ``chunk_size`` at a time (all at once for None), each chunk
    as ONE forward of the copies stacked along the batch axis, under no_grad: per-copy
    first-layer weights, per-copy tdBN training statistics, the fused LIF loop (compiled
    kernel) for all copies at once. No buffer of ``model`` changes.
    """
    batch = len(y)
    w = dict(model.named_parameters())[weight].detach()
    k = len(coords)
    flat = torch.cat([coords, coords]).to(w.device)  # copy j perturbs coordinate flat[j]
    signed = torch.cat([torch.full((k,), eps), torch.full((k,), -eps)]).to(w)
    shared, axis = _shared_input(model, x)
    copies = _Copies(model, weight, batch)
    step = chunk_size or 2 * k
    losses = []
    with torch.no_grad(), _exact_step(model), copies.installed():
        for start in range(0, 2 * k, step):
            j = torch.arange(start, min(start + step, 2 * k), device=w.device)
            stacked = w.flatten().repeat(len(j), 1)
            stacked[torch.arange(len(j), device=w.device), flat[j]] += signed[j]
            copies.weights = stacked.view(len(j), *w.shape)
            tiled = shared.unsqueeze(axis + 1).expand(*shared.shape[:axis + 1], len(j), *shared.shape[axis + 1:])
            seq = model.forward_sequence(tiled.flatten(axis, axis + 1))
            seq = seq.view(seq.shape[0], batch, len(j), *seq.shape[2:])
            losses += [loss_fn(seq[:, :, i], y) for i in range(len(j))]
    losses_t = torch.stack(losses)
    return (losses_t[:k] - losses_t[k:]) / (2.0 * eps)


def surrogate_grad(model: SpikingNetwork, weight: str, x: Tensor, y: Tensor, loss_fn: LossFn,
                   coords: Tensor) -> Tensor:
    """The backprop (surrogate) gradient of the probe loss w.r.t. W1 at ``coords``."""
    w = dict(model.named_parameters())[weight]
    loss = loss_fn(model.forward_sequence(x), y)
    (g,) = torch.autograd.grad(loss, [w])
    return g.flatten()[coords.to(g.device)]


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@dataclass
class DspikeMethod:
    """Options: initial b, its step db, the FDG step eps, the coordinate cap, the copies per call."""

    b_init: float = field(default=1.0, metadata={"help": "Dspike: initial temperature b (default 1)"})
    db: float = field(default=0.2, metadata={"help": "Dspike: step of b per epoch (default 0.2)"})
    fdg_eps: float = field(default=0.1, metadata={"help": "Dspike: finite-difference step (default 0.1)"})
    fdg_max_coords: int = field(default=576, metadata={"help": "Dspike: most W1 coordinates in the FDG (default 576)"})
    fdg_chunk: int = field(default=64, metadata={"help": "Dspike: perturbed copies per batched forward call (memory, cache)"})
    name: ClassVar[str] = "dspike"
    surrogates: ClassVar[tuple[str, ...]] = (Dspike.name,)

    def __post_init__(self) -> None:
        if self.b_init <= 0 or self.db <= 0 or self.fdg_eps <= 0 or self.fdg_max_coords < 1:
            raise ConfigError("dspike: b_init, db, fdg_eps must be > 0 and fdg_max_coords >= 1")
        self.b = float(self.b_init)

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
                fdg = finite_difference_grad(net, weight, ctx.probe_x, ctx.probe_y, ctx.loss_fn,
                                             coords, self.fdg_eps, self.fdg_chunk)
                sims = []
                for b in candidates:
                    self._set_b(net, b)
                    sims.append(cosine(surrogate_grad(net, weight, ctx.probe_x, ctx.probe_y, ctx.loss_fn, coords), fdg))
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
