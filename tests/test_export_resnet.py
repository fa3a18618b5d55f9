"""Residual (spiking ResNet) networks on the ONNX target: onnxruntime equals the torch
rebuild spike for spike in every neuron layer, each block's sum an ONNX ``Add``."""

from __future__ import annotations

import onnx
import pytest
import torch

from snn2hw.core.layers import TDBatchNorm
from snn2hw.export.from_nir import node_spikes
from snn2hw.export.onnx import export_onnx, run_onnx
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models import ModelConfig, build_model


def _resnet(arch: str):
    """An untrained ResNet with non-trivial tdBN statistics and a low threshold, so that
    every layer spikes on bright random inputs (the test is about the graph, not accuracy)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, input_shape=(3, 8, 8), width=4, timesteps=3, lam=0.8, v_th=0.3,
                                    blocks=2))
    for m in model.modules():
        if isinstance(m, TDBatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.3, 1.0)
    return model.eval(), torch.rand(24, 3, 8, 8) * 3


@pytest.mark.parametrize("arch", ["resnet18", "resnet19", "resnet_small"])
def test_onnxruntime_equals_torch_rebuild_for_residual_networks(arch, tmp_path):
    model, x = _resnet(arch)
    net = export_onnx(model_to_nir(model), tmp_path / "m.onnx")
    torch_spikes, torch_logits = node_spikes(net, x)
    spikes, logits = run_onnx(tmp_path / "m.onnx", x, batch_size=7)   # dynamic batch axis
    assert set(spikes) == set(torch_spikes) and len(spikes) == len(model.lif_layers())
    active = [k for k in spikes if torch_spikes[k].sum() > 0]
    assert len(active) >= len(spikes) // 2
    for name in spikes:
        assert torch.equal(spikes[name], torch_spikes[name]), name
    torch.testing.assert_close(logits, torch_logits, rtol=0, atol=1e-5)
    # one Add per block per step joins body and shortcut (8 blocks in resnet18/19, 2 here; T = 3)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("Add") >= (2 if arch == "resnet_small" else 8) * 3


# ----- Speck: identity blocks through sinabs' Merge, cross-checked with sinabs' own code ------

import json  # noqa: E402

import nir  # noqa: E402
import numpy as np  # noqa: E402
from test_export_speck import fake_samna  # noqa: E402,F401  (the test-only stand-in samna)

from snn2hw.errors import ExportError  # noqa: E402
from snn2hw.export.api import export_model  # noqa: E402
from snn2hw.export.base import Samples  # noqa: E402
from snn2hw.export.speck import chip_model, simulate  # noqa: E402
from snn2hw.export.speck.constraints import build_plan  # noqa: E402

T = 4


def _small(seed: int = 2, **kw):
    """An untrained resnet_small (IAF, Speck's neuron), tdBN statistics drawn so that every
    layer spikes on the frames below and V_th = 1.5 > the identity's 1: a block's neuron fires
    only when its body adds to the shortcut (seed and V_th chosen by measuring that)."""
    torch.manual_seed(seed)
    cfg = dict(arch="resnet_small", input_shape=(1, 8, 8), width=4, blocks=2, lam=1.0, timesteps=T, v_th=1.5)
    model = build_model(ModelConfig(**{**cfg, **kw}))
    for m in model.modules():
        if isinstance(m, TDBatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.3, 1.0)
    return model.eval()


def _frames(n: int = 48) -> Samples:
    """Frames on the 1/16 grid (the chip's input events are round(16 x): no input rounding)."""
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float() / 16
    return Samples(x, torch.zeros(n, dtype=torch.long), T)


@pytest.fixture(scope="module")
def small_speck(tmp_path_factory):
    """(verification.json, speck_config.json) of ``_small()`` exported with --check (module
    scope: set up before the fake samna, which the real-samna probe must not see)."""
    out = tmp_path_factory.mktemp("speck") / "out"
    export_model(_small(), "speck", out, check=True, samples=_frames())
    return tuple(json.loads((out / f).read_text()) for f in ("verification.json", "speck_config.json"))


def test_speck_runs_identity_blocks_through_merge(small_speck):
    """resnet_small (2 blocks) on Speck: 5 cores; the block's two spike streams on disjoint
    channels of a Merge; the integer simulation within the gate, and the Merge route equal to
    the block it implements (conv2(s) + x, built without the route) spike for spike."""
    v, config = small_speck
    assert v["passed"], v["failures"]
    d = v["details"]
    assert d["merge_route_mismatches"]["singlespike"] == {k: 0 for k in v["spike_agreement"]}
    assert d["merge_route_mismatches"]["multispike"] == {k: 0 for k in v["spike_agreement"]}
    assert min(v["spike_agreement"].values()) >= 0.98 and v["output_agreement"] == 1.0   # measured
    cores = {c["nodes"][1]: c for c in config["cores"]}
    stem, body, merged = cores["layers_2"], cores["layers_3_body_2"], cores["layers_3_out"]
    # x on channels [0, 4) of an 8-channel stream, s on [4, 8): the same shape, disjoint
    assert (stem["channels"], body["channels"]) == ({"offset": 0, "count": 4}, {"offset": 4, "count": 4})
    assert stem["dimensions"]["output_shape"]["feature_count"] == body["dimensions"]["output_shape"]["feature_count"] == 8
    w = np.array(merged["weights"])          # (C_out, C_in, x, y): [I | W2] on the integer grid
    identity = np.zeros((4, 4, 3, 3), dtype=np.int64)
    identity[range(4), range(4), 1, 1] = round(merged["scale"])
    assert np.array_equal(w[:4, :4], identity)
    assert np.abs(w[:4, 4:]).max() > 0
    assert not np.any(w[4:])                 # its own padding: it is the next block's x
    assert not np.any(np.array(stem["weights"])[4:]) and not np.any(np.array(body["weights"])[:4])
    dests = {c["nodes"][1]: sorted(d["layer"] for d in c["destinations"]) for c in config["cores"]}
    core = {c["nodes"][1]: c["core"] for c in config["cores"]}
    assert dests["layers_2"] == sorted([core["layers_3_body_2"], core["layers_3_out"]])
    assert dests["layers_3_body_2"] == [core["layers_3_out"]] and dests["layers_4_out"] == []


def test_merge_route_matches_sinabs_dynapcnn_network(small_speck, fake_samna):
    """sinabs' own DynapcnnNetwork takes the exported cores as a Merge graph (it requires a
    Merge's inputs to have one shape): its memory per layer, its destinations and its forward
    pass equal ours."""
    import sinabs.layers as sl
    from sinabs.activation import MultiSpike, MembraneReset
    from sinabs.backend.dynapcnn.chips.dynapcnn import DynapcnnConfigBuilder
    from sinabs.backend.dynapcnn.mapping import get_valid_mapping

    cores = small_speck[1]["cores"]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs, self.iafs = torch.nn.ModuleList(), torch.nn.ModuleList()
            for c in cores:
                w = torch.tensor(c["weights"], dtype=torch.float32).transpose(2, 3)
                conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
                conv.weight.data, conv.bias.data = w, torch.tensor(c["biases"], dtype=torch.float32)
                self.convs.append(conv)
                self.iafs.append(sl.IAFSqueeze(num_timesteps=T, spike_threshold=float(c["threshold_high"]),
                                               min_v_mem=float(c["threshold_low"]), spike_fn=MultiSpike,
                                               reset_fn=MembraneReset()))
            self.merge1, self.merge2, self.pool = sl.Merge(), sl.Merge(), sl.SumPool2d(2)

        def forward(self, x):
            core = lambda i, a: self.iafs[i](self.convs[i](a))   # noqa: E731
            x0 = core(0, x)
            x1 = core(2, self.merge1(x0, core(1, x0)))
            return self.pool(core(4, self.merge2(x1, core(3, x1))))

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = fake_samna.DynapcnnNetwork(Net(), input_shape=(1, 8, 8), batch_size=T, discretize=False)
    plan = build_plan(model_to_nir(_small()))
    theirs = net.memory_summary()
    for lay, idx in zip(plan.layers, sorted(net.dynapcnn_layers)):
        assert lay.memory == {k: int(theirs[k][idx]) for k in ("kernel", "neuron", "bias")}
    assert {k: sorted(v) for k, v in net.layer_destination_map.items()} == {0: [1, 2], 1: [2], 2: [3, 4], 3: [4], 4: [-1]}
    assert len(get_valid_mapping(net.dynapcnn_layers, DynapcnnConfigBuilder.get_constraints())) == 5
    x = _frames(16).x
    events = torch.round(x * 16).unsqueeze(0).expand(T, *x.shape)
    ours, _, _ = simulate(chip_model(small_speck[1], MultiSpike, T), events.double(), T)
    last = torch.nn.functional.avg_pool2d(ours["layers_4_out"].flatten(0, 1).float(), 2) * 4
    assert int(last.sum()) > 0
    for layer in net.dynapcnn_layers.values():
        layer.spk.reset_states()
    with torch.no_grad():
        out = net(events.transpose(0, 1).flatten(0, 1))
    assert torch.equal(out.unflatten(0, (16, T)).transpose(0, 1).flatten(0, 1).float(), last)


def _graph_with_block(body_neuron: bool = True, pool_before: bool = False, stride: int = 1) -> nir.NIRGraph:
    """Input -> conv -> IF [-> pool] -> (conv [-> IF -> conv]) + identity -> IF -> Output."""
    meta = {"lam": 1.0, "v_th": 1.0, "reset": "zero"}
    rng = np.random.default_rng(0)

    def conv(cin, s=1):
        return nir.Conv2d(input_shape=None, weight=rng.normal(0, 0.5, (2, cin, 3, 3)).astype(np.float32),
                          stride=s, padding=1, dilation=1, groups=1, bias=np.zeros(2, np.float32))

    def neuron(hw):
        return nir.IF(r=np.ones((2, hw, hw)), v_threshold=np.ones((2, hw, hw)), metadata=meta)

    hw = 8 if not pool_before else 4
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 8, 8])}), "stem": conv(1), "stem_if": neuron(8)}
    chain = ["input", "stem", "stem_if"]
    if pool_before:
        nodes["pool"] = nir.SumPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))
        chain.append("pool")
    body = ["c1", "if1", "c2"] if body_neuron else ["c2"]
    nodes.update({"c1": conv(2), "if1": neuron(hw), "c2": conv(2, stride)} if body_neuron else {"c2": conv(2, stride)})
    out_hw = hw // stride
    nodes.update({"out": neuron(out_hw), "output": nir.Output(output_type={"output": np.array([2, out_hw, out_hw])})})
    edges = list(zip(chain, chain[1:])) + list(zip([chain[-1]] + body, body + ["out"]))
    edges += [(chain[-1], "out"), ("out", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"timesteps": 2, "dt": 1e-4})


REFUSALS = {
    "conv shortcut": (lambda: build_model(ModelConfig(arch="resnet19", input_shape=(1, 8, 8), width=2, lam=1.0)),
                      "speck: residual block ending in 'layers_6_out' has a shortcut with layers "
                      "['layers_6_shortcut_0']"),
    "too many cores": (lambda: build_model(ModelConfig(arch="resnet_small", input_shape=(1, 8, 8), width=4,
                                                       blocks=5, lam=1.0)),
                       "the network has 11 spiking layers; the chip has 9 cores"),
    "pooled shortcut": (lambda: _graph_with_block(pool_before=True),
                        "branches from 'pool', not from a core's neuron"),
    "no body neuron": (lambda: _graph_with_block(body_neuron=False), "has no neuron in its body"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_speck_refuses_blocks_it_cannot_run_before_writing(tmp_path, case):
    make, message = REFUSALS[case]
    with pytest.raises(ExportError) as err:
        export_model(make(), "speck", tmp_path / "out")
    assert str(err.value).startswith("speck: ") and message in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


def test_speck_refuses_a_block_that_changes_the_map():
    """A graph whose block sums a 4x4 body with an 8x8 shortcut (no torch model computes it:
    the check reads the graph alone) is refused naming both shapes."""
    with pytest.raises(ExportError, match=r"maps \(2, 8, 8\) to \(2, 4, 4\)"):
        build_plan(_graph_with_block(stride=2))


def test_samna_path_refuses_merged_cores(small_speck):
    """DynapcnnNetwork.make_config for merged cores is not built: refused, not guessed."""
    from sinabs.activation import MultiSpike

    with pytest.raises(ExportError, match="samna configuration of residual networks is not built"):
        chip_model(small_speck[1], MultiSpike, T, exact=False)


def test_sinabs_merge_adds_spike_streams_padding_the_narrower(fake_samna):
    """What the route rests on, read from sinabs: only ``Merge`` takes several inputs, it adds
    them (zero-padding the narrower at the end), so disjoint channel ranges concatenate; the
    chip has 9 cores."""
    import sinabs.layers as sl
    from sinabs.backend.dynapcnn.chips.dynapcnn import DynapcnnConfigBuilder
    from sinabs.backend.dynapcnn.connectivity_specs import LAYER_TYPES_WITH_MULTIPLE_INPUTS

    from snn2hw.export.speck.constraints import CORE_LIMITS

    assert LAYER_TYPES_WITH_MULTIPLE_INPUTS == (sl.Merge,)
    assert len(DynapcnnConfigBuilder.get_constraints()) == len(CORE_LIMITS) == 9
    torch.manual_seed(0)
    s, x = (torch.rand(2, 4, 6, 6) > 0.5).float(), (torch.rand(2, 4, 6, 6) > 0.5).float()
    zero = torch.zeros_like(s)
    assert torch.equal(sl.Merge()(s, x), s + x)
    assert torch.equal(sl.Merge()(torch.cat([x, zero], 1), torch.cat([zero, s], 1)), torch.cat([x, s], 1))
    assert torch.equal(sl.Merge()(x, torch.cat([zero, s], 1)), torch.cat([x, s], 1))


# ----- Loihi: the graph path (Lava processes, DelayDense aligning each shortcut) ------------


def _loihi(tmp_path, samples: Samples) -> dict:
    """``_small()`` with tdBN (its folded offsets are biases), exported with --check."""
    out = tmp_path / "loihi"
    export_model(_small(), "loihi", out, check=True, samples=samples, allow_emulator=True)
    return json.loads((out / "verification.json").read_text())


def test_loihi_graph_path_runs_resnet_small(tmp_path, monkeypatch):
    """The emulator standing in for Lava (pinned against Lava below): every neuron node
    compared with the float model, each block's shortcut delayed by its body's one extra step,
    each bias (through the always-on input channel) by its neuron's depth - 1."""
    monkeypatch.setattr("snn2hw.export.loihi.graph_verify.loihi_python", lambda: None)
    v = _loihi(tmp_path, _frames(24))
    assert v["passed"], v["failures"]
    assert v["stand_in"] == "emulator; Lava not run"
    depth = v["details"]["depth"]
    assert depth == {"layers_2": 1, "layers_3_body_2": 2, "layers_3_out": 3, "layers_4_body_2": 4, "layers_4_out": 5}
    assert v["details"]["delayed_edges"] == [["input", "layers_3_body_2", 1], ["layers_2", "layers_3_out", 1],
                                             ["input", "layers_3_out", 2], ["input", "layers_4_body_2", 3],
                                             ["layers_3_out", "layers_4_out", 1], ["input", "layers_4_out", 4]]
    # measured: 0.986 .. 0.999 per layer, classes 1.0 (bias from Lava's step 0: 0.85 .. 0.94, classes 0.08)
    assert min(v["spike_agreement"].values()) >= 0.98 and v["output_agreement"] == 1.0


def _bias_from_step_0(net):
    """The rule before issue 18: each bias as Lava's bias_mant, added from step 0."""
    for e in net.edges:
        if e.src == "input":
            next(n for n in net.neurons if n.name == e.dst).bias = e.weight[:, -2:] @ np.array([1, 16])
            e.weight[:, -2:] = 0
    return net


def _bias_delay_moved(net, shift):
    for e in net.edges:
        if e.src == "input" and e.delay + shift >= 0:
            e.delay += shift
    return net


@pytest.mark.slow
def test_lava_equals_emulator_on_resnet_small_with_tdbn(tmp_path):
    """Lava = emulator spike for spike on the tdBN resnet_small, and both = the float model's
    classes; the emulator with the bias from step 0 or its edge one step early/late is not Lava."""
    import copy

    from snn2hw.environment import loihi_python
    from snn2hw.export.loihi import emulator as emu
    from snn2hw.export.loihi.graph import build_loihi_graph, write_graph
    from snn2hw.export.loihi.graph_verify import align, graph_readout, run_lava_graph, sample_input
    from snn2hw.export.reference import run_reference

    if loihi_python() is None:
        pytest.skip("the Loihi environment (.venv-loihi) is missing")
    model, samples = _small(), _frames(6)
    net = build_loihi_graph(model_to_nir(model))
    x = sample_input(net, samples, T)
    (lava, _), = run_lava_graph([(write_graph(net, tmp_path / "g.npz"), net, x)])
    ref = run_reference(model, samples)
    want = ref.output.numpy().argmax(1)

    def classes(stream):
        return float((graph_readout(net, align(net, stream, T)).argmax(1) == want).mean())

    emulated = emu.run_graph_stream(net, x)
    for name, s in emulated.items():
        assert s.sum() > 0, name                                  # not silent: equality proves something
        np.testing.assert_array_equal(lava[name], s, err_msg=name)
        got = align(net, lava, T)[name]
        agreement = float((got == ref.spikes[name].numpy().reshape(got.shape)).mean())
        assert agreement >= 0.98, (name, agreement)
    assert classes(lava) == 1.0
    for wrong in (_bias_from_step_0(copy.deepcopy(net)), _bias_delay_moved(copy.deepcopy(net), -1),
                  _bias_delay_moved(copy.deepcopy(net), 1)):
        stream = emu.run_graph_stream(wrong, x)
        assert any((stream[k] != lava[k]).any() for k in lava)
    assert classes(emu.run_graph_stream(_bias_from_step_0(copy.deepcopy(net)), x)) < 0.7
