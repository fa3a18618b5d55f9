"""The ``onnx`` target: the Heaviside LIF network unrolled over a fixed T (targets.md D).

The graph is rebuilt in torch (``nir_to_network``, exact step) and traced with the
legacy exporter (``dynamo=False``, opset 17): the time loop of ``core.neuron`` is
unrolled, so every step is explicit Gemm/Conv, Mul/Add (leak, reset), Greater + Cast
(the spike). Only the batch axis is dynamic; T is fixed (a dynamic T with a traced
loop is silently wrong). Outputs: ``logits`` (B, K) = mean over T of the readout,
then ``spikes_<node>`` (T, B, ...) per neuron layer.

verify: onnxruntime runs the file on the held-out samples; spikes and logits are
compared with the torch rebuild (must be identical: any spike that differs fails the
check) and with the trained model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import nir
import numpy as np
import torch
from torch import Tensor, nn

from ...core.layers import CUBA, LIF, RecurrentSpiking, ResidualBlock
from ...core.neuron import LIFState, lif_step
from ...core.surrogate import heaviside
from ..base import EXACT, MinAgreement, Samples, Verification
from ..from_nir import NIRNetwork, nir_to_network, node_spikes
from ..reference import compare, must_equal, run_batched

OPSET = 17
TORCH_FIX = ("the ONNX file does not compute what the torch rebuild does (changed after writing, or a "
             "bug of the exporter or of onnxruntime); export again, and report it if it persists")


class _Unrolled(nn.Module):
    """net -> (logits, spikes per neuron layer), evaluated step by step.

    Each step runs the layers on (B, ...) tensors and calls ``core.neuron.lif_step``;
    the batched (T*B) path of SpikingNetwork reshapes with traced sizes, which the
    legacy exporter freezes to the example batch. Same arithmetic per element.
    """

    def __init__(self, net: NIRNetwork) -> None:
        super().__init__()
        self.net = net
        # a CUBA or recurrent layer's spikes are recorded under the module path of the LIF inside it
        self.inner = {int(p.split(".")[1]): p for p in net.node_names
                      if isinstance(net.layers[int(p.split(".")[1])], (CUBA, RecurrentSpiking))}

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        layers = list(self.net.layers)
        static = x.dim() == len(self.net.config.input_shape) + 1
        first = next((i for i, m in enumerate(layers) if getattr(m, "temporal", False)), len(layers))
        if static:  # direct encoding: the stateless prefix sees the same frame every step
            for layer in layers[:first]:
                x = layer(x)
        start = first if static else 0
        states: dict[str, LIFState] = {}
        spikes: dict[str, list[Tensor]] = {p: [] for p, m in self.net.named_modules() if isinstance(m, LIF)}
        outputs = []
        for t in range(self.net.timesteps):
            h = x if static else x[t]
            for i in range(start, len(layers)):
                layer = layers[i]
                if isinstance(layer, LIF):
                    h = _neuron_step(layer, h, f"layers.{i}", states, spikes)
                elif isinstance(layer, ResidualBlock):
                    h = _residual_step(layer, h, f"layers.{i}", states, spikes)
                elif isinstance(layer, (CUBA, RecurrentSpiking)):
                    h, states[f"layers.{i}"] = _stateful_step(layer, h, states.get(f"layers.{i}"))
                    spikes[self.inner[i]].append(h)
                else:
                    h = layer(h)
            outputs.append(h)
        logits = torch.stack(outputs).mean(0)
        return (logits, *[torch.stack(spikes[p]) for p in self.net.node_names])


def _neuron_step(lif: LIF, c: Tensor, path: str, states: dict[str, LIFState],
                 spikes: dict[str, list[Tensor]]) -> Tensor:
    """One ``lif_step`` of the neuron layer at module path ``path``; records its spikes."""
    state = states.get(path, LIFState(c * 0, c * 0))  # u[0] = s[0] = 0, batch-shaped
    s, states[path] = lif_step(c, state, lif.params, heaviside)
    spikes[path].append(s)
    return s


def _branch_step(layers: nn.ModuleList, h: Tensor, path: str, states: dict[str, LIFState],
                 spikes: dict[str, list[Tensor]]) -> Tensor:
    """One step through a residual branch (stateless layers and neurons); empty: identity."""
    for j, layer in enumerate(layers):
        h = _neuron_step(layer, h, f"{path}.{j}", states, spikes) if isinstance(layer, LIF) else layer(h)
    return h


def _residual_step(block: ResidualBlock, h: Tensor, path: str, states: dict[str, LIFState],
                   spikes: dict[str, list[Tensor]]) -> Tensor:
    """One step of ``LIF(body(h) + shortcut(h))``: the sum is traced as one ONNX ``Add``."""
    body = _branch_step(block.body, h, f"{path}.body", states, spikes)
    shortcut = _branch_step(block.shortcut, h, f"{path}.shortcut", states, spikes)
    return _neuron_step(block.out, body + shortcut, f"{path}.out", states, spikes)




def _stateful_step(layer: nn.Module, c: Tensor, state: tuple | None) -> tuple[Tensor, tuple]:
    """One step of a CUBA or recurrent layer on (B, n) currents, the arithmetic of its torch
    forward: CUBA filters ``i <- alpha i + c`` then runs its LIF's step (its full parameters,
    as ``CUBA.forward``); a recurrent layer adds ``W_rec s[t-1]`` (``addmm``, a Gemm) and calls
    its neuron's ``step``, whose state carries ``s[t-1]``. ``state`` None: t = 0, all zero."""
    if isinstance(layer, CUBA):
        i, lif_state = state if state is not None else (c * 0, LIFState(c * 0, c * 0))
        i = layer.alpha * i + c
        s, lif_state = lif_step(i, lif_state, layer.lif.params, heaviside)
        return s, (i, lif_state)
    neuron_state = state if state is not None else layer.neuron.initial_state(c)
    s, neuron_state = layer.neuron.step(torch.addmm(c, neuron_state.s, layer.recurrent.weight.t()), neuron_state)
    return s, neuron_state


def output_names(net: NIRNetwork) -> list[str]:
    return ["logits"] + [f"spikes_{net.node_names[p]}" for p in net.node_names]


def write_onnx(net: NIRNetwork, path: Path, temporal: bool = False) -> Path:
    """Write the rebuilt network ``net`` as an unrolled ONNX model at ``path``."""
    shape = tuple(net.config.input_shape)
    T = net.timesteps
    dummy = torch.zeros((T, 2, *shape) if temporal else (2, *shape))
    batch_axis = 1 if temporal else 0
    names = output_names(net)
    axes = {"input": {batch_axis: "batch"}, "logits": {0: "batch"}}
    axes.update({n: {1: "batch"} for n in names[1:]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated; it is the one that unrolls exactly
        torch.onnx.export(_Unrolled(net), (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=names, dynamic_axes=axes,
                          do_constant_folding=False)
    return path


def export_onnx(graph: nir.NIRGraph, path: Path, temporal: bool = False) -> NIRNetwork:
    """Write ``graph`` as an unrolled ONNX model at ``path``; return the torch rebuild."""
    net = nir_to_network(graph)
    write_onnx(net, path, temporal)
    return net


def run_onnx(path: Path, x: Tensor, batch_size: int = 256, temporal: bool = False
             ) -> tuple[dict[str, Tensor], Tensor]:
    """Run the ONNX file in onnxruntime: (spikes per node name, logits)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(xb: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        out = [torch.from_numpy(a) for a in session.run(names, {"input": xb.numpy().astype(np.float32)})]
        return {name[len("spikes_"):]: out[j] for j, name in enumerate(names) if j > 0}, out[0]

    spikes, logits = run_batched(run, x, 1 if temporal else 0, batch_size, cat_axes=(1, 0))
    return spikes, logits


class ONNXExporter:
    name: ClassVar[str] = "onnx"
    description: ClassVar[str] = f"ONNX (opset {OPSET}), time loop unrolled for fixed T; onnxruntime"
    filename: ClassVar[str] = "model.onnx"
    grid: ClassVar[type | None] = None   # float: nothing to fine-tune for
    min_agreement: ClassVar[MinAgreement] = EXACT   # the float network, unrolled: exact

    def check(self, graph: nir.NIRGraph) -> NIRNetwork:
        """The plan is the torch rebuild of ``graph`` (what is traced and what the file must equal).

        Chains, residual blocks (``from_nir.graph_plan``; the block's sum is an ``Add``) and
        recurrent cycles (neuron <-> Linear: a layer unrolled step by step like the rest);
        refuses other branching graphs, unknown nodes and a missing T (the loop is unrolled),
        naming them."""
        return nir_to_network(graph)

    def write(self, plan: NIRNetwork, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / self.filename
        return [write_onnx(plan, path, plan.metadata.get("input_encoding") == "temporal")]

    def verify(self, plan: NIRNetwork, out_dir: Path, samples: Samples) -> Verification:
        path = Path(out_dir) / self.filename
        spikes, logits = run_onnx(path, samples.x, temporal=samples.temporal)
        t_spikes, t_logits = node_spikes(plan, samples.x)
        torch_mismatch, runtime_failures = must_equal("onnxruntime and the torch rebuild", spikes,
                                                      t_spikes, TORCH_FIX)
        details = {"opset": OPSET, "timesteps": plan.timesteps, "spike_mismatches_vs_torch": torch_mismatch}
        if logits.shape == t_logits.shape:   # otherwise compare() names the wrong readout shape
            details["max_abs_logit_difference_vs_torch"] = float((logits - t_logits).abs().max())
        v = compare(self.name, samples.reference, spikes, logits, samples.y, details)
        v.failures[:0] = runtime_failures
        return v

    def readme(self, plan: NIRNetwork, files: list[Path]) -> str:
        md = plan.metadata
        temporal = md.get("input_encoding") == "temporal"
        shape = "(T, batch, ...) event frames" if temporal else "(batch, ...) one static frame (direct encoding)"
        return f"""# ONNX export

`{self.filename}`: the surrogate-free spiking network, opset {OPSET}, with its time loop
unrolled for T = {md.get('timesteps')} steps (legacy torch exporter). Each step is the
synapse (Gemm/Conv), the leak and reset (Mul/Sub/Add, lam = {md.get('lam')}, reset
`{md.get('reset')}`) and the spike `Greater(v, V_th)` + `Cast`. T is fixed; the batch is dynamic.

- input `input`: {shape}, float32
- output `logits`: (batch, classes), the mean over T of the readout current
- outputs `spikes_<layer>`: (T, batch, ...) 0/1 spikes of each neuron layer

Run it:

```python
import onnxruntime as ort
session = ort.InferenceSession("{self.filename}")
logits, *spikes = session.run(None, {{"input": x.astype("float32")}})
```
"""
