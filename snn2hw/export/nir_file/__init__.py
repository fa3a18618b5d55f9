"""The ``nir`` target: the hub graph itself, written with ``nir.write`` (HDF5).

verify: ``nir.read`` the file back, rebuild it with ``nir_to_network`` and compare
its spikes, layer by layer, with the trained model's on held-out samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import nir

from ..base import EXACT, MinAgreement, Samples, Verification
from ..from_nir import nir_to_network, node_spikes
from ..reference import compare


class NIRExporter:
    name: ClassVar[str] = "nir"
    description: ClassVar[str] = "NIR 1.0.4 graph (HDF5), surrogate-free, tdBN folded"
    filename: ClassVar[str] = "model.nir"
    grid: ClassVar[type | None] = None   # float: nothing to fine-tune for
    min_agreement: ClassVar[MinAgreement] = EXACT   # the same graph read back: exact

    def check(self, graph: nir.NIRGraph) -> nir.NIRGraph:
        """The plan is the graph itself, as written; refused if we could not rebuild it
        (a file we could not rebuild could not be verified either; names the node and why)."""
        nir_to_network(graph)
        return graph

    def write(self, plan: nir.NIRGraph, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / self.filename
        nir.write(path, plan)
        return [path]

    def verify(self, plan: nir.NIRGraph, out_dir: Path, samples: Samples) -> Verification:
        # the file read back, not the plan: the round trip through HDF5 is what is verified
        back = nir.read(Path(out_dir) / self.filename)
        net = nir_to_network(back, samples.timesteps or None)
        spikes, output = node_spikes(net, samples.x)
        return compare(self.name, samples.reference, spikes, output, samples.y,
                       {"nodes": len(back.nodes), "edges": len(back.edges)})

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
Consumers that ignore the metadata (sinabs, snnTorch) read dt, tau and the reset their own
way; see docs/targets.md C.
"""
