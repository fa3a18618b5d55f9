"""Dspike: the shape's limits (Lemma 4.1), the batched FDG, the choice of b, and TIT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snn2hw.core.layers import TDBatchNorm
from snn2hw.core.surrogate import Dspike
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.runs.checkpoint import load_checkpoint
from snn2hw.methods import make_method
from snn2hw.methods.base import MethodContext
from snn2hw.methods.dspike import coordinate_subset, finite_difference_grad, first_weight_name
from snn2hw.train.trainer import make_loss

from test_methods_contract import digits, run


@pytest.mark.parametrize("v_th", [0.5, 1.0, 2.0])
def test_lemma_4_1_identity_for_small_b_and_step_for_large_b(v_th):
    x = torch.linspace(-v_th, v_th, 101, dtype=torch.float64)
    shape = Dspike(v_th=v_th)
    small = torch.tensor(1e-4, dtype=torch.float64)
    # identity on the window +-V_th: s = x / (2 V_th) + 1/2, slope 1/(2 V_th)
    torch.testing.assert_close(shape.primitive(x, small), x / (2 * v_th) + 0.5, atol=1e-8, rtol=0)
    torch.testing.assert_close(shape.grad(x, small), torch.full_like(x, 0.5 / v_th), atol=1e-8, rtol=0)
    big = torch.tensor(400.0, dtype=torch.float64)
    away = x.abs() > 0.04 * v_th
    torch.testing.assert_close(shape.primitive(x, big)[away], (x[away] > 0).double(), atol=1e-6, rtol=0)
    assert float(shape.grad(x, big)[away].abs().max()) < 1e-4
    # the derivative integrates to 1 over the window, for any b
    fine = torch.linspace(-v_th, v_th, 200001, dtype=torch.float64)
    for b in (0.1, 1.0, 5.0, 40.0):
        g = shape.grad(fine, torch.tensor(b, dtype=torch.float64))
        assert float(torch.trapezoid(g, fine)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("b", [0.5, 1.0, 3.0])
def test_window_is_plus_minus_v_th_and_equals_eq_12_at_v_th_one_half(b):
    """At V_th = 0.5 the shape is the paper's Eq. 12 on [0, 1] with c = 0.5, by hand;
    at V_th = 1 it is nonzero up to |x| = 1 (an absolute +-0.5 window is not)."""
    u = torch.linspace(0.0, 1.0, 41, dtype=torch.float64)
    p = torch.tensor(b, dtype=torch.float64)
    eq12 = b * (1 - torch.tanh(b * (u - 0.5)) ** 2) / (2 * torch.tanh(torch.tensor(b / 2, dtype=torch.float64)))
    torch.testing.assert_close(Dspike(v_th=0.5).grad(u - 0.5, p), eq12, rtol=1e-12, atol=1e-12)
    x = torch.tensor([-1.01, -0.9, -0.6, 0.6, 0.9, 1.01], dtype=torch.float64)
    g = Dspike(v_th=1.0).grad(x, p)
    assert (g[1:-1] > 0).all() and g[0] == 0 and g[-1] == 0
    # the method installs each layer's own threshold
    model = build_model(ModelConfig(hidden=(8,), v_th=0.7))
    make_method("dspike").setup(model)
    assert {m.surrogate.v_th for m in model.modules() if hasattr(m, "surrogate")} == {0.7}


class _ANN(nn.Module):
    """A smooth model with the network interface: per-step outputs (1, B, K)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 20), nn.Linear(20, 5)

    def forward_sequence(self, x):
        return self.fc2(torch.tanh(self.fc1(x))).unsqueeze(0)


def test_fdg_equals_the_analytic_gradient_of_a_smooth_model():
    torch.manual_seed(0)
    net = _ANN().double()
    x, y = torch.randn(32, 12, dtype=torch.float64), torch.randint(0, 5, (32,))
    loss_fn = make_loss("ce")
    coords = torch.arange(net.fc1.weight.numel())
    fdg = finite_difference_grad(net, "fc1.weight", x, y, loss_fn, coords, eps=0.1, chunk_size=50)
    (g,) = torch.autograd.grad(loss_fn(net.forward_sequence(x), y), [net.fc1.weight])
    cos = torch.nn.functional.cosine_similarity(fdg, g.flatten(), dim=0)
    assert float(cos) > 0.99
    fine = finite_difference_grad(net, "fc1.weight", x, y, loss_fn, coords, eps=1e-4)
    torch.testing.assert_close(fine, g.flatten(), rtol=1e-5, atol=1e-8)


def _looped_fdg(model, weight, x, y, loss_fn, coords, eps):
    """One perturbed forward at a time: the reference for the batched version."""
    w = dict(model.named_parameters())[weight]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = []
    with torch.no_grad():
        for i in coords.tolist():
            losses = []
            for sign in (1.0, -1.0):
                model.load_state_dict(state)
                w.view(-1)[i] += sign * eps
                losses.append(float(loss_fn(model.forward_sequence(x), y)))
            out.append((losses[0] - losses[1]) / (2 * eps))
    model.load_state_dict(state)
    return torch.tensor(out, dtype=w.dtype)


def test_batched_fdg_equals_one_pass_at_a_time_on_a_spiking_conv_net_with_bn():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 8), timesteps=3))
    make_method("dspike").setup(model)
    model.train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss_fn = make_loss("tet")
    coords = torch.arange(model.layers[0].weight.numel())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batched = finite_difference_grad(model, first_weight_name(model), x, y, loss_fn, coords, 0.1, chunk_size=7)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by the FDG"
    ref = _looped_fdg(model, first_weight_name(model), x, y, loss_fn, coords, 0.1)
    torch.testing.assert_close(batched, ref, rtol=1e-4, atol=1e-5)


def _dspike_model(cfg: ModelConfig, dtype: torch.dtype, seed: int):
    """A Dspike model in training mode whose tdBN affines differ per channel, as after training."""
    torch.manual_seed(seed)
    model = build_model(cfg).to(dtype)
    make_method("dspike").setup(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TDBatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
    return model.train()


@pytest.mark.parametrize("cfg", [
    dict(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3),  # 1-D, direct: first stage once
    dict(arch="conv", input_shape=(2, 6, 6), channels=(3,), timesteps=2, carrier="current"),
    dict(arch="mlp", input_shape=(12,), hidden=(9, 7), timesteps=3, tdbn=True, reset="soft"),
    dict(arch="conv", input_shape=(1, 24), channels=(4, 6, 5), timesteps=3),  # conv3: its change only
    dict(arch="conv", input_shape=(1, 10, 9), channels=(3, 4, 5), timesteps=2),
], ids=["conv1d", "conv2d-current", "mlp-tdbn", "conv1d-three", "conv2d-three"])
def test_batched_fdg_equals_the_per_coordinate_loop_in_float64(cfg, backend):
    """Copies stacked along the batch: each copy's own W1 coordinate and sign, its own tdBN
    training statistics (a copy shares no statistics with another), in float64 where the
    loop's and the batch's rounding differ by far less than 1e-6. conv1d and mlp-tdbn take
    the channel-local path (one channel per copy up to the second synapse; its synapse
    compiled, or torch's grouped convolution without the kernel), conv2d-current (pool,
    flatten, readout) the full copies."""
    model = _dspike_model(ModelConfig(**cfg), torch.float64, seed=3)
    x = torch.rand(10, *cfg["input_shape"], dtype=torch.float64) * 2
    y = torch.randint(0, 10, (10,))
    loss_fn = make_loss("tet")
    weight = first_weight_name(model)
    coords = coordinate_subset(dict(model.named_parameters())[weight].numel(), 20, seed=1)
    ref = _looped_fdg(model, weight, x, y, loss_fn, coords, 0.1)
    assert (ref != 0).sum() >= len(coords) // 2  # enough coordinates that move the loss
    for chunk in (None, 7):
        batched = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=chunk)
        torch.testing.assert_close(batched, ref, rtol=0, atol=1e-6)
    assert "forward" not in vars(dict(model.named_modules())[weight.rpartition(".")[0]])


def test_a_random_encoding_is_drawn_once_for_all_copies():
    """Rate-encoded input: every perturbed copy sees the same draw, so the FDG is the loop's
    on that one encoded batch (time-major), not a difference of encoding noise."""
    cfg = ModelConfig(arch="mlp", input_shape=(12,), hidden=(16,), timesteps=4, encoding="rate", tdbn=True)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    make_method("dspike").setup(model)
    model.train()
    x, y = torch.rand(16, 12, dtype=torch.float64), torch.randint(0, 10, (16,))
    loss_fn, coords = make_loss("ce"), torch.arange(40)
    torch.manual_seed(5)
    batched = finite_difference_grad(model, "layers.1.weight", x, y, loss_fn, coords, 0.1)
    torch.manual_seed(5)
    from snn2hw.core.encoders import rate_encode
    ref = _looped_fdg(model, "layers.1.weight", rate_encode(x, 4), y, loss_fn, coords, 0.1)
    assert (ref != 0).any()
    torch.testing.assert_close(batched, ref, rtol=0, atol=1e-9)


def test_a_batch_mixing_norm_other_than_tdbn_is_refused_by_name():
    from snn2hw.errors import ConfigError

    net = _ANN()
    net.bn = nn.BatchNorm1d(20)
    with pytest.raises(ConfigError, match="layer bn .BatchNorm1d.*tdBN"):
        finite_difference_grad(net, "fc1.weight", torch.randn(4, 12), torch.zeros(4, dtype=torch.long),
                               make_loss("ce"), torch.arange(3))


def test_chosen_b_is_the_argmax_of_cosine_similarity():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(64,), timesteps=3))
    method = make_method("dspike", {"b_init": 1.0, "fdg_max_coords": 100})
    method.setup(model)
    x, y = digits().x_train[:64].flatten(1), digits().y_train[:64]
    loss_fn = make_loss("ce")
    row = method.on_epoch_start(MethodContext(model, 0, 5, x, y, loss_fn))
    assert all(float(m.shape_param) == pytest.approx(row["b"]) for m in model.modules() if hasattr(m, "shape_param"))
    # an independent computation of the three cosine similarities
    coords = coordinate_subset(64 * 64, 100)
    fdg = _looped_fdg(model, "layers.1.weight", x, y, loss_fn, coords, 0.1)
    sims = {}
    for label, b in (("-db", 0.8), ("", 1.0), ("+db", 1.2)):
        for m in model.modules():
            if hasattr(m, "shape_param"):
                m.shape_param.fill_(b)
        (g,) = torch.autograd.grad(loss_fn(model.forward_sequence(x), y), [model.layers[1].weight])
        sims[b] = float(torch.nn.functional.cosine_similarity(g.flatten()[coords].double(), fdg.double(), dim=0))
        assert row[f"cos/b{label}"] == pytest.approx(sims[b], abs=1e-4)
    assert row["b"] == max(sims, key=sims.get)
    assert row["fdg_coords"] == 100 and row["fdg_weights"] == 64 * 64


def test_large_first_layer_uses_a_fixed_subset_and_records_it():
    r = run("dspike", epochs=2, hidden=[64])
    for row in r.history:
        assert row["fdg_coords"] == 576 and row["fdg_weights"] == 64 * 64
    assert torch.equal(coordinate_subset(4096, 576), coordinate_subset(4096, 576))
    assert len(torch.unique(coordinate_subset(4096, 576))) == 576
    b = [1.0] + [row["b"] for row in r.history]
    for prev, new in zip(b, b[1:]):
        assert min(abs(new - (prev + d)) for d in (-0.2, 0.0, 0.2)) < 1e-9


def test_state_dict_round_trip():
    m = make_method("dspike")
    m.b = 1.6
    n = make_method("dspike")
    n.load_state_dict(m.state_dict())
    assert n.b == 1.6


def test_tit_fine_tunes_a_lower_T_run_from_a_higher_T_checkpoint(tmp_path):
    high = run("dspike", data=digits(), out=tmp_path / "t4", epochs=4, batch_size=64, timesteps=4,
               method_options={"fdg_max_coords": 64})
    ckpt = load_checkpoint(tmp_path / "t4" / "last.pt")
    # TIT carries b over: give the checkpoint a temperature no fresh run starts near
    from snn2hw.runs.checkpoint import save_checkpoint

    ckpt["method_state"] = {"b": 3.0}
    save_checkpoint(tmp_path / "t4" / "last.pt", ckpt)
    # lr = 0: the low-T run keeps the inherited weights exactly
    same = run("dspike", data=digits(), epochs=1, timesteps=2, lr=0.0, init_from=str(tmp_path / "t4" / "last.pt"),
               method_options={"fdg_max_coords": 64})
    assert same.model.timesteps == 2
    assert min(abs(same.history[0]["b"] - b) for b in (2.8, 3.0, 3.2)) < 1e-9  # from 3, not b_init = 1
    for k, v in same.model.state_dict().items():
        if not k.endswith("shape_param"):
            torch.testing.assert_close(v, ckpt["model_state"][k], rtol=0, atol=0)
    tuned = run("dspike", data=digits(), epochs=2, batch_size=64, timesteps=2, init_from=str(tmp_path / "t4" / "last.pt"),
                method_options={"fdg_max_coords": 64})
    fresh = run("dspike", data=digits(), epochs=2, batch_size=64, timesteps=2, method_options={"fdg_max_coords": 64})
    assert high.summary["test_accuracy"] > 0.85
    assert tuned.summary["test_accuracy"] > 0.85
    # the inherited weights start far ahead of a fresh low-T run with the same budget
    assert tuned.history[0]["test_accuracy"] > fresh.history[0]["test_accuracy"] + 0.05


def test_fdg_on_a_qat_model_runs_its_grid_forwards_and_keeps_them():
    """A model computing on a target's grid (train --qat) has forwards installed on its
    modules: the FDG runs them (the loop's numbers) and leaves them in place."""
    from snn2hw.train.qat import attach_qat

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 8), timesteps=3,
                                    lam=1.0, v_th=0.5))
    make_method("dspike").setup(model)
    with torch.no_grad():  # enough drive for both layers to spike on the grid (as test_qat)
        for m in model.modules():
            if isinstance(m, TDBatchNorm):
                m.bias.uniform_(0.0, 0.4)
    handle = attach_qat(model, "loihi", (0.0, 1.0))
    installed = {n: vars(m)["forward"] for n, m in model.named_modules() if "forward" in vars(m)}
    assert "layers.0" in installed
    model.train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss_fn, coords = make_loss("tet"), torch.arange(model.layers[0].weight.numel())
    batched = finite_difference_grad(model, "layers.0.weight", x, y, loss_fn, coords, 0.5, chunk_size=7)
    assert {n: vars(m).get("forward") for n, m in model.named_modules() if n in installed} == installed
    ref = _looped_fdg(model, "layers.0.weight", x, y, loss_fn, coords, 0.5)
    assert (ref != 0).sum() > 5, ref
    torch.testing.assert_close(batched, ref, rtol=1e-4, atol=1e-5)
    handle.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 24), (1, 10, 9)], ids=["1d", "2d"])
def test_fdg_runs_tdbn_lif_pool_fused_with_the_unfused_numbers(dtype, shape, monkeypatch):
    """The FDG's blocks ``[tdBN, LIF, Pool]`` run as one compiled pass per chunk (statistics
    per copy: the kernel sees copies x channels), ``[LIF, Pool]`` after a static tdBN too: the
    FDG is bit for bit the one of the modules run in turn (``fuse_layers = False``), in float32
    as well, and every block of the copies went through the compiled pass."""
    from snn2hw.core import layers as core_layers
    from snn2hw.methods import dspike

    cfg = ModelConfig(arch="conv", input_shape=shape, channels=(4, 6, 5) if len(shape) == 2 else (3, 6),
                      timesteps=3)
    model = _dspike_model(cfg, dtype, seed=4)
    x, y = torch.rand(12, *shape, dtype=dtype) * 2, torch.randint(0, 10, (12,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    fused_calls = []
    real = dspike.bn_lif_pool
    monkeypatch.setattr(dspike, "bn_lif_pool", lambda z, *a: fused_calls.append(z.shape) or real(z, *a))
    fused = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    monkeypatch.setattr(core_layers, "fuse_layers", False)
    unfused = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    assert (unfused != 0).sum() >= len(coords) // 2
    assert torch.equal(fused, unfused)
    chunks = -(-2 * len(coords) // 5)
    # the blocks after conv2, every chunk; with a conv3, its unperturbed input once (_later)
    later = len(cfg.channels) - 2
    assert len(fused_calls) == later + (len(cfg.channels) - 1) * chunks
    assert fused_calls[later][2] == 5 * 6  # 5 copies x 6 channels: statistics per copy
    if dtype == torch.float64:
        ref = _looped_fdg(model, weight, x, y, loss_fn, coords, 0.1)
        torch.testing.assert_close(fused, ref, rtol=0, atol=1e-6)


def _sech2(z):
    """The sigmoid form ``4 e (1 - e)``, ``e = sigmoid(-2|z|)``, Dspike's grad used to call."""
    e = z.abs().mul_(-2.0).sigmoid_()
    return torch.sub(1.0, e).mul_(e).mul_(4.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("v_th", [0.5, 0.7, 1.0, 2.0])
def test_dspike_grad_is_bit_for_bit_the_sech2_form(dtype, v_th):
    """``Dspike.grad`` (two fresh tensors, the rest in place) gives the very numbers of the
    form it replaced, ``sech2(x b / 2V_th) * b / (2 tanh(b/2)) / 2V_th`` times the window
    ``|x| <= V_th`` (1/0): at the window's edges and just past them, at +-0, far outside, and
    for small and large b; its input is left as it was."""

    torch.manual_seed(1)
    edge = torch.tensor([v_th, -v_th, 0.0, -0.0, 10 * v_th, -10 * v_th], dtype=dtype)
    past = torch.nextafter(edge[:2], edge[:2] * 2)
    inside = torch.nextafter(edge[:2], torch.zeros(2, dtype=dtype))
    x = torch.cat([edge, past, inside, torch.randn(4001, dtype=dtype) * 1.5 * v_th])
    x_before = x.clone()
    shape = Dspike(v_th=v_th)
    for b in (0.05, 0.4, 1.0, 1.2, 3.7, 47.0):
        p = torch.tensor(b, dtype=dtype)
        old = _sech2(x * (p / (2.0 * v_th))).mul_(p / (2.0 * torch.tanh(p / 2.0)) / (2.0 * v_th))
        old = old.mul_((x.abs() <= v_th).to(dtype))
        got = shape.grad(x, p)
        assert torch.equal(got, old), (b, (got - old).abs().max())
        assert float(got[8]) > 0 and float(got[9]) > 0 and float(got[6]) == 0 and float(got[7]) == 0
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("cfg", [
    dict(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3),
    dict(arch="conv", input_shape=(1, 7, 6), channels=(3, 4), timesteps=2),
    dict(arch="mlp", input_shape=(12,), hidden=(9, 7), timesteps=3, tdbn=True),
    dict(arch="conv", input_shape=(1, 24), channels=(4, 6, 5), timesteps=3),
], ids=["conv1d", "conv2d", "mlp-tdbn", "conv1d-three"])
def test_the_fdg_does_not_depend_on_how_many_copies_share_a_pass(cfg):
    """One copy per pass, a few, all at once: bit for bit the same FDG in float32 (each
    copy's numbers are computed alone; nothing of the unperturbed pass is written over
    when a chunk holds a single copy)."""
    model = _dspike_model(ModelConfig(**cfg), torch.float32, seed=6)
    x, y = torch.rand(10, *cfg["input_shape"]) * 2, torch.randint(0, 10, (10,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = coordinate_subset(dict(model.named_parameters())[weight].numel(), 24, seed=2)
    by_chunk = {c: finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=c)
                for c in (1, 3, None, 0)}
    assert (by_chunk[1] != 0).sum() >= len(coords) // 2
    for c in (3, None, 0):  # 0: the automatic chunk
        assert torch.equal(by_chunk[c], by_chunk[1]), c


def test_the_automatic_chunk_is_as_many_copies_as_pass_bytes_holds(monkeypatch):
    """chunk_size 0: the copies per pass are PASS_BYTES over one copy's widest tensor after
    the second synapse, here by hand the conv2 output (and the LIF's spikes) of T x batch x
    channels x length (16 pooled to 8) floats; a bound of three copies' bytes gives passes of three."""
    from snn2hw.methods import dspike

    cfg = ModelConfig(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3)
    model = _dspike_model(cfg, torch.float32, seed=5)
    x, y = torch.rand(10, 1, 16) * 2, torch.randint(0, 10, (10,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = coordinate_subset(dict(model.named_parameters())[weight].numel(), 8, seed=1)  # 16 copies
    copy_bytes = 3 * 10 * 6 * 8 * 4
    sizes = []
    real = dspike._bytes_per_copy
    monkeypatch.setattr(dspike, "_bytes_per_copy", lambda *a: sizes.append(real(*a)) or sizes[-1])
    passes = []
    real_forward = dspike._ChannelLocal.forward
    monkeypatch.setattr(dspike._ChannelLocal, "forward", lambda self, a, b: passes.append((a, b)) or real_forward(self, a, b))
    monkeypatch.setattr(dspike, "PASS_BYTES", 3 * copy_bytes + 100)
    auto = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=0)
    assert sizes == [copy_bytes]
    assert passes == [(a, min(a + 3, 16)) for a in range(0, 16, 3)]
    assert torch.equal(auto, finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=1))
    assert dspike.auto_chunk(copy_bytes, 16) == 3 and dspike.auto_chunk(10 ** 12, 16) == 1
    monkeypatch.setattr(dspike, "PASS_BYTES", 10 ** 9)
    assert dspike.auto_chunk(copy_bytes, 16) == 16


def test_settling_the_allocator_serves_a_pass_of_large_tensors_from_the_heap():
    """In a fresh process, a 24 MiB tensor is a fresh mapping (glibc's mmap threshold starts
    at 128 KiB); after ``settle_allocator`` the same tensor comes from the heap (mallinfo2's
    mapped bytes do not grow)."""
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("not glibc >= 2.33")
    script = """
import ctypes, sys, torch
from snn2hw.methods.dspike import settle_allocator
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def grows(nbytes):
    before = libc.mallinfo2().hblkhd
    t = torch.empty(nbytes, dtype=torch.uint8)
    return libc.mallinfo2().hblkhd - before
if sys.argv[1] == "settle":
    settle_allocator()
print(grows(24 << 20), grows(12 << 20))
"""
    def mapped(how: str) -> list[int]:  # a fresh process each: freeing a mapped block moves the threshold
        run = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, check=True)
        return [int(v) for v in run.stdout.split()]

    assert mapped("as-is")[0] >= 24 << 20
    assert mapped("settle") == [0, 0]


@pytest.mark.parametrize("cfg", [
    dict(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3),
    dict(arch="conv", input_shape=(1, 7, 6), channels=(3, 4), timesteps=2),
    dict(arch="mlp", input_shape=(12,), hidden=(9, 7), timesteps=3, tdbn=True),
], ids=["conv1d", "conv2d", "mlp-tdbn"])
def test_the_perturbed_channels_made_in_blocks_give_the_same_fdg(cfg, monkeypatch):
    """The copies' perturbed channels are made a block of copies at a time, CHANGE_BYTES at
    most: a bound that cuts them into blocks of one chunk (and a shorter last one) gives
    the FDG of one block for all, bit for bit, and one block call per block."""
    from snn2hw.methods import dspike

    model = _dspike_model(ModelConfig(**cfg), torch.float32, seed=3)
    x, y = torch.rand(10, *cfg["input_shape"]) * 2, torch.randint(0, 10, (10,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = coordinate_subset(dict(model.named_parameters())[weight].numel(), 11, seed=1)  # 22 copies
    calls = []
    real = dspike._ChannelLocal._changes
    monkeypatch.setattr(dspike._ChannelLocal, "_changes", lambda self, a, b: calls.append((a, b)) or real(self, a, b))
    whole = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=4)
    assert calls == [(0, 22)]
    calls.clear()
    monkeypatch.setattr(dspike, "CHANGE_BYTES", 1)  # below one copy's: blocks of one chunk
    blocks = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=4)
    assert calls == [(a, min(a + 4, 22)) for a in range(0, 22, 4)]
    assert (whole != 0).sum() >= 5
    assert torch.equal(blocks, whole)


def test_the_fdg_copies_take_the_compiled_statistics_and_training_keeps_torchs(count_calls):
    """Where the compiled statistics apply: the FDG's fused tdBN blocks (training
    statistics, no running buffers, float32) take ``_kernel.bn_stats``, once per block and
    chunk; a training step, whose tdBN updates running statistics, never does."""
    from snn2hw.core import _kernel

    if _kernel._library() is None:
        pytest.skip("no compiled kernel")
    cfg = ModelConfig(arch="conv", input_shape=(1, 24), channels=(3, 6), timesteps=3)
    model = _dspike_model(cfg, torch.float32, seed=4)
    x, y = torch.rand(12, 1, 24) * 2, torch.randint(0, 10, (12,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    calls = count_calls(_kernel, "bn_stats")
    finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    assert len(calls) == -(-2 * len(coords) // 5)  # one fused block after conv2, every chunk
    calls.clear()
    loss_fn(model.forward_sequence(x), y).backward()
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", [
    dict(z=(6, 4, 20), k=(3,), stride=(1,), padding=(1,), dilation=(1,)),  # the mnist1d net's conv2
    dict(z=(5, 3, 17), k=(5,), stride=(2,), padding=(3,), dilation=(2,)),
    dict(z=(4, 3, 9, 11), k=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
    dict(z=(4, 2, 9, 11), k=(3, 2), stride=(2, 3), padding=(2, 1), dilation=(2, 1)),
    dict(z=(3, 2, 6, 7), k=(2, 4), stride=(1, 2), padding=(0, 2), dilation=(1, 2)),
], ids=["1d", "1d-strided", "2d", "2d-strided", "2d-4taps"])
def test_the_compiled_channel_local_synapse_is_base_plus_the_grouped_convolution(kernel_lib, monkeypatch, dtype,
                                                                                 geometry):
    """``_kernel.channel_local_conv``: ``base[n] + conv(z[n, p], w[p])`` per copy p, as torch's
    grouped convolution (one input channel per group) plus the broadcast base computes it:
    to 1e-12 in float64 and a few ulps in float32, over strides, zero padding, dilation and
    tap counts with and without the unrolled sums (3 and 9 taps, and others)."""
    import torch.nn.functional as F
    from snn2hw.core import _kernel

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(7)
    N, P, *S = geometry["z"]
    C = 5
    z = torch.randn(N, P, *S, generator=gen, dtype=dtype)
    w = torch.randn(P, C, *geometry["k"], generator=gen, dtype=dtype)
    conv = F.conv1d if len(S) == 1 else F.conv2d
    args = geometry["stride"], geometry["padding"], geometry["dilation"]
    delta = conv(z, w.reshape(P * C, 1, *geometry["k"]), None, *args, P)
    base = torch.randn(N, C, *delta.shape[2:], generator=gen, dtype=dtype)
    ref = base.unsqueeze(1) + delta.view(N, P, C, *delta.shape[2:])
    got = _kernel.channel_local_conv(z, w, base, *args)
    assert got.shape == ref.shape
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def _separate_probes(model, weight, x, y, loss_fn, coords, values):
    """The probes as the method ran them before: b set in every LIF, one forward and backward each."""
    from snn2hw.methods.dspike import surrogate_grad

    grads = []
    for b in values:
        for m in model.modules():
            if hasattr(m, "shape_param"):
                m.shape_param.fill_(b)
        grads.append(surrogate_grad(model, weight, x, y, loss_fn, coords))
    return grads


@pytest.mark.parametrize("cfg", [
    dict(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3),  # tdBN -> LIF -> pool fused
    dict(arch="mlp", input_shape=(12,), hidden=(9, 7), timesteps=3, tdbn=True, reset="soft"),
    dict(arch="mlp", input_shape=(12,), hidden=(9,), timesteps=3),
], ids=["conv1d", "mlp-tdbn", "mlp"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "modules"])
def test_the_probes_of_three_b_from_one_forward_are_the_separate_probes(cfg, fuse, monkeypatch):
    """``surrogate_grads``: one forward, b read by each backward as it runs; bit for bit the
    gradients of b set in every LIF and one forward each (fused passes and modules run in
    turn), the three differ from one another, and the shape parameters are left as found."""
    from snn2hw.core import layers as core_layers
    from snn2hw.methods.dspike import surrogate_grads

    monkeypatch.setattr(core_layers, "fuse_layers", fuse)
    model = _dspike_model(ModelConfig(**cfg), torch.float32, seed=5)
    x, y = torch.rand(16, *cfg["input_shape"]) * 2, torch.randint(0, 10, (16,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    values = [0.6, 1.0, 1.4]
    for m in model.modules():
        if hasattr(m, "shape_param"):
            m.shape_param.fill_(0.9)
    shared = surrogate_grads(model, weight, x, y, loss_fn, coords, values)
    assert all(float(m.shape_param) == pytest.approx(0.9) for m in model.modules() if hasattr(m, "shape_param"))
    ref = _separate_probes(model, weight, x, y, loss_fn, coords, values)
    for got, want in zip(shared, ref):
        assert torch.equal(got, want)
    assert not torch.equal(ref[0], ref[1]) and not torch.equal(ref[1], ref[2])


def test_the_probes_take_a_forward_each_where_b_is_not_read_late(monkeypatch):
    """A forward that does not read the saved b late (here: ``late`` ignored) gives the same
    gradients: the first backward's b is the one the forward ran with, the others are forwards of their own."""
    from snn2hw.methods.dspike import surrogate_grads

    cfg = ModelConfig(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3)
    model = _dspike_model(cfg, torch.float32, seed=6)
    x, y = torch.rand(16, 1, 16) * 2, torch.randint(0, 10, (16,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    forwards = []
    plain = model.forward_sequence
    monkeypatch.setattr(model, "forward_sequence", lambda x, late=None: forwards.append(1) or plain(x))
    shared = surrogate_grads(model, weight, x, y, loss_fn, coords, [0.6, 1.0, 1.4])
    assert len(forwards) == 3
    monkeypatch.setattr(model, "forward_sequence", plain)
    for got, want in zip(shared, _separate_probes(model, weight, x, y, loss_fn, coords, [0.6, 1.0, 1.4])):
        assert torch.equal(got, want)


def test_a_second_backward_through_the_fused_pool_is_refused_unless_the_graph_is_reused():
    """``FusedBNLIFPool``'s backward overwrites its saved x: a second backward through the same
    forward raises (it would read the first one's gradient as x); recorded under
    ``reused_graph`` it works on a copy, and both backward passes give the same gradient."""
    from snn2hw.core.fused import reused_graph

    cfg = ModelConfig(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3)
    model = _dspike_model(cfg, torch.float32, seed=7)
    x, y = torch.rand(16, 1, 16) * 2, torch.randint(0, 10, (16,))
    loss_fn, w = make_loss("tet"), model.layers[0].weight
    loss = loss_fn(model.forward_sequence(x), y)
    torch.autograd.grad(loss, [w], retain_graph=True)
    with pytest.raises(RuntimeError, match="FusedBNLIFPool.*reused_graph"):
        torch.autograd.grad(loss, [w])
    with reused_graph():
        loss = loss_fn(model.forward_sequence(x), y)
    (first,) = torch.autograd.grad(loss, [w], retain_graph=True)
    (second,) = torch.autograd.grad(loss, [w])
    assert torch.equal(first, second) and first.abs().sum() > 0


@pytest.mark.parametrize("width", [20, 10, 16, 33, 3])
def test_the_channel_local_synapse_sums_its_three_taps_in_order_bit_for_bit(kernel_lib, monkeypatch, width):
    """Three taps, float32 (the rows the mnist1d FDG makes, in 16-lane steps and a masked last
    one where the CPU has AVX-512): every output is ``base + ((0 + w0 x0 + w1 x1) + w2 x2)``
    in float32, each operation rounded, as torch's elementwise ops compute it, bit for bit;
    rows of 20, 10, 16, 33 and 3 (full steps, a short last one, only a short one)."""
    import torch.nn.functional as F
    from snn2hw.core import _kernel

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(11)
    N, P, C = 4, 3, 5
    z = torch.randn(N, P, width, generator=gen)
    w = torch.randn(P, C, 3, generator=gen)
    base = torch.randn(N, C, width, generator=gen)
    got = _kernel.channel_local_conv(z, w, base, (1,), (1,), (1,))
    zp = F.pad(z, (1, 1))  # tap t of output j reads input j - 1 + t
    taps = [zp[:, :, None, t:t + width] for t in range(3)]  # (N, P, 1, W)
    wt = [w[None, :, :, t, None] for t in range(3)]  # (1, P, C, 1)
    acc = torch.zeros(N, P, C, width) + wt[0] * taps[0]
    acc = acc + wt[1] * taps[1]
    acc = acc + wt[2] * taps[2]
    assert torch.equal(got, base[:, None] + acc)


def test_choosing_the_chunk_draws_no_random_encoding_from_the_generator():
    """Rate-encoded input: ``automatic_chunk`` encodes the probe batch to measure sizes only;
    the generator the FDG then draws its encoding from is where it was (the method's first
    epoch gives the FDG it gave before the chunk was chosen apart from it)."""
    from snn2hw.methods import dspike

    cfg = ModelConfig(arch="mlp", input_shape=(12,), hidden=(16,), timesteps=4, encoding="rate", tdbn=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    make_method("dspike").setup(model)
    model.train()
    x, y = torch.rand(16, 12), torch.randint(0, 10, (16,))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert dspike.automatic_chunk(model, "layers.1.weight", x, y, torch.arange(40)) >= 1
    assert torch.equal(torch.get_rng_state(), before)


def test_the_automatic_chunk_is_chosen_once_for_the_probe_batch(monkeypatch):
    """``automatic_chunk`` is what chunk_size 0 chooses; DspikeMethod (fdg_chunk 0) measures it
    on its first epoch only (one forward of the probe batch) and the FDG it then runs is the
    one chunk_size 0 gives, bit for bit."""
    from snn2hw.methods import dspike

    cfg = ModelConfig(arch="conv", input_shape=(1, 16), channels=(4, 6), timesteps=3)
    model = _dspike_model(cfg, torch.float32, seed=5)
    x, y = torch.rand(10, 1, 16) * 2, torch.randint(0, 10, (10,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = coordinate_subset(dict(model.named_parameters())[weight].numel(), 8, seed=1)
    monkeypatch.setattr(dspike, "PASS_BYTES", 3 * (3 * 10 * 6 * 8 * 4) + 100)  # three copies a pass
    assert dspike.automatic_chunk(model, weight, x, y, coords) == 3
    measured, fdgs = [], []
    real_bytes, real_fdg = dspike._bytes_per_copy, dspike.finite_difference_grad
    monkeypatch.setattr(dspike, "_bytes_per_copy", lambda *a: measured.append(1) or real_bytes(*a))
    monkeypatch.setattr(dspike, "finite_difference_grad", lambda *a: fdgs.append(a) or real_fdg(*a))
    method = make_method("dspike", {"fdg_max_coords": 8})
    for epoch in range(3):
        method.on_epoch_start(MethodContext(model, epoch, 3, x, y, loss_fn))
    assert len(measured) == 1 and [a[-1] for a in fdgs] == [3, 3, 3]
    model_fdg = real_fdg(*fdgs[-1][:-1], 0)
    assert torch.equal(real_fdg(*fdgs[-1]), model_fdg)


def test_conv_taps_is_the_output_each_input_reaches_by_hand():
    """``_kernel.conv_taps``: 5 inputs, 3 taps, stride 2, padding 1 (output o reads inputs
    2o - 1 + k): input i reaches output (i + 1 - k) / 2 where that is a whole number in 0..2."""
    from snn2hw.core import _kernel

    table = _kernel.conv_taps((5,), (3,), (3,), (2,), (1,), (1,))
    assert table.tolist() == [[-1, 0, -1], [1, -1, 0], [-1, 1, -1], [2, -1, 1], [-1, 2, -1]]
    # 2-d, taps 1 x 2, column padding 1 (output (i, j) reads input (i, j - 1 + b)): flat
    # positions i * 3 + j; input (1, 0) reaches (1, 1) and (1, 0), input (0, 2) only (0, 2)
    table = _kernel.conv_taps((2, 3), (2, 3), (1, 2), (1, 1), (0, 1), (1, 1))
    assert table[1 * 3 + 0].tolist() == [1 * 3 + 1, 1 * 3 + 0] and table[0 * 3 + 2].tolist() == [-1, 0 * 3 + 2]


def _spike_rows(gen: torch.Generator, rows: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows of pooled spikes (0, 0.5, 1) as the FDG's copies carry them."""
    return ((torch.rand(rows, *shape, generator=gen) < 0.3).to(dtype)
            + (torch.rand(rows, *shape, generator=gen) < 0.3).to(dtype)) / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", [
    dict(s=(10,), co=32, k=(3,), stride=(1,), padding=(1,), dilation=(1,)),  # the mnist1d net's conv3
    dict(s=(17,), co=20, k=(5,), stride=(2,), padding=(3,), dilation=(2,)),
    dict(s=(9, 11), co=5, k=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
    dict(s=(9, 11), co=17, k=(3, 2), stride=(2, 3), padding=(2, 1), dilation=(2, 1)),
], ids=["1d", "1d-strided", "2d", "2d-strided"])
def test_the_later_synapse_is_the_unperturbed_output_plus_the_changes_convolution(kernel_lib, monkeypatch, dtype,
                                                                                 geometry):
    """``_kernel.delta_conv``: row n of copies whose inputs differ from the unperturbed row
    n // P in a few spikes gives torch's convolution of that row: to 1e-12 in float64 and a
    few ulps in float32, over strides, padding, dilation and channel counts that fill 16-lane
    steps and leave a masked last one."""
    import torch.nn.functional as F
    from snn2hw.core import _kernel

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(3)
    R, P, Ci, Co = 6, 4, 3, geometry["co"]
    conv = F.conv1d if len(geometry["s"]) == 1 else F.conv2d
    args = geometry["stride"], geometry["padding"], geometry["dilation"]
    w = torch.randn(Co, Ci, *geometry["k"], generator=gen, dtype=dtype)
    base_in = _spike_rows(gen, R, Ci, *geometry["s"], dtype=dtype)
    x = base_in.repeat_interleave(P, 0)
    flips = torch.rand(x.shape, generator=gen) < 0.05
    x[flips] = 1 - x[flips]
    base_out = conv(base_in, w, None, *args)
    size = tuple(base_out.shape[2:])
    table = _kernel.conv_taps(geometry["s"], size, geometry["k"], *args)
    got = _kernel.delta_conv(x, base_in, base_out.flatten(2).transpose(1, 2).contiguous(),
                             w.flatten(2).permute(1, 2, 0).contiguous(), table, size)
    tol = 1e-12 if dtype == torch.float64 else 4e-6
    torch.testing.assert_close(got, conv(x, w, None, *args), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_later_synapse_adds_its_changes_in_order_bit_for_bit(kernel_lib, monkeypatch, dtype):
    """Each output of ``_kernel.delta_conv`` is the unperturbed output plus d x w for every
    changed input (channel, position) and tap in that order, each operation rounded, bit
    for bit (float32: the AVX-512 pass where the CPU has it; 20 channels: a full 16-lane step
    and a masked one); a row without changes is the unperturbed output exactly."""
    from snn2hw.core import _kernel

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(5)
    R, P, Ci, Co, L = 2, 3, 3, 20, 7
    base_in = _spike_rows(gen, R, Ci, L, dtype=dtype)
    x = base_in.repeat_interleave(P, 0)
    flips = torch.rand(x.shape, generator=gen) < 0.2
    flips[0] = False  # row 0: unchanged
    x[flips] = 1 - x[flips]
    wt = torch.randn(Ci, 3, Co, generator=gen, dtype=dtype)
    base_t = torch.randn(R, L, Co, generator=gen, dtype=dtype)
    table = _kernel.conv_taps((L,), (L,), (3,), (1,), (1,), (1,))
    got = _kernel.delta_conv(x, base_in, base_t, wt, table, (L,))
    ref = base_t.repeat_interleave(P, 0).clone()  # (N, L, Co)
    for n in range(R * P):
        for ci in range(Ci):
            for i in range(L):
                d = x[n, ci, i] - base_in[n // P, ci, i]
                for k in range(3):
                    o = int(table[i, k])
                    if d != 0 and o >= 0:
                        ref[n, o] = ref[n, o] + d * wt[ci, k]
    assert int(flips.sum()) > 10
    assert torch.equal(got, ref.transpose(1, 2))
    assert torch.equal(got[0], base_t[0].t())


def test_the_fdg_runs_the_synapses_after_the_channel_local_one_as_their_change(count_calls, monkeypatch):
    """A conv net of three synapses: conv3 of the copies runs as the unperturbed output plus
    the change (``_kernel.delta_conv``, once per chunk), and the FDG is the one of conv3 run
    densely on every copy (the change is exact: to 1e-9 in float64)."""
    from snn2hw.core import _kernel
    from snn2hw.methods import dspike

    if _kernel._library() is None:
        pytest.skip("no compiled kernel")
    cfg = ModelConfig(arch="conv", input_shape=(1, 24), channels=(4, 6, 5), timesteps=3)
    model = _dspike_model(cfg, torch.float64, seed=8)
    x, y = torch.rand(12, 1, 24, dtype=torch.float64) * 2, torch.randint(0, 10, (12,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    calls = count_calls(_kernel, "delta_conv")
    changed = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    assert len(calls) == -(-2 * len(coords) // 5)
    monkeypatch.setattr(dspike._ChannelLocal, "_later", lambda self, layer, z: layer(z))  # conv3 dense
    dense = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    assert (dense != 0).sum() >= len(coords) // 2
    torch.testing.assert_close(changed, dense, rtol=0, atol=1e-9)


@pytest.mark.parametrize("hooked", [4, 8], ids=["conv2-hooked", "conv3-hooked"])
def test_a_synapse_with_a_hook_runs_as_a_module_in_the_fdg(hooked):
    """The FDG computes the channel-local synapse and the ones after it from their weights;
    a synapse with a hook (here one that scales its input by 3) is not that function of its
    weight, so it runs as a module: the FDG is still the per-coordinate loop's (float64)."""
    cfg = ModelConfig(arch="conv", input_shape=(1, 24), channels=(4, 6, 5), timesteps=3)
    model = _dspike_model(cfg, torch.float64, seed=8)
    model.layers[hooked].register_forward_pre_hook(lambda m, a: (a[0] * 3,))
    x, y = torch.rand(12, 1, 24, dtype=torch.float64) * 2, torch.randint(0, 10, (12,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    ref = _looped_fdg(model, weight, x, y, loss_fn, coords, 0.1)
    assert (ref != 0).sum() >= len(coords) // 2
    got = finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_the_later_synapse_sees_few_changes_against_its_unperturbed_rows(monkeypatch):
    """What makes ``_later`` pay: a copy's input to conv3 is the unperturbed pass's row
    n // P but for a few spikes (the base is the pass a copy without change runs). Every
    call's rows differ from their base in under a fifth of their values, and a copy whose
    perturbation is zero is the unperturbed output exactly."""
    from snn2hw.core import _kernel
    from snn2hw.methods import dspike

    if _kernel._library() is None:
        pytest.skip("no compiled kernel")
    cfg = ModelConfig(arch="conv", input_shape=(1, 24), channels=(4, 6, 5), timesteps=3)
    model = _dspike_model(cfg, torch.float32, seed=8)
    x, y = torch.rand(12, 1, 24) * 2, torch.randint(0, 10, (12,))
    loss_fn, weight = make_loss("tet"), first_weight_name(model)
    coords = torch.arange(dict(model.named_parameters())[weight].numel())
    shares, outs = [], []
    real = _kernel.delta_conv

    def watched(z, base_in, base_t, wt, table, size):
        P = z.shape[0] // base_in.shape[0]
        shares.append(float((z != base_in.repeat_interleave(P, 0)).double().mean()))
        outs.append((real(z, base_in, base_t, wt, table, size), base_t))
        return outs[-1][0]

    monkeypatch.setattr(_kernel, "delta_conv", watched)
    finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.1, chunk_size=5)
    assert len(shares) == -(-2 * len(coords) // 5) and max(shares) < 0.2 and min(shares) > 0
    shares.clear(), outs.clear()
    finite_difference_grad(model, weight, x, y, loss_fn, coords, 0.0, chunk_size=5)  # no change at all
    assert shares and max(shares) == 0
    for out, base_t in outs:
        P = out.shape[0] // base_t.shape[0]
        assert torch.equal(out, base_t.transpose(1, 2).repeat_interleave(P, 0).view(out.shape))


def test_the_later_synapse_refuses_shapes_that_do_not_match(kernel_lib, monkeypatch):
    """``_kernel.delta_conv`` reads its arguments by the sizes it is given: a weight, a base
    or a table of another layer is refused by name before the kernel runs."""
    from snn2hw.core import _kernel

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    x, base_in = torch.zeros(6, 3, 7), torch.zeros(2, 3, 7)
    base_t, wt = torch.zeros(2, 7, 4), torch.zeros(3, 3, 4)
    table = _kernel.conv_taps((7,), (7,), (3,), (1,), (1,), (1,))
    assert _kernel.delta_conv(x, base_in, base_t, wt, table, (7,)).shape == (6, 4, 7)
    for bad in (dict(wt=torch.zeros(3, 3, 5)), dict(base_in=torch.zeros(2, 3, 8)), dict(x=torch.zeros(5, 3, 7)),
                dict(table=_kernel.conv_taps((8,), (8,), (3,), (1,), (1,), (1,))), dict(base_t=torch.zeros(3, 7, 4))):
        args = dict(x=x, base_in=base_in, base_t=base_t, wt=wt, table=table) | bad
        with pytest.raises(ValueError, match="delta_conv: shapes do not match"):
            _kernel.delta_conv(**args, out_size=(7,))
