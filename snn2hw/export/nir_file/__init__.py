"""The ``nir`` target: the hub graph itself, written with ``nir.write`` (HDF5); and
``nir-sinabs``: the same network in the reading ``sinabs.from_nir`` has (``to_nir.sinabs_flavour``).

verify (nir): ``nir.read`` the file back, rebuild it with ``nir_to_network`` and compare
its spikes, layer by layer, with the reference on held-out samples; where snnTorch is
installed, its ``import_from_nir`` of the file (``interop.load_in_snntorch``) is compared too
(``details.snntorch``). verify (nir-sinabs): the file run by sinabs itself
(``interop.load_in_sinabs``: from_nir + the three neuron settings NIR cannot carry).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import nir
import numpy as np

from ...errors import ExportError
from ..base import EXACT, MinAgreement, Samples, Verification
from ..from_nir import nir_to_network, node_spikes
from ..nir_reference import node_input_shapes
from ..interop import library_versions, load_in_sinabs, load_in_snntorch, run_sinabs, run_snntorch
from ..reference import compare, run_batched
from ..to_nir import graph_copy, sinabs_flavour

__all__ = ["NIRExporter", "NIRSinabsExporter", "load_in_sinabs", "load_in_snntorch"]


def _in_library(load_run, samples: Samples) -> tuple[dict, object]:
    """Spikes and readout of a library's import of the file, batch by batch."""
    return run_batched(lambda xb: load_run(xb), samples.x, 1 if samples.temporal else 0, 256, cat_axes=(1, 0))


def _agreement(spikes: dict, output, samples: Samples) -> dict:
    ref = samples.reference
    return {"output_agreement": float((output.argmax(1) == ref.output.argmax(1)).float().mean()),
            "spike_mismatches": {k: int((spikes[k].reshape(v.shape) != v).sum())
                                 for k, v in ref.spikes.items() if k in spikes}}



def write_graph(graph: nir.NIRGraph, path: Path) -> Path:
    """``graph`` as a NIR HDF5 file at ``path`` (both flavours write the same way)."""
    nir.write(path, graph)
    return path

class NIRExporter:
    name: ClassVar[str] = "nir"
    description: ClassVar[str] = "NIR 1.0.4 graph (HDF5), surrogate-free, tdBN folded"
    filename: ClassVar[str] = "model.nir"
    grid: ClassVar[type | None] = None   # float: nothing to fine-tune for
    min_agreement: ClassVar[MinAgreement] = EXACT   # the same graph read back: exact

    def check(self, graph: nir.NIRGraph) -> nir.NIRGraph:
        """The plan is the graph itself, as written; refused if we could not rebuild it
        (a file we could not rebuild could not be verified either; names the node and why).
        A Flatten without its input type or a Conv2d without its input_shape (sinabs' to_nir
        writes None, which nir.write cannot store) gets it from a run of the graph on zeros."""
        nir_to_network(graph)
        untyped = [k for k, n in graph.nodes.items()
                   if (isinstance(n, nir.Flatten) and any(v is None for v in (n.input_type or {"input": None}).values()))
                   or (isinstance(n, nir.Conv2d) and n.input_shape is None)]
        if not untyped:
            return graph
        first = next(n for n in graph.nodes.values() if isinstance(n, nir.Input))
        shapes = node_input_shapes(graph, tuple(int(v) for v in np.asarray(first.input_type["input"]).reshape(-1)))
        plan = graph_copy(graph)
        for k in untyped:
            node = plan.nodes[k] = copy.copy(plan.nodes[k])
            if isinstance(node, nir.Conv2d):
                node.input_shape = tuple(int(v) for v in shapes[k][1:])
            else:
                node.input_type = {"input": np.array(shapes[k])}
        return plan

    def write(self, plan: nir.NIRGraph, out_dir: Path) -> list[Path]:
        return [write_graph(plan, Path(out_dir) / self.filename)]

    def verify(self, plan: nir.NIRGraph, out_dir: Path, samples: Samples) -> Verification:
        # the file read back, not the plan: the round trip through HDF5 is what is verified
        back = nir.read(Path(out_dir) / self.filename)
        net = nir_to_network(back, samples.timesteps or None)
        spikes, output = node_spikes(net, samples.x)
        details: dict = {"nodes": len(back.nodes), "edges": len(back.edges)}
        version = library_versions()["snntorch"]
        if version and samples.timesteps:
            def snntorch_run(xb):
                return run_snntorch(load_in_snntorch(back), xb, samples.timesteps, samples.temporal)
            try:
                details["snntorch"] = {"import": f"snntorch import_from_nir {version} (load_in_snntorch)",
                                       **_agreement(*_in_library(snntorch_run, samples), samples)}
            except Exception as exc:  # reported, not fatal: the file is ours, the importer theirs
                details["snntorch"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        return compare(self.name, samples.reference, spikes, output, samples.y, details)

    def readme(self, plan: nir.NIRGraph, files: list[Path]) -> str:
        md = plan.metadata
        return f"""# NIR export

`{self.filename}`: the trained network as a NIR {nir.version} graph (HDF5), written by
{md.get('producer', 'snn2hw')}. Surrogate gradients are dropped (exact step, spike iff
`v > v_threshold`) and threshold-dependent BatchNorm is folded into the synapses.

| metadata | value |
|---|---|
""" + "".join(f"| {k} | {v} |\n" for k, v in md.items()) + f"""
Neurons: `LIF(tau=dt/(1-lam), r=1/(1-lam), v_leak=0)` with dt = {md.get('dt')} s, so one
Euler step of dt is `v <- lam*v + I`; `IF(r=1)` when lam = 1 (read per step as `v <- v + I`).
NIR 1.0.4 cannot express a hard reset: `reset: zero` in the metadata means v is set to 0
after a spike (`subtract` means v -= v_threshold). The prediction is the argmax of the
mean over the {md.get('timesteps')} steps of the output node's current (`readout`).

Load it:

```python
import nir
from snn2hw.export.from_nir import nir_to_network
net = nir_to_network(nir.read("{self.filename}"))   # torch, eval mode
logits = net(x)                                   # x: (B, ...) static or (T, B, ...) events
```

or export it on: `snn2hw export --from-nir {self.filename} --target onnx --out DIR`.

In snnTorch: `snn2hw.export.interop.load_in_snntorch("{self.filename}")` (snnTorch's
`import_from_nir` plus what it reads differently: Flatten's batch axis, IF, the reset, sum
pooling). In sinabs: export with `--target nir-sinabs` (sinabs reads tau in steps). See
docs/interop.md for what each consumer computes without these.
"""


class NIRSinabsExporter:
    """The graph in sinabs' reading of NIR; verified by running sinabs on the file."""

    name: ClassVar[str] = "nir-sinabs"
    description: ClassVar[str] = ("NIR graph for sinabs.from_nir (tau in steps, v >= nextafter(V_th), "
                                  "sum pooling); verified in sinabs")
    filename: ClassVar[str] = "model.nir"
    grid: ClassVar[type | None] = None
    min_agreement: ClassVar[MinAgreement] = EXACT   # sinabs runs the file as we do, spike for spike

    def check(self, graph: nir.NIRGraph) -> nir.NIRGraph:
        """The sinabs flavour of ``graph`` (``to_nir.sinabs_flavour``); refused for nodes
        sinabs 3.1 cannot build (Conv1d: its importer calls torch methods on numpy arrays)."""
        nir_to_network(graph)  # what snn2hw cannot run is refused first, naming the node
        for name, node in graph.nodes.items():
            if isinstance(node, nir.Conv1d):
                raise ExportError(f"NIR node {name!r} is a Conv1d, which sinabs.from_nir cannot build "
                                  "(sinabs 3.1); use --target nir")
        plan = sinabs_flavour(graph)
        nir_to_network(plan)   # snn2hw reads it back exactly (node metadata)
        return plan

    def write(self, plan: nir.NIRGraph, out_dir: Path) -> list[Path]:
        return [write_graph(plan, Path(out_dir) / self.filename)]

    def verify(self, plan: nir.NIRGraph, out_dir: Path, samples: Samples) -> Verification:
        back = nir.read(Path(out_dir) / self.filename)
        version = library_versions()["sinabs"]
        if not version:
            raise ExportError("nir-sinabs --check runs the file in sinabs, which is not installed; "
                              "install sinabs or drop --check")
        T = samples.timesteps or int(back.metadata.get("timesteps", 0))
        spikes, output = _in_library(
            lambda xb: run_sinabs(load_in_sinabs(back, T), xb, T, samples.temporal), samples)
        return compare(self.name, samples.reference, spikes, output, samples.y,
                       {"simulated": f"sinabs from_nir {version} + SingleSpike, MembraneReset/"
                                     "MembraneSubtract(subtract_value=V_th), min_v_mem=None (load_in_sinabs)",
                        "nodes": len(back.nodes)})

    def readme(self, plan: nir.NIRGraph, files: list[Path]) -> str:
        md = plan.metadata
        return f"""# NIR export for sinabs

`{self.filename}`: the trained network as a NIR {nir.version} graph written the way
`sinabs.from_nir` reads NIR (sinabs 3.1): LIF `tau` in time steps with
`exp(-1/tau) == lam` in float32, `v_threshold = nextafter(V_th, +inf)` (sinabs fires on
`v >= thr`, snn2hw on `v > V_th`), average pooling as SumPool2d with 1/k^2 folded into the
next weights, leaky conv neurons' parameters shaped (C, 1, 1) (nir >= 1.0.5 reads the
file with `nir.read(path, type_check=False)`). Node metadata keeps lam, V_th and the reset
({md.get('reset')}), so snn2hw reads it exactly too.

Three settings NIR cannot carry must be set after `sinabs.from_nir` on every IAF/LIF layer:

```python
from snn2hw.export.interop import load_in_sinabs, run_sinabs
net = load_in_sinabs("{self.filename}", timesteps={md.get('timesteps')})  # does the three below
# m.spike_fn = SingleSpike
# m.reset_fn = MembraneReset() (reset zero) or MembraneSubtract(subtract_value=V_th) (subtract)
# m.min_v_mem = None
spikes, logits = run_sinabs(net, x, {md.get('timesteps')})
```

Without them sinabs uses MultiSpike, subtractive reset and an IAF floor at -V_th: see
docs/interop.md for the measured difference.
"""
