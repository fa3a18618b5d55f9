"""``export_model``: checkpoint (or NIR file) -> target artefact, the same way for every target.

    graph = model_to_nir(model)             # or nir.read(FILE) for --from-nir
    exporter.check(graph)                   # ExportError before anything is written
    samples = held-out test split + the float reference run on it   (check=True)
    files = exporter.write(graph, out_dir)
    verification = exporter.verify(graph, out_dir, samples)         (check=True)
    out_dir/verification.json, out_dir/README.md
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nir
import torch

from ..data.datasets import load_dataset
from ..errors import ConfigError, ExportError
from ..models.network import SpikingNetwork
from ..train.checkpoint import atomic_write_text
from ..train.trainer import load_model, to_time_major
from . import EXPORTERS
from .base import Exporter, Samples, Verification
from .from_nir import nir_to_network
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


def _source(source: str | Path | SpikingNetwork | nir.NIRGraph, timesteps: int | None
            ) -> tuple[nir.NIRGraph, torch.nn.Module, dict]:
    """(graph, float reference model, checkpoint run config or {})."""
    if isinstance(source, (str, Path)) and Path(source).suffix == ".nir":
        source = read_nir(source)
    if isinstance(source, nir.NIRGraph):
        if timesteps:
            source.metadata["timesteps"] = int(timesteps)
        return source, nir_to_network(source), {}
    if isinstance(source, SpikingNetwork):
        model, run = source, {}
    else:
        model, ckpt = load_model(source)
        run = ckpt.get("run_config", {})
    if timesteps:
        model.config.timesteps = int(timesteps)
    spec = str(run.get("dataset", ""))
    graph = model_to_nir(model, temporal=_is_temporal(spec))
    if spec and graph.metadata.get("input_encoding") == "direct" and "input_range" not in graph.metadata:
        # targets that quantise analog input (Loihi's graded spikes) need its range;
        # the training inputs give it (mnist1d spans about [-5.5, 4.5], not [0, 1])
        data = load_dataset(spec, int(run.get("seed", 0)))
        graph.metadata["input_range"] = [float(data.x_train.min()), float(data.x_train.max())]
    return graph, model, run


def _is_temporal(spec: str) -> bool:
    """Only npz datasets hold event sequences; their flag is read without loading the arrays."""
    path = spec[4:] if spec.startswith("npz:") else spec if spec.endswith(".npz") else ""
    if not path or not Path(path).exists():
        return False
    import numpy as np

    with np.load(path) as arrays:
        return bool(arrays["temporal"]) if "temporal" in arrays.files else False


def held_out_samples(dataset: str, seed: int, n: int, timesteps: int) -> Samples:
    """The first ``n`` samples of the dataset's test split, time-major if temporal."""
    data = load_dataset(dataset, seed)
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
        graph, reference_model, run = _source(source, timesteps)
        exporter.check(graph)
    except ExportError as exc:  # name the target once, whoever raised
        msg = str(exc)
        raise ExportError(msg if msg.startswith(f"{target}:") else f"{target}: {msg}") from None

    prepared: Samples | None = None
    if check:
        T = int(graph.metadata.get("timesteps", 0) or 0)
        if isinstance(samples, Samples):
            prepared = samples
        else:
            spec = dataset or run.get("dataset")
            if not spec:
                raise ConfigError("--check needs held-out samples: give --dataset (the NIR file names none)")
            prepared = held_out_samples(spec, int(run.get("seed", 0)), int(samples), T)
        prepared.reference = run_reference(reference_model, prepared)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = exporter.write(graph, out)
    verification = None
    if prepared is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            verification = exporter.verify(graph, out, prepared)
        payload: dict[str, Any] = asdict(verification)
        payload["files"] = [p.name for p in files]
        atomic_write_text(out / "verification.json", json.dumps(payload, indent=2) + "\n")
    readme = exporter.readme(graph, files)
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
