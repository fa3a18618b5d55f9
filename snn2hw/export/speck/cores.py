"""Speck cores as a sinabs network: each core ``Merge(sources) -> Conv2d -> IAFSqueeze``, its
spikes sum-pooled on the way to each destination (targets.md B.2).

A chain is the case of one source per core; a residual block's merged core has two, joined
by ``sinabs.layers.Merge`` exactly as sinabs' DynapCNN backend joins them
(``dynapcnnnetwork_module.py``: one ``Merge`` per extra input).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Core(nn.Module):
    """One chip layer: the convs of its inputs, the neuron, the pooling of its output.

    ``convs`` has one conv applied to the ``Merge`` of all ``sources`` (the chip), or, for
    ``merged=False``, one conv per source whose currents are added (the block as the float
    model computes it; the exporter's check that the Merge route is exact)."""

    def __init__(self, sources: tuple[int, ...], convs: list[nn.Module], neuron: nn.Module,
                 pool: nn.Module | None, merged: bool = True) -> None:
        super().__init__()
        self.sources, self.merged = tuple(sources), merged
        self.convs = nn.ModuleList(convs)
        self.neuron = neuron
        self.pool = pool


class CoreNetwork(nn.Module):
    """Cores in a topological order; a core without sources reads the input. Returns the last
    core's spikes (before its pooling, which the host does)."""

    def __init__(self, cores: list[Core], exact: bool = True) -> None:
        super().__init__()
        self.cores = nn.ModuleList(cores)
        self.exact = exact

    def forward(self, x: Tensor) -> Tensor:
        import sinabs.layers as sl

        merge = sl.Merge()
        pooled: list[Tensor] = []
        out = x
        for core in self.cores:
            inputs = [pooled[s] for s in core.sources] if core.sources else [x]
            if core.merged:
                joined = inputs[0]
                for more in inputs[1:]:
                    joined = merge(joined, more)
                current = core.convs[0](joined)
            else:
                current = sum(conv(inp) for conv, inp in zip(core.convs, inputs))
            out = core.neuron(current)
            if self.exact:
                out = out.double()   # sinabs' spike functions return float32
            pooled.append(core.pool(out) if core.pool is not None else out)
        return out


class Gain(nn.Module):
    """``x -> g x``: an identity shortcut on a core's integer scale."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain


def conv_layer(weight: Tensor, bias: Tensor | None, stride: int, padding: tuple[int, int],
               dtype: torch.dtype) -> nn.Conv2d:
    """A Conv2d holding ``weight`` (torch layout) and ``bias`` (None: no bias)."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                     padding=padding, bias=bias is not None).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv
