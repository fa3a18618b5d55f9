"""The interop conformance matrix (docs/interop.md): small graphs made by snnTorch, sinabs and
snn2hw, each sent through every target with ``--check``, the target's run compared with the
producer's own simulation of the graph (``export.nir_reference.producer_reference``).

    PYTHONPATH=. .venv/bin/python benchmarks/interop_matrix.py --out docs/interop.md

snnTorch 1.0.0's exporter needs nir >= 1.0.5 (it writes ``v_reset``): it runs in a subprocess
with the ``.venv/nir-latest`` overlay (scripts/setup; or ``--overlay DIR``), on the very
network built here, and the file's ``v_reset`` datasets are then deleted so that nir 1.0.4
reads it. Every cell's text comes from the export itself: the verification's numbers, or the
first line of the refusal; an exception that is not an snn2hw error is printed as a bug.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nir
import torch
from torch import Tensor, nn

from snn2hw.data.datasets import load_dataset
from snn2hw.errors import Snn2hwError, VerificationError
from snn2hw.export.api import export_model
from snn2hw.export.nir_reading import PRODUCERS
from snn2hw.export.base import Samples
from snn2hw.export.interop import library_versions
from snn2hw.export.nir_reference import producer_reference
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model

COMMAND = "PYTHONPATH=. .venv/bin/python benchmarks/interop_matrix.py --out docs/interop.md"
TARGETS = ("nir", "onnx", "loihi", "speck")
T, N = 8, 100
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Source:
    """A graph from some producer, and the producer's own run of the network it came from."""

    name: str
    producer: str
    graph: nir.NIRGraph
    original: Callable[[Tensor], Tensor] | None   # static (B, ...) -> readout (B, K), or None
    flat_input: bool                              # the graph takes (B, 64), not (B, 1, 8, 8)
    how: str


# ---- snnTorch ----

_EXPORT = """
import sys, torch, h5py
sys.path.insert(0, sys.argv[5])
from interop_matrix import snntorch_net
from snntorch.export_nir import export_to_nir
import nir
net, _ = snntorch_net(sys.argv[4])
net.load_state_dict(torch.load(sys.argv[1]))
sample, path = torch.load(sys.argv[2]), sys.argv[3]
nir.write(path, export_to_nir(net, sample, ignore_dims=[0]))
with h5py.File(path, "r+") as f:   # nir 1.0.4 has no v_reset: delete it (the importer resets to 0 anyway)
    for name in list(f["node/nodes"]):
        if "v_reset" in f["node/nodes"][name]:
            del f["node/nodes"][name]["v_reset"]
"""


def _snntorch_run(net: nn.Module, x: Tensor) -> Tensor:
    import snntorch.utils

    snntorch.utils.reset(net)
    with torch.no_grad():
        return torch.stack([net(x) for _ in range(T)]).mean(0)


def snntorch_net(name: str) -> tuple[nn.Module, bool]:
    """The snnTorch network called ``name`` (also built in the exporter's subprocess: snnTorch
    modules hold closures, so only their state_dict travels) and whether it takes (B, 64)."""
    import snntorch as snn

    def leaky(beta: float, shape: tuple[int, ...], reset: str) -> nn.Module:
        # per-neuron tensors: snnTorch's exporter fails type inference on scalar beta
        return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.ones(shape), init_hidden=True,
                         reset_mechanism=reset)

    mlp = lambda beta, reset: nn.Sequential(nn.Linear(64, 32), leaky(beta, (32,), reset), nn.Linear(32, 10))  # noqa: E731
    if name == SNNTORCH_NETS[3]:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), leaky(0.9, (4, 8, 8), "zero"), nn.AvgPool2d(2),
                             nn.Flatten(), nn.Linear(64, 10)), False
    beta, reset = {SNNTORCH_NETS[0]: (0.9, "zero"), SNNTORCH_NETS[1]: (0.9, "subtract"),
                   SNNTORCH_NETS[2]: (1.0, "zero")}[name]
    return mlp(beta, reset), True


SNNTORCH_NETS = ("snnTorch MLP, Leaky beta=0.9, reset zero", "snnTorch MLP, Leaky beta=0.9, reset subtract",
                 "snnTorch MLP, Leaky beta=1.0, reset zero", "snnTorch conv, Conv2d-Leaky-AvgPool2d-Flatten-Linear")


def snntorch_sources(overlay: Path, tmp: Path) -> list[Source]:
    out = []
    env = dict(os.environ, PYTHONPATH=f"{overlay}{os.pathsep}{ROOT}")
    for i, name in enumerate(SNNTORCH_NETS):
        torch.manual_seed(i)
        net, flat = snntorch_net(name)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.weight.mul_(3.0)
        sample = torch.zeros((1, 64) if flat else (1, 1, 8, 8))
        torch.save(net.state_dict(), tmp / f"net{i}.pt")
        torch.save(sample, tmp / f"sample{i}.pt")
        path = tmp / f"snntorch{i}.nir"
        res = subprocess.run([sys.executable, "-c", _EXPORT, str(tmp / f"net{i}.pt"), str(tmp / f"sample{i}.pt"),
                              str(path), name, str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{name}: snnTorch export failed: {res.stderr.strip().splitlines()[-1]}")
        out.append(Source(name, "snntorch", nir.read(path), lambda x, net=net: _snntorch_run(net, x), flat,
                          "snnTorch 1.0.0 export_to_nir (nir 1.0.8 overlay), v_reset deleted"))
    return out


# ---- sinabs ----

def _sinabs_run(net: nn.Module, x: Tensor) -> Tensor:
    for m in net.modules():
        if hasattr(m, "reset_states"):
            m.reset_states()
    flat = x.unsqueeze(1).expand(x.shape[0], T, *x.shape[1:]).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        return net(flat).reshape(x.shape[0], T, -1).mean(1)


def sinabs_sources() -> list[Source]:
    import sinabs
    import sinabs.layers as sl

    nets = {
        "sinabs MLP, IAF": (lambda: nn.Sequential(nn.Linear(64, 32), sl.IAFSqueeze(num_timesteps=T),
                                                  nn.Linear(32, 10)), True),
        "sinabs conv, IAF + SumPool2d": (lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), sl.IAFSqueeze(num_timesteps=T), sl.SumPool2d(2),
            nn.Flatten(), nn.Linear(64, 10)), False),
    }
    out = []
    for i, (name, (make, flat)) in enumerate(nets.items()):
        torch.manual_seed(10 + i)
        net = make()
        sample = torch.zeros((T, 64) if flat else (T, 1, 8, 8))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            net(sample)
            g = sinabs.to_nir(net, sample)
        out.append(Source(name, "sinabs", g, lambda x, net=net: _sinabs_run(net, x), flat,
                          f"sinabs {sinabs.__version__} to_nir (in memory)"))
    return out


def snn2hw_sources() -> list[Source]:
    out = []
    for name, cfg in {"snn2hw MLP, lam=0.9, hard reset": ModelConfig(arch="mlp", input_shape=(1, 8, 8), hidden=(32,),
                                                                      lam=0.9, timesteps=T),
                      "snn2hw conv, IF, soft reset, avg pool": ModelConfig(arch="conv", input_shape=(1, 8, 8),
                                                                           channels=(4,), lam=1.0, reset="soft",
                                                                           pool="avg", timesteps=T)}.items():
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        out.append(Source(name, "snn2hw", model_to_nir(model), lambda x, m=model: m(x).detach(), False,
                          "snn2hw model_to_nir"))
    return out


# ---- the matrix ----

def cell(src: Source, target: str, samples: Samples, out: Path, used: list[str]) -> str:
    """The export's own words: verification numbers, or the refusal's first line; the
    reference the check used is appended to ``used``."""
    # read as the producer meant it (--producer); the floor at 0 so that the cell shows the
    # measured agreement; the target's runtime must still equal our model of it
    producer = src.producer if src.producer in PRODUCERS else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = export_model(src.graph, target, out, check=True, samples=samples, timesteps=T,
                             producer=producer, min_agreement=0.0).verification
    except VerificationError as exc:
        return "check FAILED: " + exc.failures[0].replace("|", "/")[:200]
    except Snn2hwError as exc:
        return "refused: " + str(exc).splitlines()[0].replace("|", "/")
    except Exception as exc:  # not ours to hide: a bug to fix
        return f"**bug** {type(exc).__name__}: " + (str(exc).splitlines() or [""])[0].replace("|", "/")[:160]
    used.append(v.details.get("reference", "?"))
    worst = min(v.spike_agreement.values()) if v.spike_agreement else float("nan")
    if v.output_agreement == 1.0 and worst == 1.0:
        return f"exact ({_num(v.details.get('max_abs_output_difference'))})"
    return (f"class agreement {v.output_agreement:.2f}, spikes {worst:.6f}, "
            f"max abs logit diff {_num(v.details.get('max_abs_output_difference'))}")


def _num(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3g}"


def importer_vs_original(src: Source, x: Tensor) -> str:
    """Does the producer's own import of the graph (the reference) reproduce its network?"""
    if src.original is None:
        return "-"
    try:
        ref = producer_reference(src.graph, src.producer)
        got = ref.run(Samples(x, torch.zeros(len(x), dtype=torch.long), T)).output
        want = src.original(x)
    except Exception as exc:
        return f"{type(exc).__name__}: " + (str(exc).splitlines() or [""])[0][:120]
    agree = float((got.argmax(1) == want.argmax(1)).float().mean())
    return f"class agreement {agree:.2f}, max abs diff {float((got - want).abs().max()):.3g}"


def ours_in_their_importers(x: Tensor) -> list[tuple[str, list[str]]]:
    """Our graphs loaded in sinabs and snnTorch as they are (``ours=False``) and with
    ``load_in_sinabs`` / ``load_in_snntorch`` (``ours=True``), against our model."""
    from snn2hw.export.from_nir import node_spikes
    from snn2hw.export.interop import load_in_sinabs, load_in_snntorch, run_sinabs, run_snntorch

    models = {"MLP lam=0.9 hard": ModelConfig(arch="mlp", input_shape=(1, 8, 8), hidden=(32,), lam=0.9, timesteps=T),
              "MLP lam=0.5 soft": ModelConfig(arch="mlp", input_shape=(1, 8, 8), hidden=(32,), lam=0.5,
                                              reset="soft", timesteps=T),
              "conv lam=0.8 hard, avg pool": ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4,), lam=0.8,
                                                         pool="avg", timesteps=T),
              "conv IF soft, sum pool": ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4,), lam=1.0,
                                                    reset="soft", pool="sum", timesteps=T)}
    runs = {"sinabs from_nir as is": lambda g, ours: run_sinabs(load_in_sinabs(g, T, ours), x, T),
            "snnTorch import_from_nir as is (B=1)": lambda g, ours: run_snntorch(load_in_snntorch(g, ours), x[:1], T),
            "load_in_sinabs": lambda g, ours: run_sinabs(load_in_sinabs(g, T, ours), x, T),
            "load_in_snntorch": lambda g, ours: run_snntorch(load_in_snntorch(g, ours), x, T)}
    rows = []
    for name, cfg in models.items():
        torch.manual_seed(1)
        model = build_model(cfg).eval()
        g = model_to_nir(model)
        ref_spikes, ref_out = node_spikes(model, x)
        cells = []
        for label, run in runs.items():
            ours = label.startswith("load_in")
            n = 1 if "B=1" in label else len(x)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    spikes, out = run(g, ours)
            except Exception as exc:
                cells.append(f"{type(exc).__name__}: " + (str(exc).splitlines() or [""])[0][:80].replace("|", "/"))
                continue
            wrong = sum(int((spikes[k].reshape(r[:, :n].shape) != r[:, :n]).sum()) for k, r in ref_spikes.items())
            total = sum(r[:, :n].numel() for r in ref_spikes.values())
            agree = float((out.reshape(n, -1).argmax(1) == ref_out[:n].argmax(1)).float().mean())
            cells.append("exact" if wrong == 0 and agree == 1.0 else
                         f"{wrong / total:.2%} spikes differ, class agreement {agree:.2f}")
        rows.append((name, cells))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the markdown page here (default: print)")
    ap.add_argument("--overlay", type=Path, default=ROOT / ".venv" / "nir-latest",
                    help="pip --target dir with nir 1.0.8 + nirtorch (for snnTorch's exporter)")
    args = ap.parse_args()
    print(f"# regenerate: {COMMAND}", flush=True)
    torch.set_num_threads(2)
    data = load_dataset("digits")
    x, y = data.x_test[:N].float(), data.y_test[:N]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        sources = snn2hw_sources() + sinabs_sources()
        if (args.overlay / "nir").is_dir():
            sources += snntorch_sources(args.overlay, tmp)
        else:
            print(f"no overlay at {args.overlay}: snnTorch rows left out (run scripts/setup)", flush=True)
        rows = []
        for src in sources:
            xs = x.flatten(1) if src.flat_input else x
            samples = Samples(xs, y, T)
            used: list[str] = []
            cells = [cell(src, t, samples, tmp / f"{len(rows)}_{t}", used) for t in TARGETS]
            ref = " / ".join(dict.fromkeys(used)) or producer_reference(src.graph, src.producer).name
            rows.append((src, ref, importer_vs_original(src, xs), cells))
            print(f"{src.name}: {ref}: " + " | ".join(cells), flush=True)
        theirs = ours_in_their_importers(x)
    page = render(rows, theirs)
    if args.out:
        args.out.write_text(page)
    else:
        print(page)
    return 0


def render(rows: list, theirs: list) -> str:
    v = library_versions()
    lines = [
        "# Interop conformance matrix", "",
        f"Generated by `benchmarks/interop_matrix.py`; regenerate with `{COMMAND}`.", "",
        f"Versions: sinabs {v['sinabs']}, snntorch {v['snntorch']}, nir {v['nir']}, nirtorch {v['nirtorch']}. "
        f"{N} digits test images, T = {T}, random weights (spiking, not trained: agreement is what is measured).", "",
        "Each graph goes through `export_model(graph, target, check=True)`. The reference is the "
        "producer's own simulation of the graph (`producer_reference`: sinabs `from_nir` or snnTorch "
        "`import_from_nir` with their defaults; the NIR definitions, Euler at dt, for snn2hw's "
        "graphs). \"exact\": every spike and every predicted class equal (max abs logit difference in "
        "brackets); otherwise the measured agreement; \"refused\": the export's one-line refusal; "
        "\"check FAILED\": the target's runtime differed from our model of it. Foreign graphs are read "
        "with `--producer` set to the library that wrote them.", "",
        "| graph (how it was made) | reference | reference vs the producer's network | "
        + " | ".join(TARGETS) + " |",
        "|---|---|---|" + "---|" * len(TARGETS),
    ]
    for src, ref, orig, cells in rows:
        lines.append(f"| {src.name} ({src.how}) | {ref} | {orig} | " + " | ".join(cells) + " |")
    lines += ["", "## snn2hw's files in sinabs and snnTorch", "",
              "Random-weight snn2hw models written by `model_to_nir`, loaded by each library's own importer "
              "as is, and with `snn2hw.export.interop.load_in_sinabs` / `load_in_snntorch` (which read the "
              "sinabs flavour and set what NIR cannot carry; see docs/export.md), compared with the model "
              "spike by spike. snnTorch's importer as is flattens the batch axis, so it runs one sample.", "",
              "| model | sinabs as is | snnTorch as is (1 sample) | load_in_sinabs | load_in_snntorch |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in theirs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
