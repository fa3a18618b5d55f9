"""Identity residual blocks on Speck cores through sinabs' ``Merge`` (exact on the integer grid).

A BasicBlock computes ``x' = IAF(conv2(s) + x)`` with ``s`` the spikes of its body's last
neuron and ``x`` the spikes entering the block. A Speck core takes several inputs only
through ``sinabs.layers.Merge`` (``connectivity_specs.LAYER_TYPES_WITH_MULTIPLE_INPUTS``),
which adds the spike streams *before* the core's one conv, padding the one with fewer
channels with zero channels at the end (``layers/merge.py``). So:

* the body's last core gets ``C_x`` extra output channels in front, the core whose spikes
  enter the block ``C_b`` after its own, all with zero weights and biases (they never
  fire): ``s_pad = [0, s]``, ``x_pad = [x, 0]``, the same shape, as sinabs'
  ``DynapcnnNetwork`` requires of a Merge's inputs; the body's first core reads x_pad's
  extra channels with zero weights;
* ``Merge(x_pad, s_pad) = [x, s]``: the two streams occupy disjoint channel ranges;
* the merged core's kernel is ``[I | W2]``: the identity (a 1 at the kernel's centre, from
  channel c of x to output channel c) on x's channels and conv2 on s's,
  so ``conv([x, s]) = x + conv2(s)``, exactly, after rounding as well (one scale per core).

Refused (one line naming the block, the limit and the fix): a shortcut with layers (a 1x1
conv or BN: no neuron, so no core, and the sum is of currents); a body without a neuron;
a block that changes the map size or channel count; a branch that does not start at a
core's neuron. Each core then sends its spikes to at most 2 cores (the next body and the
next merged core), the chip's ``MAX_DESTINATIONS``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ExportError

# the cores are constraints.SpeckLayer objects (constraints imports this module, not the reverse)
SpeckLayer = Any

# a core's neuron (or pooling) layer sends its spikes to at most 2 cores
# (sinabs backend/dynapcnn exceptions.MaxDestinationsReached, chips/dynapcnn.py)
MAX_DESTINATIONS = 2


def check_block(block: tuple[list[str], list[str], str], origin: str | None,
                layers: list[SpeckLayer]) -> int:
    """The index of the core whose spikes enter the block (the identity shortcut's source);
    ExportError for a block Speck cannot run."""
    body, shortcut, merge = block
    if shortcut:
        raise ExportError(
            f"speck: residual block ending in {merge!r} has a shortcut with layers {shortcut}; a Speck core "
            "joins inputs only by adding spike streams (sinabs Merge), so only identity shortcuts map "
            "exactly: use identity blocks (same channels, stride 1; --model resnet_small)")
    if not layers or origin != layers[-1].neuron_node or layers[-1].pool != 1:
        raise ExportError(
            f"speck: residual block ending in {merge!r} branches from {origin!r}, not from a core's neuron; "
            "the identity shortcut must carry a core's spikes unpooled: branch right after a neuron")
    return len(layers) - 1


def join(layers: list[SpeckLayer], origin: int, merge: str) -> None:
    """Turn the last core (the block's conv2 + neuron, just read as a chain core) into the
    merged core of the block, padding the body's last core (module docstring)."""
    core, body_last = layers[-1], layers[-2] if len(layers) >= 2 else None
    if body_last is None or body_last.index <= origin:
        raise ExportError(f"speck: residual block ending in {merge!r} has no neuron in its body; "
                          "a Speck core needs one between the shortcut's source and the sum: "
                          "use BasicBlocks (conv, neuron, conv)")
    x = layers[origin]
    k = core.weight.shape[2]
    same = (core.neuron_shape == x.neuron_shape and core.stride == 1 and k % 2 == 1
            and core.padding == (k // 2, k // 2) and not core.linear)
    if not same:
        raise ExportError(f"speck: residual block ending in {merge!r} maps {x.neuron_shape} to "
                          f"{core.neuron_shape} (kernel {k}, stride {core.stride}, padding {core.padding}); "
                          "an identity shortcut needs the same channels and map size: use stride 1, "
                          "odd kernels with padding k // 2 and no channel change in the block")
    c_x, c_b = x.neuron_shape[0], body_last.neuron_shape[0]
    identity = np.zeros((c_x, c_x, k, k), dtype=np.float32)
    identity[np.arange(c_x), np.arange(c_x), k // 2, k // 2] = 1.0
    pad_outputs(x, 0, c_b)
    for reader in layers[origin + 1:-1]:
        if origin in reader.sources:   # the body's first core reads x's padding as zeros
            reader.weight = merged_weight([(origin, reader.weight)], [x.channels], c_x + c_b)
            reader.in_shape = (reader.weight.shape[1], *reader.in_shape[1:])
    pad_outputs(body_last, c_x, 0)
    core.parts = [(origin, identity), (body_last.index, core.weight)]
    core.weight = merged_weight(core.parts, [x.channels, body_last.channels], c_x + c_b)
    core.sources = (origin, body_last.index)
    core.in_shape = (core.weight.shape[1], *core.in_shape[1:])


def pad_outputs(layer: SpeckLayer, before: int, after: int) -> None:
    """Give ``layer`` silent output channels (zero weights and bias) ``before`` and ``after``
    its own, so that its spikes land on channels [before, before + C) of a Merge whose two
    inputs have the same shape (sinabs' DynapcnnNetwork requires it)."""
    w, b = layer.weight, layer.bias
    c = w.shape[0]
    layer.weight = np.concatenate([np.zeros((before, *w.shape[1:]), dtype=w.dtype), w,
                                   np.zeros((after, *w.shape[1:]), dtype=w.dtype)])
    layer.bias = np.concatenate([np.zeros(before, dtype=b.dtype), b, np.zeros(after, dtype=b.dtype)])
    layer.neuron_shape = (before + c + after, *layer.neuron_shape[1:])
    layer.channels = (before, c)


def merged_weight(parts: list[tuple[int, np.ndarray]], ranges: list[tuple[int, int]],
                  width: int) -> np.ndarray:
    """The kernel over the ``Merge`` of the sources (``width`` channels, the sum of the padded
    streams): source j's part on the input channels where its spikes land,
    ``ranges[j] = (offset, count)``; zero elsewhere."""
    w0 = parts[0][1]
    w = np.zeros((w0.shape[0], width, *w0.shape[2:]), dtype=np.float32)
    for (_, part), (off, count) in zip(parts, ranges):
        w[:, off:off + count] += part.astype(np.float32)
    return w
