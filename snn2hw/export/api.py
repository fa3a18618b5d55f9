"""``export_model``: checkpoint (or NIR file) -> target artefact, the same way for every target.

    graph = model_to_nir(model)             # or nir.read(FILE) for --from-nir
    plan = exporter.check(graph)            # ExportError before anything is written
    samples = held-out test split + the float reference run on it   (check=True)
    files = exporter.write(plan, out_dir)
    verification = exporter.verify(plan, out_dir, samples)          (check=True)
    gate(verification, floor, allow_emulator)                       (check=True)
    out_dir/verification.json, out_dir/README.md (exporter.readme(plan, files))
    raise VerificationError if the gate failed                      (after writing)

The dataset is loaded only to draw the ``--check`` samples: a checkpoint records the data
layout and input range the graph needs (``ckpt["data"]``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nir
import torch

from ..core.layers import LIF
from ..data.datasets import DataSplit, load_dataset, to_time_major
from ..errors import ConfigError, ExportError, VerificationError
from ..registry import lookup
from ..models.network import SpikingNetwork
from ..runs.files import atomic_write_text
from ..runs.model import load_model
from . import EXPORTERS
from .base import Exporter, MinAgreement, Samples, Verification
from .from_nir import NIRNetwork, nir_to_network
from .nir_reading import INPUT_ENCODINGS, PRODUCERS, read_input
from .nir_reference import producer_reference
from .qat import attach_grid
from .reference import gate, run_reference
from .to_nir import model_to_nir

DEFAULT_SAMPLES = 200


@dataclass
class ExportResult:
    target: str
    out_dir: Path
    files: list[Path]
    verification: Verification | None
    approximations: list[str] = field(default_factory=list)   # what --approximate changed
    notes: list[str] = field(default_factory=list)            # how a foreign graph was read


def make_exporter(target: str) -> Exporter:
    return lookup(EXPORTERS, target, "target")()


def read_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read`` with one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such NIR file")
    try:
        return nir.read(path)
    except TypeError as exc:
        if "v_reset" not in str(exc):
            raise ExportError(f"{path}: not a readable NIR file (TypeError: {exc})") from None
    except Exception as exc:  # h5py and nir raise many kinds; the user needs the file name
        raise ExportError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None
    try:
        return _read_with_v_reset(path)
    except Exception as exc:
        raise ExportError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


def _read_with_v_reset(path: Path) -> nir.NIRGraph:
    """nir 1.0.4 rejects the ``v_reset`` field newer NIR writes (snnTorch 1.0 does): read it
    aside and keep it as the node attribute ``nir_reading`` honours (a reset to v_reset)."""
    import h5py
    import numpy as np
    from nir.serialization import hdf2dict

    with h5py.File(path, "r") as f:
        data = hdf2dict(f["node"])
    resets = {name: node.pop("v_reset") for name, node in data.get("nodes", {}).items()
              if isinstance(node, dict) and "v_reset" in node}
    graph = nir.dict2NIRNode(data)
    for name, value in resets.items():
        graph.nodes[name].v_reset = np.asarray(value, dtype=np.float64)
    return graph


@dataclass
class Source:
    """What an export starts from: the NIR graph, the float model it is checked against and
    where held-out samples come from."""

    graph: nir.NIRGraph
    reference_model: torch.nn.Module
    dataset: str | None = None      # the dataset spec held-out samples are drawn from
    seed: int = 0                   # its split seed (the run's)
    data: DataSplit | None = None   # already loaded (``dataset=`` given, or an old checkpoint)
    notes: list[str] = field(default_factory=list)   # how a foreign graph was read
    qat: str | None = None          # the target the checkpoint was fine-tuned for (train --qat)

    def held_out_data(self) -> DataSplit | None:
        """The dataset, loaded on first use; None when no dataset is known."""
        if self.data is None and self.dataset:
            self.data = load_dataset(self.dataset, self.seed)
        return self.data


def _reading_options(graph: nir.NIRGraph, producer: str | None, input_encoding: str | None) -> None:
    """Record ``--producer`` / ``--input-encoding`` in the graph's metadata, where the reader
    (``nir_reading``) and every target find them; a graph written by snn2hw says both itself."""
    ours = str(graph.metadata.get("producer", "")).startswith("snn2hw")
    if producer is not None:
        if producer not in PRODUCERS:
            raise ConfigError(f"unknown producer {producer!r}; choose one of {list(PRODUCERS)}")
        if ours:
            raise ConfigError(f"--producer {producer}: the graph was written by "
                              f"{graph.metadata['producer']}, which says how to read it; drop --producer")
        graph.metadata["producer"] = producer
    if input_encoding is not None:
        if input_encoding not in INPUT_ENCODINGS:
            raise ConfigError(f"unknown input encoding {input_encoding!r}; choose one of {list(INPUT_ENCODINGS)}")
        said = graph.metadata.get("input_encoding")
        if ours and said != INPUT_ENCODINGS[input_encoding]:
            raise ConfigError(f"--input-encoding {input_encoding}: the graph was written by snn2hw with "
                              f"input encoding {said!r}; drop --input-encoding")
        graph.metadata["input_encoding"] = INPUT_ENCODINGS[input_encoding]
    found = read_input(graph).timesteps   # a time axis in the Input shape (events)
    if found and not graph.metadata.get("timesteps"):
        graph.metadata["timesteps"] = int(found)


def _source(source: str | Path | SpikingNetwork | nir.NIRGraph, timesteps: int | None,
            dataset: str | None = None, producer: str | None = None,
            input_encoding: str | None = None) -> Source:
    """The graph to export, its float reference model and the dataset to check it on.

    Whether inputs are event frames and the analog input range that targets quantising the
    input need (Loihi's graded spikes; mnist1d spans about [-5.5, 4.5], not [0, 1]) come from
    the checkpoint's ``data`` record. The dataset is loaded here only when ``dataset`` is
    given (its layout then wins) or the checkpoint predates that record. ``producer`` and
    ``input_encoding`` say how to read a NIR graph written by another framework
    (``nir_reading``); a checkpoint refuses them.
    """
    run: dict = {}
    layout: dict | None = None
    if isinstance(source, (str, Path)) and Path(source).suffix == ".nir":
        source = read_nir(source)
    if (producer or input_encoding) and not isinstance(source, nir.NIRGraph):
        raise ConfigError("--producer and --input-encoding say how to read a NIR graph written by "
                          "another framework: use them with --from-nir")
    if isinstance(source, nir.NIRGraph):
        _reading_options(source, producer, input_encoding)
    if not isinstance(source, (nir.NIRGraph, SpikingNetwork)):
        source, ckpt = load_model(source)
        run = ckpt.get("run_config", {})
        layout = ckpt.get("data")
    spec = dataset or run.get("dataset")
    seed = int(run.get("seed", 0))
    data = None
    if spec and (dataset or layout is None):
        data = load_dataset(spec, seed)
        layout = {"temporal": data.temporal, "value_range": data.value_range}
    layout = layout or {}
    value_range = layout.get("value_range")
    if isinstance(source, nir.NIRGraph):
        graph, model = source, None
        if timesteps:
            graph.metadata["timesteps"] = int(timesteps)
    else:
        model = source
        if timesteps:
            model.config.timesteps = int(timesteps)
        foreign = [n for n, m in model.named_modules() if isinstance(m, LIF) and not m.params.native]
        if foreign:   # the writer has no field for them: the graph it wrote would run another neuron
            raise ExportError(f"{foreign[0]}: a neuron read from a foreign graph (>=, MultiSpike, v_reset "
                              "or a clip), which model_to_nir cannot write; export that graph itself "
                              "with --from-nir")
        graph = model_to_nir(model, temporal=bool(layout.get("temporal")))
    # analog frames (direct, or an analog sequence: value_range is None for event counts)
    if value_range and graph.metadata.get("input_encoding", "direct") in ("direct", "temporal"):
        graph.metadata.setdefault("input_range", [float(v) for v in value_range])
    # built now even without --check: it refuses a NIR graph we cannot run, naming the node
    reference = model if model is not None else nir_to_network(graph)
    return Source(graph, reference, spec, seed, data, list(getattr(reference, "notes", [])), run.get("qat"))


def held_out_samples(data: DataSplit, n: int, timesteps: int) -> Samples:
    """The first ``n`` samples of the test split, time-major if temporal."""
    x, y = data.x_test[:n], data.y_test[:n]
    return Samples(to_time_major(x, data.temporal), y, timesteps, data.temporal)


def agreement_floor(exporter: Exporter, min_agreement: float | None) -> MinAgreement:
    """The gate's floor: the target's default (``exporter.min_agreement``) or ``min_agreement``
    for both class and per-layer spike agreement; ConfigError outside [0, 1]."""
    if min_agreement is None:
        return exporter.min_agreement
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ConfigError(f"--min-agreement {min_agreement} is not a fraction: give a value in [0, 1]")
    return MinAgreement(classes=float(min_agreement), spikes=float(min_agreement))


def export_model(source: str | Path | SpikingNetwork | nir.NIRGraph, target: str,
                 out_dir: str | Path, check: bool = False, samples: int | Samples = DEFAULT_SAMPLES,
                 dataset: str | None = None, timesteps: int | None = None,
                 min_agreement: float | None = None, allow_emulator: bool = False,
                 producer: str | None = None, input_encoding: str | None = None,
                 approximate: bool = False) -> ExportResult:
    """Export a checkpoint / run directory / model / NIR graph or ``.nir`` file to ``target``.

    Refusals (ExportError naming the layer, the reason and the fix) happen before
    anything is written. With ``check``, the artefact is run on ``samples`` held-out
    test samples (or a given Samples) and compared with the float model; the result
    is written to ``out_dir/verification.json``. ``dataset`` overrides the checkpoint's
    (needed with a NIR source); ``timesteps`` overrides the graph's.

    The check is a gate (``reference.gate``; docs/export.md "The gate"): class and per-layer
    spike agreement at least ``min_agreement`` (default: the target's ``min_agreement``), the
    target's runtime equal to our model of it spike for spike, no silent or saturated layer,
    matching shapes, and the target's own runtime run (a stand-in such as Loihi's emulator
    only with ``allow_emulator``). When it fails, the artefact, verification.json and README
    are still written, then VerificationError lists the failures.

    A foreign NIR graph is read as ``producer`` ("nir", "snntorch", "sinabs") meant it, with
    inputs arriving as ``input_encoding`` ("direct" frames or "events"). A graph the target
    cannot run exactly is refused with the reason; with ``approximate`` it is deployed with
    the target's nearest semantics, the verification still compares with the graph's own
    (so the agreement shows the loss) and ``approximations`` lists what changed.
    """
    exporter = make_exporter(target)
    if hasattr(exporter, "approximate"):
        exporter.approximate = bool(approximate)
    if not check and (min_agreement is not None or allow_emulator):
        raise ConfigError("--min-agreement and --allow-emulator set the --check gate: add --check")
    floor = agreement_floor(exporter, min_agreement) if check else None
    try:
        src = _source(source, timesteps, dataset, producer, input_encoding)
        plan = exporter.check(src.graph)
    except ExportError as exc:  # name the target once, whoever raised
        msg = str(exc)
        raise ExportError(msg if msg.startswith(f"{target}:") else f"{target}: {msg}") from None

    approximations = list(getattr(plan, "approximations", None) or [])
    prepared: Samples | None = None
    if check:
        T = int(src.graph.metadata.get("timesteps", 0) or 0)
        if isinstance(samples, Samples):
            prepared = samples
        else:
            data = src.held_out_data()
            if data is None:
                raise ConfigError("--check needs held-out samples: give --dataset (the NIR file names none)")
            prepared = held_out_samples(data, int(samples), T)
        # a NIR source is checked against what its producer computes, not against our reading
        if isinstance(src.reference_model, NIRNetwork):
            prepared.reference = producer_reference(src.graph, getattr(src, "producer", None)).run(prepared)
        else:
            prepared.reference = _reference_as_trained(src, exporter, target, prepared)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = exporter.write(plan, out)
    verification = None
    if prepared is not None and floor is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            verification = gate(exporter.verify(plan, out, prepared), floor, allow_emulator)
        verification.details["approximations"] = approximations
        verification.details.setdefault("reference", prepared.reference.source)  # whatever the target wrote
        body = asdict(verification)
        # the verdict first, then the numbers it was judged on
        payload: dict[str, Any] = {"passed": body.pop("passed"), "failures": body.pop("failures"),
                                   "stand_in": body.pop("stand_in"), "min_agreement": asdict(floor),
                                   **body, "files": [p.name for p in files]}
        atomic_write_text(out / "verification.json", json.dumps(payload, indent=2) + "\n")
    readme = exporter.readme(plan, files) + reading_markdown(src.notes, approximations)
    if verification is not None:
        readme += "\n" + verification_markdown(verification)
    atomic_write_text(out / "README.md", readme)
    result = ExportResult(target, out, files, verification, approximations, src.notes)
    if verification is not None and not verification.passed:
        n = len(verification.failures)
        raise VerificationError(
            f"{target}: the check FAILED ({n} failure{'s' * (n != 1)}; written anyway, see "
            f"{out / 'verification.json'}):\n" + "\n".join(f"  - {f}" for f in verification.failures),
            verification.failures, result)
    return result


def _reference_as_trained(src: Source, exporter: Exporter, target: str, samples: Samples):
    """The float model on ``samples``; a model fine-tuned for this target (``train --qat``) runs
    on the target's grid, as it was trained and evaluated (its accuracy is the grid's)."""
    model = src.reference_model
    if src.qat != target or getattr(exporter, "grid", None) is None:
        return run_reference(model, samples)
    grid = exporter.grid()
    if src.graph.metadata.get("input_range"):
        grid.input_range = tuple(float(v) for v in src.graph.metadata["input_range"])
    handle = attach_grid(model, grid)
    try:
        with torch.no_grad():
            ref = run_reference(model, samples)
    finally:
        handle.detach()
    ref.source = f"trained model on the {target} grid (--qat {target})"
    return ref


def verification_markdown(v: Verification) -> str:
    """A short markdown section of a Verification (appended to the README): the verdict and
    its failures, then the numbers."""
    verdict = "PASSED" if v.passed else "FAILED"
    ran = f" ({v.stand_in})" if v.stand_in else ""
    lines = [f"## Verification on {v.samples} samples of the test split{ran}: {verdict}", ""]
    if v.failures:
        lines += ["The check failed:", ""] + [f"- {f}" for f in v.failures] + [""]
    lines += [f"- accuracy, float reference: {v.accuracy_reference:.4f}",
              f"- accuracy, {v.target}{ran}: {v.accuracy_target:.4f}",
              f"- predicted class agreement: {v.output_agreement:.4f}", "",
              "| neuron layer | spike agreement |", "|---|---|"]
    lines += [f"| {k} | {a:.6f} |" for k, a in v.spike_agreement.items()]
    return "\n".join(lines) + "\n"


def reading_markdown(notes: list[str], approximations: list[str]) -> str:
    """README lines on how a foreign graph was read and what ``--approximate`` changed."""
    text = ""
    if notes:
        text += "\n## Reading of the source graph\n\n" + "".join(f"- {n}\n" for n in notes)
    if approximations:
        text += ("\n## Approximations (--approximate)\n\nThe target runs the nearest semantics it has; "
                 "the verification compares with the graph's own, so its agreement is the loss.\n\n"
                 + "".join(f"- {a}\n" for a in approximations))
    return text
