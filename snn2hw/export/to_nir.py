"""The hub: a trained SpikingNetwork as a surrogate-free NIR graph (nir 1.0.4).

What the graph says (targets.md C):

* Surrogates are dropped: NIR neurons fire on the exact strict step ``v > v_thr``.
* tdBN (eval) is folded into the preceding synapse: ``BN(W x + b) = g W x + (g b + o)``
  with ``(g, o) = TDBatchNorm.fold_factors()``, computed in float64.
* LIF with leak ``lam < 1``: ``LIF(tau=dt/(1-lam), r=1/(1-lam), v_leak=0, v_threshold=V_th)``
  with ``dt = 1e-4``; forward Euler with step dt then gives exactly ``v <- lam v + I``.
  ``lam = 1``: ``IF(r=1, v_threshold=V_th)``, read per step as ``v <- v + r I``.
* nir 1.0.4 has no ``v_reset``: the reset (``zero`` = hard, ``subtract`` = soft) is in
  the graph metadata, as are dt, lam, the spike rule ``>``, the timesteps, the input
  encoding and the readout (``mean_current``: the logits are the mean over T of the
  last Affine's output). Each neuron node also carries ``{lam, v_th, reset}`` so that
  our importer restores the exact floats.
* Node names are the torch module paths (``layers.3``, ``layers.5.out``), so spikes
  recorded with ``record_spikes`` on the trained model are keyed like the graph's
  neuron nodes.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np
import torch
from torch import nn

from ..version import __version__
from ..core.layers import LIF, Pool, ResidualBlock, TDBatchNorm
from ..errors import ExportError
from ..models.network import SpikingNetwork

DT = 1e-4
RESET_NAMES = {"hard": "zero", "soft": "subtract"}


def _out_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output shape of ``layer`` (run once on zeros, eval mode)."""
    if isinstance(layer, LIF):
        return shape
    with torch.no_grad():
        if getattr(layer, "temporal", False):
            return tuple(layer(torch.zeros(1, 1, *shape)).shape[2:])
        return tuple(layer(torch.zeros(1, *shape)).shape[1:])


def _synapse(layer: nn.Module, bn: TDBatchNorm | None, shape: tuple[int, ...]) -> nir.NIRNode:
    """Affine / Conv node with the following tdBN folded in (float64 arithmetic)."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        w, b = bn.fold_into(w, b)
    w_np, b_np = w.numpy().astype(np.float32), b.numpy().astype(np.float32)
    if isinstance(layer, nn.Linear):
        return nir.Affine(weight=w_np, bias=b_np)
    if isinstance(layer, nn.Conv1d):
        return nir.Conv1d(input_shape=int(shape[1]), weight=w_np, stride=int(layer.stride[0]),
                          padding=layer.padding if isinstance(layer.padding, str) else int(layer.padding[0]),
                          dilation=int(layer.dilation[0]), groups=int(layer.groups), bias=b_np)
    return nir.Conv2d(input_shape=tuple(int(s) for s in shape[1:]), weight=w_np,
                      stride=tuple(int(s) for s in layer.stride),
                      padding=layer.padding if isinstance(layer.padding, str) else tuple(int(p) for p in layer.padding),
                      dilation=tuple(int(d) for d in layer.dilation), groups=int(layer.groups), bias=b_np)


def _neuron(lif: LIF, shape: tuple[int, ...], dt: float) -> nir.NIRNode:
    ones = np.ones(shape, dtype=np.float64)
    meta = {"lam": float(lif.lam), "v_th": float(lif.v_th), "reset": RESET_NAMES[lif.reset]}
    if lif.lam == 1.0:
        return nir.IF(r=ones, v_threshold=lif.v_th * ones, metadata=meta)
    return nir.LIF(tau=dt / (1.0 - lif.lam) * ones, r=ones / (1.0 - lif.lam), v_leak=0.0 * ones,
                   v_threshold=lif.v_th * ones, metadata=meta)


def _pool(layer: nn.Module, shape: tuple[int, ...], where: str) -> nir.NIRNode:
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        out = layer.output_size if isinstance(layer.output_size, tuple) else (layer.output_size,) * 2
        if tuple(out) != (1, 1):
            raise ExportError(f"{where}: AdaptiveAvgPool2d to {out} has no NIR node; only global pooling (1, 1) maps")
        k = np.array(shape[1:], dtype=np.int64)
        return nir.AvgPool2d(kernel_size=k, stride=k, padding=np.zeros(2, dtype=np.int64))
    if layer.mode == "max":
        raise ExportError(f"{where}: max pooling has no NIR node and no neuromorphic target runs it; "
                          "retrain with --pool avg or --pool sum")
    if layer.dims == 1:
        # NIR has no 1-D pooling: a depthwise Conv1d with kernel 1/k (avg) or 1 (sum) is the same map.
        c = shape[0]
        w = np.full((c, 1, layer.k), 1.0 / layer.k if layer.mode == "avg" else 1.0, dtype=np.float32)
        return nir.Conv1d(input_shape=int(shape[1]), weight=w, stride=layer.k, padding=0, dilation=1,
                          groups=c, bias=np.zeros(c, dtype=np.float32), metadata={"pool": layer.mode})
    k = np.array([layer.k, layer.k], dtype=np.int64)
    cls = nir.AvgPool2d if layer.mode == "avg" else nir.SumPool2d
    return cls(kernel_size=k, stride=k, padding=np.zeros(2, dtype=np.int64))


def _chain(layers: list[nn.Module], prefix: str, shape: tuple[int, ...], dt: float,
           nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]], src: str
           ) -> tuple[str, tuple[int, ...]]:
    """Append ``layers`` after node ``src``; return the last node's name and output shape."""
    i = 0
    while i < len(layers):
        layer, name = layers[i], f"{prefix}{i}"
        where = f"layer {i} ({name}, {type(layer).__name__})"
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        bn = nxt if isinstance(nxt, TDBatchNorm) else None
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            node = _synapse(layer, bn, shape)
            i += 1 if bn is not None else 0
        elif isinstance(layer, LIF):
            node = _neuron(layer, shape, dt)
        elif isinstance(layer, (Pool, nn.AdaptiveAvgPool2d)):
            node = _pool(layer, shape, where)
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1:
                raise ExportError(f"{where}: only Flatten(start_dim=1) maps to NIR")
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0,
                               end_dim=layer.end_dim - 1 if layer.end_dim > 0 else layer.end_dim)
        elif isinstance(layer, ResidualBlock):
            # NIR sums the inputs of a node: body and shortcut both feed the block's neuron.
            body, _ = _chain(list(layer.body), f"{name}.body.", shape, dt, nodes, edges, src)
            short, _ = _chain(list(layer.shortcut), f"{name}.shortcut.", shape, dt, nodes, edges, src)
            out_shape = _out_shape(layer, shape)
            nodes[f"{name}.out"] = _neuron(layer.out, out_shape, dt)
            edges += [(body, f"{name}.out"), (short, f"{name}.out")]
            src, shape = f"{name}.out", out_shape
            i += 1
            continue
        elif isinstance(layer, TDBatchNorm):
            raise ExportError(f"{where}: tdBN that does not follow a conv/linear layer cannot be folded")
        elif isinstance(layer, nn.Identity):
            i += 1
            continue
        else:
            raise ExportError(f"{where}: no NIR mapping for {type(layer).__name__}")
        nodes[name] = node
        edges.append((src, name))
        shape = _out_shape(layer, shape)
        src = name
        i += 1
    return src, shape


def model_to_nir(model: SpikingNetwork, dt: float = DT, temporal: bool = False) -> nir.NIRGraph:
    """The surrogate-free, BN-folded NIR graph of ``model`` (see module docstring).

    ``temporal``: the inputs are event frames (T, B, ...) rather than one static
    frame repeated T times (direct encoding); recorded in the metadata.
    Raises ExportError naming the layer for constructs NIR cannot express.
    """
    cfg = model.config
    was_training = model.training
    model.eval()  # shape probing must not touch BN running statistics
    try:
        shape = tuple(int(s) for s in cfg.input_shape)
        nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(shape)})}
        edges: list[tuple[str, str]] = []
        last, out_shape = _chain(list(model.layers), "layers.", shape, dt, nodes, edges, "input")
    finally:
        model.train(was_training)
    nodes["output"] = nir.Output(output_type={"output": np.array(out_shape)})
    edges.append((last, "output"))
    lifs = model.lif_layers()
    lams = {float(m.lam) for m in lifs}
    metadata: dict[str, Any] = {
        "producer": f"snn2hw {__version__}",
        "dt": float(dt),
        "lam": lams.pop() if len(lams) == 1 else -1.0,  # -1: differs per layer (see node metadata)
        "v_th": float(cfg.v_th),
        "reset": RESET_NAMES[cfg.reset],
        "spike": ">",
        "timesteps": int(cfg.timesteps),
        "readout": "mean_current",
        "input_encoding": "temporal" if temporal else "direct",
        "arch": cfg.arch,
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)

