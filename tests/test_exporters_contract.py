"""The contract every registered exporter keeps, checked for each entry of EXPORTERS (a new
target is picked up by registering it): check -> plan, write -> files, verify -> a consistent
Verification, readme -> markdown naming the files, refusals name the node and write nothing."""

from __future__ import annotations

import warnings

import nir
import numpy as np
import pytest

from export_models import trained
from xylo_graphs import cuba_graph, samples_for
from snn2hw.errors import ExportError
from snn2hw.export import EXPORTERS
from snn2hw.export.api import export_model
from snn2hw.export.base import Samples, Verification
from snn2hw.export.reference import run_reference
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models import ModelConfig, build_model

N_SAMPLES = 6   # Loihi's verify starts Lava in a subprocess: keep its run short
NEURONS = (nir.LIF, nir.IF, nir.CubaLIF)


# targets that cannot run the IAF MLP: a hand-built graph of theirs and its float reference
# (Xylo: recurrent CUBA layers, <= 16 inputs; snnTorch's RSynaptic shape)
OWN_GRAPH = {"xylo": lambda: cuba_graph(np.random.default_rng(0), sizes=(4, 12), classes=3, scale=0.3)}


def _own_case(name):
    graph = OWN_GRAPH[name]()
    x = np.random.default_rng(1).uniform(0, 1, (N_SAMPLES, 4))
    samples = samples_for(graph, x, np.zeros(N_SAMPLES, dtype=np.int64))
    samples.y = samples.reference.output.argmax(1)
    return graph, samples


@pytest.fixture(scope="module", params=sorted(EXPORTERS))
def exported(request, tmp_path_factory):
    """One export per target, step by step as export_model drives it, on a tiny IAF MLP
    trained 1 epoch on digits (or the target's own graph, OWN_GRAPH):
    (name, graph, samples, plan, out_dir, files, verification, readme)."""
    name = request.param
    if name in OWN_GRAPH:
        graph, samples = _own_case(name)
    else:
        model, held_out = trained("mlp_iaf")
        samples = Samples(held_out.x[:N_SAMPLES], held_out.y[:N_SAMPLES], model.timesteps)
        samples.reference = run_reference(model, samples)
        graph = model_to_nir(model)
    exporter = EXPORTERS[name]()
    out = tmp_path_factory.mktemp(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # speck warns about biases; not what is checked here
        plan = exporter.check(graph)
        files = exporter.write(plan, out)
        verification = exporter.verify(plan, out, samples)
    return name, graph, samples, plan, out, files, verification, exporter.readme(plan, files)


def test_registry_entries_are_named_described_and_say_their_grid():
    assert EXPORTERS, "no exporter registered"
    for key, cls in EXPORTERS.items():
        assert cls.name == key and cls.description.strip()
        assert cls.grid is None or callable(getattr(cls.grid, "quantise", None)), key


def test_check_returns_a_plan(exported):
    _, _, _, plan, *_ = exported
    assert plan is not None


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_export_model_builds_the_plan_once_and_hands_it_on(name, tmp_path, monkeypatch):
    """The driver calls check once, with the graph, and gives write, verify and readme the
    very plan it returned (verify only for the NIR file: the others' runtimes are slow)."""
    calls: list[tuple[str, object]] = []

    class Recording(EXPORTERS[name]):
        def check(self, graph):
            plan = super().check(graph)
            calls.append(("check", plan))
            return plan

        def write(self, plan, out_dir):
            calls.append(("write", plan))
            return super().write(plan, out_dir)

        def verify(self, plan, out_dir, samples):
            calls.append(("verify", plan))
            return super().verify(plan, out_dir, samples)

        def readme(self, plan, files):
            calls.append(("readme", plan))
            return super().readme(plan, files)

    monkeypatch.setitem(EXPORTERS, name, Recording)
    model, held_out = trained("mlp_iaf")
    check = name == "nir"
    samples = Samples(held_out.x[:N_SAMPLES], held_out.y[:N_SAMPLES], model.timesteps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_model(OWN_GRAPH[name]() if name in OWN_GRAPH else model, name, tmp_path / "out",
                     check=check, samples=samples)
    steps = ["check", "write"] + (["verify"] if check else []) + ["readme"]
    assert [step for step, _ in calls] == steps
    assert calls[0][1] is not None and all(plan is calls[0][1] for _, plan in calls)


def test_write_produces_files_in_out_dir(exported):
    _, _, _, _, out, files, _, _ = exported
    assert files
    for path in files:
        assert path.parent == out and path.is_file() and path.stat().st_size > 0, path


def test_verify_reports_a_consistent_verification(exported):
    name, graph, samples, _, _, _, v, _ = exported
    n = len(samples.y)
    assert isinstance(v, Verification) and v.target == name and v.samples == n
    assert set(v.spike_agreement) == {k for k, node in graph.nodes.items() if isinstance(node, NEURONS)}
    for value in (*v.spike_agreement.values(), v.output_agreement, v.accuracy_reference, v.accuracy_target):
        assert 0.0 <= value <= 1.0
    # fractions of the n samples: counts of correct / agreeing predictions
    for value in (v.output_agreement, v.accuracy_reference, v.accuracy_target):
        assert value * n == pytest.approx(round(value * n))
    ref_pred = samples.reference.output.argmax(1)
    assert v.accuracy_reference == pytest.approx(float((ref_pred == samples.y).float().mean()))
    # predictions agreeing on a fraction a: the accuracies differ by at most 1 - a, and
    # both are right on at most a + (1 - a) / 2 of the samples on average
    disagree = 1.0 - v.output_agreement
    assert abs(v.accuracy_target - v.accuracy_reference) <= disagree + 1e-9
    assert v.accuracy_target + v.accuracy_reference <= 1.0 + v.output_agreement + 1e-9


def test_readme_is_markdown_naming_the_files(exported):
    _, _, _, _, _, files, _, readme = exported
    assert readme.startswith("# ") and len(readme.splitlines()) > 3
    for path in files:
        assert path.name in readme, path.name


def _delay_graph() -> nir.NIRGraph:
    """A chain with a Delay node, which no target runs."""
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "fc": nir.Affine(weight=np.ones((3, 3)), bias=np.zeros(3)),
             "delay": nir.Delay(delay=np.ones(3)),
             "lif": nir.IF(r=np.ones(3), v_threshold=np.ones(3)),
             "out": nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "fc"), ("fc", "delay"), ("delay", "lif"), ("lif", "out"), ("out", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1e-4, "timesteps": 2})


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_every_target_refuses_a_node_it_cannot_run_and_writes_nothing(name, tmp_path):
    with pytest.raises(ExportError, match="delay"):
        EXPORTERS[name]().check(_delay_graph())
    with pytest.raises(ExportError, match=rf"^{name}: .*delay"):
        export_model(_delay_graph(), name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _mlp(**kw):
    return build_model(ModelConfig(arch="mlp", input_shape=(1, 8, 8), hidden=(16,), timesteps=2, **kw))


# per target, a network the hub carries but the target cannot run, and the node it names
REFUSALS = {
    "nir": (lambda: build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4,), pool="max",
                                            timesteps=2)), r"layers\.\d+"),
    # onnx runs every graph the torch rebuild reads (residual blocks included): no entry
    "loihi": (lambda: _mlp(reset="soft"), r"layers_2"),
    "speck": (lambda: _mlp(lam=0.7), r"layers_2"),
    "xylo": (lambda: _mlp(reset="soft"), r"layers_2"),      # a LIF without synaptic current
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_target_specific_refusal_names_the_node_and_writes_nothing(name, tmp_path):
    build, node = REFUSALS[name]
    with pytest.raises(ExportError, match=rf"^{name}: .*{node}"):
        export_model(build(), name, tmp_path / "out")
    assert not (tmp_path / "out").exists()
