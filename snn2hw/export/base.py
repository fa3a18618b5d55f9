"""The exporter interface: every target starts from the NIR graph (the hub).

An exporter is one module in ``snn2hw/export/`` with a class satisfying
``Exporter`` and one line in the registry (``snn2hw/export/__init__.py``).
``export_model`` in ``snn2hw/export/api.py`` drives them all the same way:

    graph = model_to_nir(model)            # surrogate-free Heaviside LIF, BN folded
    exporter.check(graph)                  # raise ExportError before writing anything
    files = exporter.write(graph, out_dir)  # the target's artefact(s)
    report = exporter.verify(graph, out_dir, samples)   # when --check
    -> out_dir/verification.json, out_dir/README.md
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import Tensor


@dataclass
class Samples:
    """Held-out samples to verify an export on: inputs as the model takes them
    (static (N, ...) or time-major (T, N, ...)), labels, and the timesteps."""

    x: Tensor
    y: Tensor
    timesteps: int
    temporal: bool = False
    reference: Any = None  # export.reference.Reference: the float model's spikes and readout


@dataclass
class Verification:
    """What every export reports (written as verification.json)."""

    target: str
    samples: int
    spike_agreement: dict[str, float]      # per spiking layer: fraction of equal spike values
    output_agreement: float                # fraction of samples whose predicted class matches
    accuracy_reference: float              # the float surrogate-free model
    accuracy_target: float                 # the target's simulator / runtime
    details: dict[str, Any] = field(default_factory=dict)


class Exporter(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]

    def check(self, graph: Any) -> None:
        """Raise ExportError naming the first layer the target cannot run, the reason and the fix."""

    def write(self, graph: Any, out_dir: Path) -> list[Path]:
        """Write the artefact(s); return their paths."""

    def verify(self, graph: Any, out_dir: Path, samples: Samples) -> Verification:
        """Run the artefact on ``samples`` and compare with the float reference."""

    def readme(self, graph: Any, files: list[Path]) -> str:
        """Markdown: what the artefact is and how to run it on the target."""
