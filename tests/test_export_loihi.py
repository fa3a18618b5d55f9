"""Loihi target: emulator vs Lava spike for spike, emulator vs an exact float reference,
pooling fusion, refusals before writing, the netx HDF5 layout."""

from dataclasses import replace

import h5py
import nir
import numpy as np
import pytest
import torch
import snn2hw
import torch.nn.functional as F

from snn2hw.core.neuron import LIFParams, lif_sequence
from snn2hw.data.datasets import load_dataset, load_digits
from snn2hw.environment import loihi_python
from snn2hw.errors import ExportError
from snn2hw.export.loihi import emulator as emu
from snn2hw.export.api import export_model
from snn2hw.export.loihi import LoihiExporter, readout, run_lava, write_netx
from snn2hw.export.loihi.mapping import A_LIMIT, _fuse_conv_pool, _fuse_dense_pool, build_loihi_net, loihi_grid
from snn2hw.export.to_nir import model_to_nir, nir_node_name
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model, record_spikes
from snn2hw.train.config import RunConfig
from snn2hw.train.trainer import train

T = 4


def _subset(n_train=400, n_test=40):
    d = load_digits()
    return replace(d, x_train=d.x_train[:n_train], y_train=d.y_train[:n_train],
                   x_test=d.x_test[:n_test], y_test=d.y_test[:n_test])


def _train(arch, **model):
    cfg = RunConfig(dataset="digits", epochs=2, batch_size=32, val_fraction=0,  # no selection here
                    model=ModelConfig(arch=arch, timesteps=T, **model))
    return train(cfg, progress=False, data=_subset()).model.eval()


@pytest.fixture(scope="module")
def mlp():
    return _train("mlp", hidden=(48, 24), v_th=0.5)


@pytest.fixture(scope="module")
def conv():
    return _train("conv", channels=(4, 8), fc_hidden=16, v_th=0.25, lam=0.8)


def _inputs(net, n=20):
    x = load_digits().x_test[:n].numpy()
    xi = net.quantise_input(x)
    return np.ascontiguousarray(np.broadcast_to(xi, (T,) + xi.shape))


@pytest.mark.slow
@pytest.mark.skipif(loihi_python() is None, reason=".venv-loihi (lava-dl) not built; scripts/setup builds it")
def test_lava_equals_emulator_every_layer(mlp, conv, tmp_path):
    jobs, nets = [], []
    for name, model in (("mlp", mlp), ("conv", conv)):
        net = build_loihi_net(model_to_nir(model))
        path = write_netx(net, tmp_path / f"{name}.net")
        xi = _inputs(net)
        stream, R, off = emu.make_stream(xi, len(net.layers))
        assert (R, off) == (T, 1)
        jobs.append((path, stream, net.input_bits(), T))
        nets.append((net, xi, stream))
    results = run_lava(jobs, workdir=tmp_path)          # one Lava import for both networks
    for (net, xi, stream), (lava, _) in zip(nets, results):
        assert len(lava) == len(net.layers) >= 2
        predicted = emu.run_stream(net.layers, stream, T, 1)
        per_sample = emu.run_samples(net.layers, xi)
        for k, (got, want) in enumerate(zip(lava, predicted)):
            assert got.shape == want.shape
            assert int((got != want).sum()) == 0, f"block {k}: Lava differs from the emulator"
            assert 0.01 < got.mean() < 0.9            # the layer is active: the test can fail
            np.testing.assert_array_equal(emu.unstream(got, k, T, xi.shape[1]), per_sample[k])


def _float_reference(net, xi):
    """The same integers in float64 through core.neuron (no truncation of the leak):
    currents W_int s + b_int, lam_eff, threshold vThMant, strict spike."""
    s, out = xi.astype(np.float64), []
    for layer in net.layers:
        Tn, B = s.shape[:2]
        flat = torch.from_numpy(s.reshape((Tn * B,) + s.shape[2:]))
        w = torch.from_numpy(layer.weight.astype(np.float64))
        b = torch.from_numpy(layer.bias.astype(np.float64))
        c = (F.linear(flat.flatten(1), w, b) if layer.kind == "dense"
             else F.conv2d(flat, w, b, layer.stride, layer.padding))
        lam = 1 - layer.v_decay / 4096
        spk, _ = lif_sequence(c.reshape((Tn, B) + layer.out_shape), LIFParams(lam, float(layer.vth), "hard"))
        s = spk.numpy()
        out.append(s)
    return out


@pytest.mark.parametrize("lam", [1.0, 0.8])
def test_emulator_equals_float_model_with_the_same_integers(conv, lam):
    graph = model_to_nir(conv)
    for node in graph.nodes.values():                   # same weights, another leak
        if isinstance(node, (nir.LIF, nir.IF)):
            node.metadata["lam"] = lam
    net = build_loihi_net(graph)
    xi = _inputs(net, 40)
    got, want = emu.run_samples(net.layers, xi), _float_reference(net, xi)
    for k, (a, b) in enumerate(zip(got, want)):
        assert b.mean() > 0.01
        mismatch = float((a != b).mean())
        # IAF is exact; lam < 1 differs only by the leak's truncation to 1/64 unit
        assert mismatch == 0 if lam == 1.0 else mismatch < 2e-3, (k, mismatch)


def test_export_agrees_with_trained_model(conv):
    """The integer network on digits matches the float model's spikes closely."""
    net = build_loihi_net(model_to_nir(conv))
    xi = _inputs(net, 60)
    spikes = emu.run_samples(net.layers, xi)
    x = load_digits().x_test[:60]
    with torch.no_grad(), record_spikes(conv) as rec:
        logits = conv(x)
    for (name, ref), got in zip(rec.items(), spikes):
        assert nir_node_name(name) in net.neuron_names
        assert float((ref[0].numpy().reshape(got.shape) == got).mean()) > 0.95
    agree = (readout(net, spikes[-1]).argmax(1) == logits.argmax(1).numpy()).mean()
    assert agree > 0.9


def test_grid_values():
    w = np.array([[0.5, -0.25, 0.1], [-0.3, 0.2, 0.0]])
    g = loihi_grid(w, np.array([0.05, -0.02]), v_th=1.0)
    assert np.all(g.weight % 2 == 0) and g.weight.max() <= 254 and g.weight.min() >= -256
    assert np.abs(g.weight).max() == 254                      # the largest weight uses the full range
    assert g.vth == pytest.approx(1.0 * g.gain)                # threshold exact: V_th G is an integer
    np.testing.assert_array_equal(g.bias, np.round(np.array([0.05, -0.02]) * g.gain))
    assert loihi_grid(w, None, 1.0, spike=">=").vth == g.vth - 1
    # a large bias lowers the gain so that |bias| <= 4095
    big = loihi_grid(w, np.array([40.0, 0.0]), v_th=1.0)
    assert abs(big.bias).max() <= 4095 and big.gain < g.gain


def test_pool_fusion_exact_on_even_sizes():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, (3, 4, 8, 6)).astype(np.int64)
    w = 2 * rng.integers(-127, 128, (5, 4, 3, 3))
    pooled = F.avg_pool2d(torch.from_numpy(s).double(), 2) * 4       # sum pooling (integers)
    want = F.conv2d(pooled, torch.from_numpy(w).double(), stride=1, padding=1).numpy()
    fw, st, pd = _fuse_conv_pool(w, (1, 1), (1, 1), 2, 2)
    got = emu._conv(s, fw, st, pd)
    np.testing.assert_array_equal(got, want.astype(np.int64))
    wd = rng.normal(size=(7, 4 * 4 * 3))                         # dense after pool + flatten
    want_d = pooled.flatten(1).numpy() @ wd.T / 4
    got_d = s.reshape(3, -1) @ _fuse_dense_pool(wd, (4, 4, 3), 2, 0.25, 2).T
    np.testing.assert_allclose(got_d, want_d, rtol=1e-12)


def _graph(nodes, edges, reset="zero"):
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"reset": reset, "timesteps": T, "dt": 1e-4})


def _lif(n, **meta):
    return nir.IF(r=np.ones(n), v_threshold=np.ones(n), metadata={"lam": 1.0, "v_th": 1.0, **meta})


def _mlp_graph(n_in=8, w=None, reset="zero", pool=None, size=8):
    rng = np.random.default_rng(1)
    if pool is None:
        w = rng.normal(size=(6, n_in)) if w is None else w
        nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
                 "fc": nir.Affine(weight=w, bias=np.zeros(len(w))), "lif": _lif(len(w), reset=reset)}
        edges = [("input", "fc"), ("fc", "lif")]
        last, width = "lif", len(w)
    else:
        k = size // 2
        nodes = {"input": nir.Input(input_type={"input": np.array([1, size, size])}),
                 "conv": nir.Conv2d(input_shape=(size, size), weight=rng.normal(size=(2, 1, 3, 3)), stride=1,
                                    padding=1, dilation=1, groups=1, bias=np.zeros(2)),
                 "lif": _lif((2, size, size)), "pool": pool, "flat": nir.Flatten(start_dim=0)}
        edges = [("input", "conv"), ("conv", "lif"), ("lif", "pool"), ("pool", "flat")]
        last, width = "flat", 2 * k * k
    nodes.update(out=nir.Affine(weight=np.ones((3, width)), bias=np.zeros(3)),
                 output=nir.Output(output_type={"output": np.array([3])}))
    edges += [(last, "out"), ("out", "output")]
    return _graph(nodes, edges, reset)


def _avg(k, stride=None):
    return nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([stride or k] * 2), padding=np.zeros(2))


@pytest.mark.parametrize("graph,message", [
    (lambda: _mlp_graph(reset="subtract"), "--reset hard"),
    (lambda: _mlp_graph(pool=_avg(2, 1)), "kernel"),                 # overlapping pooling
    (lambda: _mlp_graph(pool=_avg(2), size=7), "divisible"),          # odd size: netx cannot crop
    (lambda: _mlp_graph(n_in=1200, w=np.abs(np.random.default_rng(0).normal(size=(6, 1200)))), "layer fc.*wrap"),
])
def test_refusals_raise_before_writing(graph, message, tmp_path):
    g = graph()
    exporter = LoihiExporter()
    with pytest.raises(ExportError, match=message):
        exporter.check(g)
    with pytest.raises(ExportError, match=message):
        exporter.write(exporter.check(g), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_soft_reset_model_refused_by_export_model(tmp_path):
    model = build_model(ModelConfig(arch="mlp", input_shape=(1, 8, 8), hidden=(16,), reset="soft"))
    with pytest.raises(ExportError, match="layers_2.*--reset hard"):
        export_model(model, "loihi", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fan_in_bound_is_the_worst_case():
    graph = _mlp_graph(n_in=8, w=np.array([[1.0, -0.5, 0.25, 0, 0, 0, 0, 0]] * 6))
    net = build_loihi_net(graph)
    layer = net.layers[0]
    # worst input: every positive weight at its maximum graded value
    x = np.where(layer.weight[0] > 0, 16, 0)[None]
    from snn2hw.export.loihi.mapping import fan_in_bound

    assert fan_in_bound(layer, 0, 16) == int(emu.synapse(layer, x)[0, 0]) < A_LIMIT


def test_hdf5_layout(conv, tmp_path):
    exporter = LoihiExporter()
    files = exporter.write(exporter.check(model_to_nir(conv)), tmp_path)
    net = build_loihi_net(model_to_nir(conv))
    with h5py.File(files[0], "r") as f:
        layers = f["layer"]
        types = [layers[str(i)]["type"][0].decode() for i in range(len(layers))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        assert "neuron" not in layers["0"]
        np.testing.assert_array_equal(layers["0/shape"][()], [1, 8, 8])
        np.testing.assert_array_equal(layers["2/shape"][()], [8, 4, 4])
        np.testing.assert_array_equal(layers["2/stride"][()], [2, 2])       # avg pool 2 fused
        assert layers["2/weight"].shape == (8, 4, 6, 6)
        for i, layer in zip((1, 2, 4), net.layers):
            g = layers[str(i)]
            w = g["weight"][()]
            assert w.dtype.kind == "i" and np.all(w % 2 == 0) and w.min() >= -256 and w.max() <= 254
            assert np.abs(g["bias"][()]).max() <= 4095
            n = g["neuron"]
            assert n["type"][0].decode() == "CUBA" and int(n["iDecay"][()]) == 4096
            assert int(n["vDecay"][()]) == round(4096 * (1 - conv.config.lam))
            assert int(n["vThMant"][()]) == layer.vth <= 131071
        assert f["host/readout_weight"].shape == (10, 16)
        assert [s.decode() for s in f["host/neuron_names"][()]] == net.neuron_names


def _export(model, out, **kw):
    return export_model(model, "loihi", out, check=True, samples=30, dataset="digits", **kw)


def test_without_loihi_env_the_emulator_is_reported(mlp, tmp_path, monkeypatch):
    monkeypatch.setattr("snn2hw.export.loihi.loihi_python", lambda: None)
    v = _export(mlp, tmp_path / "out", allow_emulator=True).verification
    assert v.stand_in == "emulator; Lava not run" and v.passed
    assert v.details["loihi_simulator"].startswith("emulator; Lava not run")
    assert v.accuracy_target == v.details["emulator_accuracy"]
    assert "lava_vs_emulator_mismatches" not in v.details
    assert set(v.spike_agreement) == {"layers_2", "layers_4"}


@pytest.mark.slow
@pytest.mark.skipif(loihi_python() is None, reason=".venv-loihi (lava-dl) not built; scripts/setup builds it")
def test_export_check_end_to_end_in_lava(mlp, tmp_path):
    result = _export(mlp, tmp_path / "out")
    v = result.verification
    assert v.details["loihi_simulator"].startswith("lava fixed_pt")
    assert v.details["lava_vs_emulator_mismatches"] == {"layers_2": 0, "layers_4": 0}
    assert v.accuracy_target == v.details["emulator_accuracy"]
    assert min(v.spike_agreement.values()) > 0.9 and v.output_agreement > 0.8
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "reset_interval=4" in readme and "Readout" in readme


def test_input_range_comes_from_the_training_data(tmp_path):
    """Signed analog inputs (mnist1d spans about [-5.5, 4.5]) must not be clipped to [0, 1]."""
    from snn2hw.export.api import _source
    from snn2hw.export.loihi.mapping import build_loihi_net

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, size=(120, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "signed.npz", x=x, y=y)
    snn2hw.train({"dataset": f"npz:{tmp_path / 'signed.npz'}", "epochs": 1, "hidden": [8]},
                 out=tmp_path / "run")
    graph = _source(tmp_path / "run" / "last.pt", None).graph
    data = load_dataset(f"npz:{tmp_path / 'signed.npz'}")
    assert graph.metadata["input_range"] == pytest.approx([float(data.x_train.min()), float(data.x_train.max())])
    # a model passed from Python, with the dataset named by the caller, gets the same range
    model, _ = snn2hw.load(tmp_path / "run" / "last.pt")
    from_python = _source(model, None, f"npz:{tmp_path / 'signed.npz'}").graph
    assert from_python.metadata["input_range"] == graph.metadata["input_range"]
    net = build_loihi_net(graph)
    xt = data.x_test.numpy()
    assert xt.min() < 0
    # graded input = round(levels * x): every held-out value within half a level of its float
    err = np.abs(net.quantise_input(xt).reshape(xt.shape) / net.input_levels - xt)
    assert err.max() <= 0.5 / net.input_levels + 1e-6


def _h5_contents(path):
    """Every dataset of an HDF5 file by its path, as numpy arrays."""
    items = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: items.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return items


def test_export_without_check_reads_the_data_layout_from_the_checkpoint(tmp_path, monkeypatch):
    """A checkpoint records its data's layout and input range: exporting it without --check
    loads no dataset and writes the same file as when the dataset is loaded (named
    explicitly, or for an old checkpoint without that record). --check still loads it."""
    from snn2hw.runs.checkpoint import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(1)
    x = rng.uniform(-1.5, 1.5, size=(120, 12)).astype(np.float32)   # signed: the range matters
    np.savez(tmp_path / "signed.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    spec = f"npz:{tmp_path / 'signed.npz'}"
    snn2hw.train({"dataset": spec, "epochs": 1, "hidden": [8]}, out=tmp_path / "run")
    ckpt = tmp_path / "run" / "last.pt"
    old = load_checkpoint(ckpt)
    assert old.pop("data")["value_range"][0] < 0
    save_checkpoint(tmp_path / "old.pt", old)
    export_model(ckpt, "loihi", tmp_path / "named", dataset=spec)
    export_model(tmp_path / "old.pt", "loihi", tmp_path / "old")

    def refuse(*args, **kwargs):
        raise AssertionError("load_dataset was called")

    monkeypatch.setattr("snn2hw.export.api.load_dataset", refuse)
    export_model(ckpt, "loihi", tmp_path / "lazy")
    lazy = _h5_contents(tmp_path / "lazy" / "loihi.net")
    assert lazy["host/input_range"][0] < 0
    for other in ("named", "old"):
        got = _h5_contents(tmp_path / other / "loihi.net")
        assert set(got) == set(lazy)
        for key, value in lazy.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{other}: {key}")
        assert (tmp_path / other / "README.md").read_text() == (tmp_path / "lazy" / "README.md").read_text()
    with pytest.raises(AssertionError, match="load_dataset was called"):
        export_model(ckpt, "loihi", tmp_path / "checked", check=True, samples=5)
