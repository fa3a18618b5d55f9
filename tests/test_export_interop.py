"""Our NIR files in the libraries people load them with, and the ``--from-nir --check`` reference.

References: the trained model's own spikes and logits (``node_spikes``), sinabs 3.1.3 and
snnTorch 1.0.0 running the file, nir 1.0.8 + the newest nirtorch in a subprocess (the
``.venv/nir-latest`` overlay of scripts/setup), and a hand-computed LIF trajectory.
"""

from __future__ import annotations

import json
import keyword
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from torch import nn

from export_models import trained
from snn2hw.export.api import export_model
from snn2hw.export.base import Samples
from snn2hw.export.from_nir import nir_to_network, node_spikes
from snn2hw.export.interop import load_in_sinabs, load_in_snntorch, run_sinabs, run_snntorch
from snn2hw.export.nir_reference import EulerReference, detect_producer, producer_reference
from snn2hw.export.to_nir import model_to_nir, sinabs_flavour, sinabs_tau
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["mlp", "conv", "conv_if"]   # lam 0.7 hard; lam 0.8 sum pool tdBN; IF soft avg pool


def overlay() -> Path | None:
    """The nir 1.0.8 + newest nirtorch overlay (scripts/setup), or SNN2HW_NIR_LATEST."""
    for p in (os.environ.get("SNN2HW_NIR_LATEST"), ROOT / ".venv" / "nir-latest", Path(sys.prefix) / "nir-latest"):
        if p and (Path(p) / "nir").is_dir():
            return Path(p)
    return None


def _written(kind: str, tmp: Path) -> tuple[Path, nn.Module, Samples]:
    model, samples = trained(kind)
    path = tmp / f"{kind}.nir"
    nir.write(path, model_to_nir(model))
    return path, model, samples


def _assert_same(model: nn.Module, samples: Samples, spikes: dict, logits: torch.Tensor) -> None:
    ref_spikes, ref_logits = node_spikes(model, samples.x)
    assert set(ref_spikes) <= set(spikes)
    for k, ref in ref_spikes.items():
        assert ref.sum() > 0
        assert torch.equal(spikes[k].reshape(ref.shape).float(), ref.float()), k
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))
    torch.testing.assert_close(logits.float(), ref_logits.float(), rtol=0, atol=1e-5)


def test_node_names_are_accepted_by_every_consumer():
    for cfg in (ModelConfig(arch="mlp", input_shape=(8,), hidden=(6,)),
                ModelConfig(arch="resnet19", input_shape=(3, 8, 8), width=2, timesteps=2)):
        g = model_to_nir(build_model(cfg))
        for name in g.nodes:
            assert name.isidentifier() and not keyword.iskeyword(name) and "." not in name, name
        nn.ModuleDict({name: nn.Identity() for name in g.nodes})   # what nirtorch 2.0 builds
        assert "layers_3_out" in g.nodes or "layers_2" in g.nodes


def test_a_file_with_dotted_names_still_loads(tmp_path):
    model, samples = trained("mlp")
    g = model_to_nir(model)
    dotted = nir.NIRGraph(nodes={k.replace("_", "."): v for k, v in g.nodes.items()},
                          edges=[(a.replace("_", "."), b.replace("_", ".")) for a, b in g.edges], metadata=g.metadata)
    nir.write(tmp_path / "old.nir", dotted)
    back = nir.read(tmp_path / "old.nir")
    assert "layers.2" in back.nodes
    spikes, logits = node_spikes(nir_to_network(back), samples.x)
    assert set(spikes) == {"layers.2", "layers.4"}
    spikes, logits = run_snntorch(load_in_snntorch(back), samples.x, samples.timesteps)
    _assert_same(model, samples, spikes, logits)


@pytest.mark.parametrize("kind", KINDS)
def test_snntorch_import_predicts_as_we_do(kind, tmp_path):
    path, model, samples = _written(kind, tmp_path)
    spikes, logits = run_snntorch(load_in_snntorch(path), samples.x, samples.timesteps)
    _assert_same(model, samples, spikes, logits)


def test_snntorch_import_as_is_loads_our_names_but_needs_the_fixes(tmp_path):
    path, model, samples = _written("mlp", tmp_path)
    net = load_in_snntorch(path, ours=False)     # no KeyError on our node names any more
    one = Samples(samples.x[:1], samples.y[:1], samples.timesteps)   # its Flatten flattens the batch axis
    spikes, logits = run_snntorch(net, one.x, one.timesteps)
    ref_spikes, ref_logits = node_spikes(model, one.x)
    assert torch.equal(spikes["layers_2"].reshape(ref_spikes["layers_2"].shape), ref_spikes["layers_2"])


@pytest.mark.parametrize("kind", KINDS)
def test_sinabs_from_nir_predicts_as_we_do(kind, tmp_path):
    path, model, samples = _written(kind, tmp_path)
    spikes, logits = run_sinabs(load_in_sinabs(path, samples.timesteps), samples.x, samples.timesteps)
    _assert_same(model, samples, spikes, logits)


def test_sinabs_tau_gives_sinabs_our_leak_exactly():
    for lam in (0.5, 0.7, 0.8, 0.9, 0.95):
        tau = sinabs_tau(lam)
        assert torch.exp(-1.0 / torch.tensor(np.float32(tau))) == torch.tensor(lam, dtype=torch.float32)


def test_nir_sinabs_target_is_verified_in_sinabs(tmp_path):
    model, samples = trained("conv_if")
    result = export_model(model, "nir-sinabs", tmp_path, check=True, samples=samples)
    v = result.verification
    assert v.details["simulated"].startswith("sinabs from_nir") and v.details["reference"] == "trained model"
    assert v.output_agreement == 1.0 and set(v.spike_agreement.values()) == {1.0}
    g = nir.read(tmp_path / "model.nir")
    assert g.metadata["flavour"] == "sinabs"
    assert not any(isinstance(n, nir.AvgPool2d) for n in g.nodes.values())
    # plain sinabs with its own defaults (MultiSpike, subtract, IAF floor) computes something else
    spikes, _ = run_sinabs(load_in_sinabs(g, samples.timesteps, ours=False), samples.x, samples.timesteps)
    ref, _ = node_spikes(model, samples.x)
    assert any(not torch.equal(spikes[k].reshape(r.shape), r) for k, r in ref.items())


def test_nir_target_reports_snntorch_agreement(tmp_path):
    model, samples = trained("mlp")
    v = export_model(model, "nir", tmp_path, check=True, samples=samples).verification
    assert v.details["snntorch"]["output_agreement"] == 1.0
    assert set(v.details["snntorch"]["spike_mismatches"].values()) == {0}


# in nir 1.0.8 + newest nirtorch: snnTorch runs our file; snn2hw reads the sinabs flavour
# (tau in steps: for sinabs, not snnTorch), which needs type_check=False
_OVERLAY_SCRIPT = """
import sys, json, nir, nirtorch, torch
from snn2hw.export.interop import load_in_snntorch, run_snntorch
from snn2hw.export.from_nir import nir_to_network, node_spikes
T, x, plain, flavoured = int(sys.argv[1]), torch.load(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {plain: run_snntorch(load_in_snntorch(nir.read(plain)), x, T),
        flavoured: node_spikes(nir_to_network(nir.read(flavoured, type_check=False)), x)}
out = {"nir": nir.version, "nirtorch": nirtorch.__version__}
for path, (spikes, logits) in runs.items():
    out[path] = {"spikes": {k: v.tolist() for k, v in spikes.items()}, "pred": logits.argmax(1).tolist()}
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_newest_nir_reads_our_files_and_snntorch_predicts_as_we_do(kind, tmp_path):
    site = overlay()
    if site is None:
        pytest.skip("no nir-latest overlay: run scripts/setup (or set SNN2HW_NIR_LATEST to a "
                    "pip --target dir holding nir 1.0.8 and the newest nirtorch)")
    path, model, samples = _written(kind, tmp_path)
    flavoured = tmp_path / f"{kind}_sinabs.nir"
    nir.write(flavoured, sinabs_flavour(model_to_nir(model)))
    torch.save(samples.x, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    res = subprocess.run([sys.executable, "-c", _OVERLAY_SCRIPT, str(samples.timesteps), str(tmp_path / "x.pt"),
                          str(path), str(flavoured)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["nir"] != nir.version   # really the other nir
    ref_spikes, ref_logits = node_spikes(model, samples.x)
    for p in (str(path), str(flavoured)):
        assert out[p]["pred"] == ref_logits.argmax(1).tolist()
        for k, ref in ref_spikes.items():
            assert torch.equal(torch.tensor(out[p]["spikes"][k]).reshape(ref.shape), ref), (p, k)


# ---- the --from-nir --check reference ----

def test_euler_reference_follows_the_nir_lif_definition():
    """One LIF, tau = 2e-4, r = 2, dt = 1e-4 (v <- 0.5 v + I), v_th = 1, I = 0.6 each step:
    v = 0.6, 0.9, 1.05 -> spike, subtract: 0.05, then 0.625; zero reset: 0, then 0.6."""
    lif = lambda reset: nir.LIF(tau=np.array([2e-4]), r=np.array([2.0]), v_leak=np.zeros(1),  # noqa: E731
                                v_threshold=np.ones(1), metadata={"reset": reset})
    for reset, last in (("subtract", 0.625), ("zero", 0.6)):
        g = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([1])}), "lif": lif(reset),
                                "output": nir.Output(output_type={"output": np.array([1])})},
                         edges=[("input", "lif"), ("lif", "output")], metadata={"dt": 1e-4})
        sim = EulerReference(g, 1e-4)
        spikes, _ = sim.run(torch.tensor([[0.6]]), 5, temporal=False)
        assert spikes["lif"].flatten().tolist() == [0, 0, 1, 0, 0]
        assert sim.name == "nir definitions (Euler, dt=0.0001)"
        state: dict = {}
        from snn2hw.export.nir_reference import _neuron, _step_neuron
        n = _neuron(g.nodes["lif"], None)
        for _ in range(4):
            _step_neuron(n, np.array([0.6]), state, 1e-4)
        assert state["v"][0] == pytest.approx(last, abs=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "conv_if"])
def test_from_nir_check_of_our_file_is_against_the_nir_definitions(kind, tmp_path):
    path, model, samples = _written(kind, tmp_path)
    v = export_model(str(path), "onnx", tmp_path / "out", check=True, samples=samples).verification
    written = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert written["details"]["reference"] == "nir definitions (Euler, dt=0.0001)"
    assert v.output_agreement == 1.0 and set(v.spike_agreement.values()) == {1.0}


def test_from_nir_check_of_a_sinabs_graph_is_against_sinabs(tmp_path):
    import sinabs
    import sinabs.layers as sl

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), sl.IAFSqueeze(batch_size=1), nn.Linear(16, 10), sl.IAFSqueeze(batch_size=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net(torch.zeros(1, 1, 8, 8))
        g = sinabs.to_nir(net, torch.zeros(1, 1, 8, 8))
    assert detect_producer(g) == "sinabs"
    assert producer_reference(g).name == f"sinabs from_nir {sinabs.__version__}"
    _, samples = trained("mlp")
    v = export_model(g, "onnx", tmp_path, check=True, samples=Samples(samples.x, samples.y, 4),
                     timesteps=4).verification
    assert v.details["reference"] == f"sinabs from_nir {sinabs.__version__}"
    assert producer_reference(g, "nir").name.startswith("nir definitions (Euler, dt=")


@pytest.mark.parametrize("lam,reset", [(1.0, "hard"), (1.0, "soft"), (0.5, "soft")])
def test_ties_and_negative_membranes_read_as_ours(lam, reset):
    """Hand-made inputs where the rules differ: v == V_th exactly (ours: no spike; sinabs and
    snnTorch fire on >= unless the threshold is nextafter'd) and v < -V_th (sinabs' IAF floor):
    channel 0 (lam .5): v = 0.5, 1.0; channel 2 (IF): v = 0.5, 1.0; channel 1: -3 then +2.5."""
    model = build_model(ModelConfig(arch="mlp", input_shape=(4,), hidden=(3,), num_classes=2, timesteps=4,
                                    lam=lam, reset=reset, v_th=1.0)).eval()
    lin1, lin2 = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        lin1.weight.copy_(torch.eye(3, 4)), lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[1.0, 0, 1], [0, 1, 0]])), lin2.bias.zero_()
    x = torch.zeros(4, 2, 4)     # time-major events
    x[:2, :, 0] = torch.tensor([0.5, 0.75])[:, None]
    x[:2, :, 1] = torch.tensor([-3.0, 2.5])[:, None]
    x[:2, :, 2] = 0.5
    g = model_to_nir(model, temporal=True)
    ref_spikes, ref_logits = node_spikes(model, x)
    for spikes, logits in (run_sinabs(load_in_sinabs(g, 4), x, 4, temporal=True),
                           run_snntorch(load_in_snntorch(g), x, 4, temporal=True)):
        assert torch.equal(spikes["layers_2"].reshape(ref_spikes["layers_2"].shape), ref_spikes["layers_2"])
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-6)
    plain, _ = run_sinabs(load_in_sinabs(g, 4, ours=False), x, 4, temporal=True)
    assert not torch.equal(plain["layers_2"].reshape(ref_spikes["layers_2"].shape), ref_spikes["layers_2"])
