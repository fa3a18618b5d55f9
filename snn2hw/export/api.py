"""``export_model``: checkpoint (or NIR file) -> target artefact, the same way for every target.

    graph = model_to_nir(model)             # or nir.read(FILE) for --from-nir
    plan = exporter.check(graph)            # ExportError before anything is written
    samples = held-out test split + the float reference run on it   (check=True)
    files = exporter.write(plan, out_dir)
    verification = exporter.verify(plan, out_dir, samples)          (check=True)
    out_dir/verification.json, out_dir/README.md (exporter.readme(plan, files))

The dataset is loaded only to draw the ``--check`` samples: a checkpoint records the data
layout and input range the graph needs (``ckpt["data"]``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nir
import torch

from ..data.datasets import DataSplit, load_dataset, to_time_major
from ..errors import ConfigError, ExportError
from ..models.network import SpikingNetwork
from ..runs.files import atomic_write_text
from ..runs.model import load_model
from . import EXPORTERS
from .base import Exporter, Samples, Verification
from .from_nir import NIRNetwork, nir_to_network
from .nir_reference import producer_reference
from .reference import run_reference
from .to_nir import model_to_nir

DEFAULT_SAMPLES = 200


@dataclass
class ExportResult:
    target: str
    out_dir: Path
    files: list[Path]
    verification: Verification | None


def make_exporter(target: str) -> Exporter:
    if target not in EXPORTERS:
        raise ConfigError(f"unknown target {target!r}; choose one of {sorted(EXPORTERS)}")
    return EXPORTERS[target]()


def read_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read`` with one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such NIR file")
    try:
        return nir.read(path)
    except Exception as exc:  # h5py and nir raise many kinds; the user needs the file name
        raise ExportError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


@dataclass
class Source:
    """What an export starts from: the NIR graph, the float model it is checked against and
    where held-out samples come from."""

    graph: nir.NIRGraph
    reference_model: torch.nn.Module
    dataset: str | None = None      # the dataset spec held-out samples are drawn from
    seed: int = 0                   # its split seed (the run's)
    data: DataSplit | None = None   # already loaded (``dataset=`` given, or an old checkpoint)

    def held_out_data(self) -> DataSplit | None:
        """The dataset, loaded on first use; None when no dataset is known."""
        if self.data is None and self.dataset:
            self.data = load_dataset(self.dataset, self.seed)
        return self.data


def _source(source: str | Path | SpikingNetwork | nir.NIRGraph, timesteps: int | None,
            dataset: str | None = None) -> Source:
    """The graph to export, its float reference model and the dataset to check it on.

    Whether inputs are event frames and the analog input range that targets quantising the
    input need (Loihi's graded spikes; mnist1d spans about [-5.5, 4.5], not [0, 1]) come from
    the checkpoint's ``data`` record. The dataset is loaded here only when ``dataset`` is
    given (its layout then wins) or the checkpoint predates that record.
    """
    run: dict = {}
    layout: dict | None = None
    if isinstance(source, (str, Path)) and Path(source).suffix == ".nir":
        source = read_nir(source)
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
        graph = model_to_nir(model, temporal=bool(layout.get("temporal")))
    if value_range and graph.metadata.get("input_encoding", "direct") == "direct":
        graph.metadata.setdefault("input_range", [float(v) for v in value_range])
    # built now even without --check: it refuses a NIR graph we cannot run, naming the node
    reference = model if model is not None else nir_to_network(graph)
    return Source(graph, reference, spec, seed, data)


def held_out_samples(data: DataSplit, n: int, timesteps: int) -> Samples:
    """The first ``n`` samples of the test split, time-major if temporal."""
    x, y = data.x_test[:n], data.y_test[:n]
    return Samples(to_time_major(x, data.temporal), y, timesteps, data.temporal)


def export_model(source: str | Path | SpikingNetwork | nir.NIRGraph, target: str,
                 out_dir: str | Path, check: bool = False, samples: int | Samples = DEFAULT_SAMPLES,
                 dataset: str | None = None, timesteps: int | None = None) -> ExportResult:
    """Export a checkpoint / run directory / model / NIR graph or ``.nir`` file to ``target``.

    Refusals (ExportError naming the layer, the reason and the fix) happen before
    anything is written. With ``check``, the artefact is run on ``samples`` held-out
    test samples (or a given Samples) and compared with the float model; the result
    is written to ``out_dir/verification.json``. ``dataset`` overrides the checkpoint's
    (needed with a NIR source); ``timesteps`` overrides the graph's.
    """
    exporter = make_exporter(target)
    try:
        src = _source(source, timesteps, dataset)
        plan = exporter.check(src.graph)
    except ExportError as exc:  # name the target once, whoever raised
        msg = str(exc)
        raise ExportError(msg if msg.startswith(f"{target}:") else f"{target}: {msg}") from None

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
        prepared.reference = (producer_reference(src.graph, getattr(src, "producer", None)).run(prepared)
                              if isinstance(src.reference_model, NIRNetwork)
                              else run_reference(src.reference_model, prepared))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = exporter.write(plan, out)
    verification = None
    if prepared is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            verification = exporter.verify(plan, out, prepared)
        verification.details.setdefault("reference", prepared.reference.source)  # whatever the target wrote
        payload: dict[str, Any] = asdict(verification)
        payload["files"] = [p.name for p in files]
        atomic_write_text(out / "verification.json", json.dumps(payload, indent=2) + "\n")
    readme = exporter.readme(plan, files)
    if verification is not None:
        readme += "\n" + verification_markdown(verification)
    atomic_write_text(out / "README.md", readme)
    return ExportResult(target, out, files, verification)


def verification_markdown(v: Verification) -> str:
    """A short markdown table of a Verification (appended to the README)."""
    lines = [f"## Verification on {v.samples} held-out samples", "",
             f"- accuracy, float reference: {v.accuracy_reference:.4f}",
             f"- accuracy, {v.target}: {v.accuracy_target:.4f}",
             f"- predicted class agreement: {v.output_agreement:.4f}", "",
             "| neuron layer | spike agreement |", "|---|---|"]
    lines += [f"| {k} | {a:.6f} |" for k, a in v.spike_agreement.items()]
    return "\n".join(lines) + "\n"
