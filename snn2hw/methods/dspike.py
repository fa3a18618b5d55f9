"""``dspike``: the Dspike surrogate with one global temperature b tuned by
finite-difference gradients (Li et al., NeurIPS 2021; methods.md "Dspike and TIT").

At the start of every epoch, on the fixed probe batch and in train mode (BN
running statistics untouched):

1. FDG of the loss w.r.t. the first layer's weights W1,
   ``g_i = (L(W1 + eps e_i) - L(W1 - eps e_i)) / (2 eps)``; the 2K perturbed
   forward passes run as ONE batched computation (``torch.func.vmap`` over
   stacked weight copies, in chunks). When W1 has more than ``fdg_max_coords``
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
from torch import Tensor, nn

from ..core.surrogate import Dspike, heaviside
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


class _Sequence(nn.Module):
    """Calls ``forward_sequence`` so that functional_call sees per-step outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_sequence(x)


@contextmanager
def _plain_heaviside(model: nn.Module) -> Iterator[None]:
    """Spike with the bare step (no autograd.Function, which vmap cannot batch)."""
    lifs = named_lifs(model)
    saved = [m.spike_strategy for _, m in lifs]
    for _, m in lifs:
        m.spike_strategy = heaviside
    try:
        yield
    finally:
        for (_, m), s in zip(lifs, saved):
            m.spike_strategy = s


def finite_difference_grad(model: nn.Module, weight: str, x: Tensor, y: Tensor, loss_fn: LossFn,
                           coords: Tensor, eps: float = 0.1, chunk_size: int | None = 64) -> Tensor:
    """Central differences ``(L(w + eps e_i) - L(w - eps e_i)) / 2 eps`` for i in ``coords``.

    ``model`` must have ``forward_sequence`` (per-step outputs, as ``loss_fn``
    takes). All 2K perturbed passes are one ``vmap`` over stacked copies of the
    weight (``chunk_size`` copies at a time); BN running statistics are passed
    as per-copy clones so their in-place updates stay private.
    """
    wrapper = _Sequence(model)
    w = dict(wrapper.named_parameters())["net." + weight].detach()
    k = len(coords)
    delta = torch.zeros(k, w.numel(), dtype=w.dtype, device=w.device)
    delta[torch.arange(k, device=w.device), coords.to(w.device)] = eps
    delta = delta.view(k, *w.shape)
    stacked = torch.cat([w + delta, w - delta])  # (2K, *W.shape)
    stats = {n: b for n, b in wrapper.named_buffers() if n.endswith(("running_mean", "running_var", "num_batches_tracked"))}

    def loss_of(wi: Tensor, bufs: dict[str, Tensor]) -> Tensor:
        seq = torch.func.functional_call(wrapper, {"net." + weight: wi, **bufs}, (x,))
        return loss_fn(seq, y)

    batched_stats = {n: b.detach().unsqueeze(0).repeat(2 * k, *([1] * b.dim())) for n, b in stats.items()}
    with torch.no_grad(), _plain_heaviside(model):
        losses = torch.func.vmap(loss_of, chunk_size=chunk_size)(stacked, batched_stats)
    return (losses[:k] - losses[k:]) / (2.0 * eps)


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
    """Options: initial b, its step db, the FDG step eps, the coordinate cap, the vmap chunk."""

    b_init: float = field(default=1.0, metadata={"help": "Dspike: initial temperature b (default 1)"})
    db: float = field(default=0.2, metadata={"help": "Dspike: step of b per epoch (default 0.2)"})
    fdg_eps: float = field(default=0.1, metadata={"help": "Dspike: finite-difference step (default 0.1)"})
    fdg_max_coords: int = field(default=576, metadata={"help": "Dspike: most W1 coordinates in the FDG (default 576)"})
    fdg_chunk: int = field(default=64, metadata={"help": "Dspike: perturbed copies per batched pass (memory)"})
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
