"""Xylo target: our emulator equals xylosim (SynSense's bit-accurate simulator) on random
recurrent networks, a hand-computed neuron trace, the leak grid, export write/verify on
hand-built recurrent CubaLIF graphs, each refusal once, and the QAT grid against the
exporter's integers."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch

from xylo_graphs import DT, cuba_graph, cuba_node, samples_for
from snn2hw.errors import ExportError
from snn2hw.export import EXPORTERS
from snn2hw.export.grid import Site
from snn2hw.export.xylo import XyloExporter, emulator
from snn2hw.export.xylo.grid import XyloGrid
from snn2hw.export.xylo.limits import STATE_MAX
from snn2hw.export.xylo.mapping import build_xylo_net, dash_of, leak_of
from snn2hw.export.xylo.sim import xylosim_available

needs_xylosim = pytest.mark.skipif(not xylosim_available(),
                                   reason="xylosim not installed (scripts/setup builds it); CI runs it")


def _random_spec(rng, n_in, hidden, out, wmax, th_max, bias):
    mask = rng.random((hidden, hidden)) < 0.5
    return emulator.XyloSpec(
        rng.integers(-wmax, wmax + 1, (n_in, hidden)), rng.integers(-wmax, wmax + 1, (hidden, hidden)) * mask,
        rng.integers(-wmax, wmax + 1, (hidden, out)), rng.integers(0, 16, hidden), rng.integers(0, 16, hidden),
        rng.integers(0, 16, out), rng.integers(0, 16, out), rng.integers(1, th_max, hidden),
        rng.integers(1, 2000, out), bias=rng.integers(-60, 60, hidden) if bias else None,
        bias_out=rng.integers(-60, 60, out) if bias else None)


# (inputs, hidden, outputs, |w| max, threshold max, events max, biases): small and sparse,
# both signs near the 8-bit limit with heavy 16-bit saturation and 31-spike bursts, biases
SHAPES = [(3, 5, 2, 40, 300, 2, False), (16, 24, 8, 127, 30, 15, False), (7, 33, 5, 127, 200, 15, True),
          (1, 12, 16, 90, 60, 6, True)]


@needs_xylosim
@pytest.mark.parametrize("shape", SHAPES)
def test_emulator_equals_xylosim_on_random_recurrent_networks(shape):
    from snn2hw.export.xylo.sim import run_xylosim

    n_in, hidden, out, wmax, th_max, ev_max, bias = shape
    rng = np.random.default_rng(hidden)
    spec = _random_spec(rng, n_in, hidden, out, wmax, th_max, bias)
    events = rng.integers(0, ev_max + 1, (25, 4, n_in))
    ours, theirs = emulator.run(spec, events), run_xylosim(spec, events)
    for field in ("hidden_spikes", "output_spikes", "v_out", "i_out"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field), err_msg=field)
    assert ours.hidden_spikes.any() and ours.v_out.any()              # active: the test can fail
    if wmax == 127:
        assert ours.saturated and ours.hidden_spikes.max() == 31      # the limits are exercised


def test_emulator_follows_the_hand_computed_trace():
    """One input event of weight 10, dash_syn = dash_mem = 1, threshold 5 (xylosim gives the same):
    Isyn 10 -> 5 -> 3 -> 2 (x - x >> 1, at least 1), Vmem 5 (spike, -5) -> 0 + 3 -> 3 - 1 + 2."""
    spec = emulator.XyloSpec(np.array([[10]]), np.zeros((1, 1), int), np.zeros((1, 1), int), np.array([1]),
                             np.array([1]), np.array([1]), np.array([1]), np.array([5]), np.array([100]))
    run = emulator.run(spec, np.array([[[1]], [[0]], [[0]]]))
    assert run.hidden_spikes[:, 0, 0].tolist() == [1, 0, 0]
    # multi-spike and saturation: 8 events of 127 in one step: Isyn 1016 -> 508, Vmem 508 // 5 -> 31 spikes
    spec.weights_in = np.array([[127]])
    run = emulator.run(spec, np.array([[[8]]]))
    assert run.hidden_spikes[0, 0, 0] == 31
    sat = emulator.XyloSpec(np.array([[127]]), np.zeros((1, 1), int), np.zeros((1, 1), int), np.array([15]),
                            np.array([15]), np.array([1]), np.array([1]), np.array([STATE_MAX]), np.array([100]))
    ev = np.full((40, 1, 1), 15)
    assert emulator.run(sat, ev).saturated.get("hidden.isyn", 0) > 0


def test_leaks_map_to_bit_shift_decays():
    lam = np.array([0.0, 0.5, 0.75, 0.875, 0.9, 0.99, 1.0])
    assert dash_of(lam).tolist() == [0, 1, 2, 3, 3, 7, 15]       # round(log2(1 / (1 - lam)))
    assert leak_of(dash_of(lam)).tolist() == [0.0, 0.5, 0.75, 0.875, 0.875, 1 - 2 ** -7, 1 - 2 ** -15]


def _fit_inputs(plan, graph, rng, n=40):
    """Inputs on the event grid (so input quantisation is exact)."""
    lo, hi = graph.metadata["input_range"]
    L = plan.encoding.levels
    return np.round(rng.uniform(lo, hi, (n, int(graph.nodes["input"].input_type["input"][0]))) * L) / L


def test_plan_integers_follow_the_mapping_rules():
    rng = np.random.default_rng(0)
    graph = cuba_graph(rng, sizes=(4, 6), alpha=0.75, lam=0.875, v_th=0.8, scale=0.3)
    plan = build_xylo_net(graph)
    spec, layer = plan.spec, plan.layers[0]
    assert plan.chip.name == "xylo-audio2"
    assert spec.dash_syn.tolist() == [2] * 6 and spec.dash_mem.tolist() == [3] * 6
    theta = spec.threshold - 1
    np.testing.assert_allclose(theta, layer.gain * 0.8, rtol=1e-9)          # integer theta = G V_th
    w = np.asarray(graph.nodes["fc0"].weight)
    unit = 1.0 / plan.encoding.levels
    np.testing.assert_array_equal(spec.weights_in[:4, :6].T, np.round(w * (layer.gain * unit / 0.75)[:, None]))
    incoming = np.abs(np.concatenate([spec.weights_in, spec.weights_rec]))   # (pre, post)
    assert incoming.max() <= 127 and (incoming.max(0) >= 126).all()          # each neuron uses 8 bits
    w_rec = np.asarray(graph.nodes["rec0"].weight)
    np.testing.assert_array_equal(spec.weights_rec.T, np.round(w_rec * (layer.gain / 0.75)[:, None]))
    # the bias rides on channel 4, one event per step for T steps, then nothing
    b = np.asarray(graph.nodes["fc0"].bias)
    np.testing.assert_array_equal(spec.weights_in[4], np.round(b * layer.gain / 0.75))
    ev = plan.events(np.zeros((2, 4)))
    assert ev.shape == (plan.timesteps + 1, 2, 5) and ev[:, :, 4].tolist() == [[1, 1]] * 6 + [[0, 0]]


@needs_xylosim
def test_export_write_verify_recurrent_cuba(tmp_path):
    rng = np.random.default_rng(1)
    graph = cuba_graph(rng, sizes=(4, 10, 8), scale=0.25, input_range=(-1.0, 1.0))
    exporter = XyloExporter()
    plan = exporter.check(graph)
    files = exporter.write(plan, tmp_path)
    written = json.loads(files[0].read_text())
    spec = written["specification"]
    assert set(spec) >= {"weights_in", "weights_rec", "weights_out", "dash_mem", "dash_syn", "dash_syn_2",
                         "dash_mem_out", "dash_syn_out", "threshold", "threshold_out", "aliases"}
    assert np.array(spec["weights_in"]).shape == (10, 18)       # 4 features x 2 signs + a bias channel per layer
    assert written["host"]["steps_to_run"] == graph.metadata["timesteps"] + 2
    x = _fit_inputs(plan, graph, rng)
    xylo_rule = samples_for(graph, x, np.zeros(len(x), int), multi_spike=True)
    xylo_rule.y = xylo_rule.reference.output.argmax(1)
    v = exporter.verify(plan, tmp_path, xylo_rule)
    assert v.details["xylosim_vs_emulator_mismatches"] == {"hidden_spikes": 0, "output_vmem": 0, "output_isyn": 0}
    assert set(v.spike_agreement) == {"lif0", "lif1"}
    # against the float model with Xylo's spike rule, what is left is 8-bit rounding (measured 0.96-0.99)
    assert min(v.spike_agreement.values()) > 0.94 and v.output_agreement >= 0.9
    binary = samples_for(graph, x, xylo_rule.y.numpy())
    v1 = exporter.verify(plan, tmp_path, binary)
    assert sum(v1.details["multi_spike_events"].values()) > 0     # reported: our neuron emits one
    assert min(v1.spike_agreement.values()) < min(v.spike_agreement.values())
    readme = exporter.readme(plan, files)
    assert files[0].name in readme and "xylo-audio2" in readme


def test_verify_without_xylosim_says_so(monkeypatch, tmp_path):
    import snn2hw.export.xylo as xylo

    monkeypatch.setattr(xylo, "xylosim_available", lambda: False)
    rng = np.random.default_rng(2)
    graph = cuba_graph(rng, sizes=(3, 5), scale=0.3)
    plan = XyloExporter().check(graph)
    v = XyloExporter().verify(plan, tmp_path, samples_for(graph, _fit_inputs(plan, graph, rng, 8), np.zeros(8, int)))
    assert v.details["xylo_simulator"].startswith("emulator; xylosim not run")
    assert v.stand_in == "emulator; xylosim not run"          # the gate fails it unless allowed
    from snn2hw.export.base import MinAgreement
    from snn2hw.export.reference import gate
    import copy
    assert not gate(copy.deepcopy(v), MinAgreement(0.0, 0.0)).passed
    assert gate(copy.deepcopy(v), MinAgreement(0.0, 0.0), allow_stand_in=True).passed


def test_ten_classes_choose_xylo_imu_and_audio2_refuses_naming_the_limit():
    graph = cuba_graph(np.random.default_rng(3), sizes=(4, 12), classes=10)
    assert XyloExporter().check(graph).chip.name == "xylo-imu"
    with pytest.raises(ExportError, match=r"10 output neurons \(classes\) > 8"):
        XyloExporter(chip="xylo-audio2").check(graph)


def _replace(graph, name, node):
    graph.nodes[name] = node
    return graph


REFUSALS = {
    "lif without synapse": (lambda g: _replace(g, "lif0", nir.LIF(tau=np.full(6, 2 * DT), r=np.full(6, 2.0),
                                                                    v_leak=np.zeros(6), v_threshold=np.ones(6))),
                            r"neuron lif0: LIF has no synaptic current.*--model srnn"),
    "hard reset": (lambda g: _replace(g, "lif0", cuba_node(6, 0.75, 0.5, 1.0, reset="zero")),
                   r"neuron lif0: hard reset.*--reset soft"),
    "no synaptic memory": (lambda g: _replace(g, "lif0", cuba_node(6, 0.0, 0.5, 1.0)),
                           r"neuron lif0: synaptic leak alpha = 0.*alpha >= 0.5"),
    "v_leak": (lambda g: _replace(g, "lif0", nir.CubaLIF(tau_syn=np.full(6, 4 * DT), tau_mem=np.full(6, 2 * DT),
                                                         r=np.full(6, 2.0), v_leak=np.ones(6), v_threshold=np.ones(6),
                                                         w_in=np.full(6, 4.0))),
               r"neuron lif0: v_leak != 0"),
    "unknown node": (lambda g: _replace(g, "fc0", nir.Delay(delay=np.ones(4))), r"node fc0: Delay has no Xylo"),
    "too many inputs": (lambda g: cuba_graph(np.random.default_rng(0), sizes=(17, 6)),
                        r"fc0\.\.out: .*18 input channels > 16"),
    "too many neurons": (lambda g: cuba_graph(np.random.default_rng(0), sizes=(2, 1001), recurrent=False),
                         r"1001 hidden neurons > 1000.*1001 hidden neurons > 496"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_names_the_node_and_the_fix(case):
    build, message = REFUSALS[case]
    with pytest.raises(ExportError, match=message):
        XyloExporter().check(build(cuba_graph(np.random.default_rng(0), sizes=(4, 6))))


def test_registered_with_its_qat_grid():
    assert EXPORTERS["xylo"] is XyloExporter and XyloExporter.grid is XyloGrid


def test_qat_grid_equals_the_exporters_integers():
    """A feed-forward CUBA layer: the grid's float values times G / alpha_eff are the integers
    the exporter writes (weights, bias channel), its leak the exporter's lam_eff."""
    rng = np.random.default_rng(4)
    graph = cuba_graph(rng, sizes=(5, 7), alpha=0.75, lam=0.9, v_th=1.3, recurrent=False, scale=0.4)
    plan = build_xylo_net(graph)
    layer, unit = plan.layers[0], 1.0 / plan.encoding.levels
    fc = graph.nodes["fc0"]
    site = Site("fc0", torch.tensor(np.asarray(fc.weight)), torch.tensor(np.asarray(fc.bias)), 1.3, 0.9, unit)
    site.alpha = 0.75
    q = XyloGrid().quantise(site)
    scale = layer.gain / 0.75
    np.testing.assert_array_equal(np.round(q.weight.numpy() * (scale * unit)[:, None]), plan.spec.weights_in[:5].T)
    np.testing.assert_array_equal(np.round(q.bias.numpy() * scale), plan.spec.weights_in[5])
    assert q.lam == pytest.approx(0.875) and q.v_th == 1.3
    # straight-through: gradients reach the latent weights
    w = site.weight.clone().requires_grad_(True)
    XyloGrid().quantise(Site("fc0", w, site.bias, 1.3, 0.9, unit)).weight.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))
    assert XyloGrid().input_levels == 15      # [0, 1] -> 15 events per unit


def test_deeper_layers_and_their_bias_channels_run_behind_the_input():
    rng = np.random.default_rng(5)
    graph = cuba_graph(rng, sizes=(3, 4, 5), timesteps=4)
    plan = build_xylo_net(graph)
    assert [l.lag for l in plan.layers] == [0, 1] and plan.steps == 6
    ev = plan.events(np.ones((1, 3)))
    assert ev[:, 0, 3].tolist() == [1, 1, 1, 1, 0, 0]        # layer 0's bias: ours steps 0..3
    assert ev[:, 0, 4].tolist() == [0, 1, 1, 1, 1, 0]        # layer 1's: one step later
    assert ev[:, 0, :3].tolist() == [[15] * 3] * 4 + [[0] * 3] * 2


def test_host_readout_recovers_the_sum_of_the_output_inputs():
    """Vmem_out + Isyn_out after the run is the sum of every input the output neuron received
    (dash_syn_out = 1), to one unit per step of rounding and one of leak."""
    rng = np.random.default_rng(6)
    graph = cuba_graph(rng, sizes=(4, 10), scale=0.3, timesteps=8)
    plan = build_xylo_net(graph)
    run = emulator.run(plan.spec, plan.events(rng.uniform(0, 1, (20, 4))))
    delivered = run.hidden_spikes[:-1].astype(np.int64) @ plan.spec.weights_out      # inputs of steps 1..
    expected = delivered.sum(0)
    T, G = plan.timesteps, plan.readout_gain
    recovered = (plan.logits(run.v_out[-1], run.i_out[-1]) - plan.readout_bias) * G * T
    assert np.abs(expected).max() > 10 * plan.steps                    # the sum is not trivially small
    assert np.abs(recovered - expected).max() <= 2 * plan.steps


def test_hwsim_preset_matches_the_chip_and_energy_is_left_to_the_user():
    from snn2hw.errors import ConfigError
    from snn2hw.export.xylo.limits import STATE_BITS, WEIGHT_MAX
    from snn2hw.hwsim.noise import quant_spec
    from snn2hw.hwsim.profiles import get_profile

    q = quant_spec("xylo")
    assert q.state_bits == STATE_BITS and 2 ** (q.weight_bits - 1) - 1 == WEIGHT_MAX
    with pytest.raises(ConfigError, match="xylo.*--profile-file"):
        get_profile("xylo")
