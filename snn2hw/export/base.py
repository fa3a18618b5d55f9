"""The exporter interface: every target starts from the NIR graph (the hub).

An exporter is one package in ``snn2hw/export/`` (``loihi/``, ``speck/``, ...) whose
``__init__`` holds a class satisfying ``Exporter``, and one line in the registry
(``snn2hw/export/__init__.py``). ``export_model`` in ``snn2hw/export/api.py`` drives them
all the same way; the target's plan is built once, by ``check``:

    graph = model_to_nir(model)                  # surrogate-free Heaviside LIF, BN folded
    plan = exporter.check(graph)                 # ExportError before writing anything
    files = exporter.write(plan, out_dir)        # the target's artefact(s)
    report = exporter.verify(plan, out_dir, samples)   # when --check
    reference.gate(report, exporter.min_agreement)     # passed / failures: the gate
    text = exporter.readme(plan, files)
    -> out_dir/verification.json, out_dir/README.md
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

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


@dataclass(frozen=True)
class MinAgreement:
    """The least agreement with the float model that a target's ``--check`` accepts: 1.0 where
    the target computes exactly what the float model does, lower (measured, docs/export.md
    "The gate") where it quantises. ``--min-agreement X`` sets both to X."""

    classes: float   # fraction of samples whose predicted class equals the float model's
    spikes: float    # per neuron layer: fraction of equal spike values


EXACT = MinAgreement(classes=1.0, spikes=1.0)


@dataclass
class Verification:
    """What every export reports (written as verification.json).

    ``failures`` are one line each (what, the measured value, the threshold, the fix): those
    of the comparison itself (``reference.compare``: shapes, silent or saturated layers), of
    the target's ``verify`` (its runtime against our model of it) and of the thresholds
    (``reference.gate``, which sets ``passed``). ``passed`` stays False until judged."""

    target: str
    samples: int
    spike_agreement: dict[str, float]      # per spiking layer: fraction of equal spike values
    output_agreement: float                # fraction of samples whose predicted class matches
    accuracy_reference: float              # the float surrogate-free model
    accuracy_target: float                 # the target's simulator / runtime
    details: dict[str, Any] = field(default_factory=dict)
    stand_in: str | None = None            # what ran instead of the target's runtime, e.g.
                                           # "emulator; Lava not run"; None: the runtime ran
    failures: list[str] = field(default_factory=list)
    passed: bool = False


# What a target makes of the graph before writing: e.g. Loihi's quantised LoihiNet, Speck's
# SpeckPlan of chip layers, ONNX's torch rebuild, the NIR graph itself.
Plan = TypeVar("Plan")


class Exporter(Protocol[Plan]):
    """A target. ``check`` does all the reading of the graph (and every refusal); ``write``,
    ``verify`` and ``readme`` work from its plan, so one export reads the graph once."""

    name: ClassVar[str]                 # the registry key and ``--target`` choice
    description: ClassVar[str]          # one line for ``--help``
    grid: ClassVar[type | None]         # the QAT grid class (``train --qat NAME``), None: float target
    min_agreement: ClassVar[MinAgreement]   # the gate's default floor (EXACT unless it quantises)

    def check(self, graph: Any) -> Plan:
        """The target's plan of the NIR ``graph``; raise ExportError naming the first layer the
        target cannot run, the reason and the fix. Writes nothing."""

    def write(self, plan: Plan, out_dir: Path) -> list[Path]:
        """Write the artefact(s) of ``plan`` into the existing ``out_dir``; return their paths."""

    def verify(self, plan: Plan, out_dir: Path, samples: Samples) -> Verification:
        """Run the written artefact on ``samples`` and compare with ``samples.reference``
        (``reference.compare``): spike agreement per neuron node, outputs, accuracies. Add a
        failure for every spike where the target's runtime and our model of it must agree
        and do not (``reference.must_equal``); set ``stand_in`` if the runtime did not run."""

    def readme(self, plan: Plan, files: list[Path]) -> str:
        """Markdown naming ``files``: what the artefact is and how to run it on the target."""
