"""QAT: straight-through rounding, the Loihi grid equals the exporter's integers, attach/detach."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from snn2hw.data.datasets import load_digits
from snn2hw.export.loihi import emulator as emu
from snn2hw.export.loihi.mapping import build_loihi_net, loihi_grid
from snn2hw.export.to_nir import model_to_nir
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model, record_spikes
from snn2hw.train.config import RunConfig
from snn2hw.export.grid import Site, ste_round
from snn2hw.train.qat import attach_qat, fine_tune_defaults, make_grid, qat_targets
from snn2hw.train.trainer import train
from snn2hw.errors import ConfigError


def test_ste_round_forward_and_gradient():
    x = torch.tensor([-1.5, -0.4, 0.49, 0.51, 2.5], requires_grad=True)
    y = ste_round(x)
    torch.testing.assert_close(y, torch.round(x.detach()))
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(5.0))       # identity backward


def test_loihi_grid_values_and_straight_through_gradients():
    torch.manual_seed(0)
    w = torch.randn(6, 10, requires_grad=True)
    b = (0.1 * torch.randn(6)).requires_grad_()
    q = make_grid("loihi").quantise(Site("fc", w, b, v_th=1.0, lam=0.9, input_unit=1 / 16))
    ref = loihi_grid(w.detach().double().numpy(), b.detach().double().numpy(), 1.0, 1 / 16)
    np.testing.assert_array_equal(np.round(q.weight.detach().double().numpy() * ref.weight_scale), ref.weight)
    np.testing.assert_array_equal(np.round(q.bias.detach().double().numpy() * ref.gain), ref.bias)
    assert q.v_th == pytest.approx(ref.vth / ref.gain) and q.v_th == pytest.approx(1.0)
    assert q.lam == 1 - round(4096 * 0.1) / 4096
    r = torch.randn(6, 10)
    ((q.weight * r).sum() + (q.bias * torch.arange(6.0)).sum()).backward()
    torch.testing.assert_close(w.grad, r)                       # gradients pass the rounding
    torch.testing.assert_close(b.grad, torch.arange(6.0))


@pytest.mark.parametrize("target", qat_targets())
def test_every_grid_keeps_shapes_and_leaves_nothing_unset(target):
    grid = make_grid(target)
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4) * 0.1
    for v_th in (1.0, None):                                   # a spiking layer and the readout
        q = grid.quantise(Site("c", w, b, v_th, 0.5 if v_th else None, 1.0))
        assert q.weight.shape == w.shape and q.bias.shape == b.shape
    assert grid.input_levels is None or grid.input_levels >= 1
    with pytest.raises(ConfigError, match="loihi"):
        make_grid("no-such-target")


def _conv_model():
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), channels=(4, 8), timesteps=4,
                                    lam=1.0, v_th=0.5))
    for m in model.modules():                                   # non-trivial folded BN
        if hasattr(m, "running_var"):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(0.0, 0.4)                      # enough drive for both layers to spike
    return model.eval()


def test_attached_model_computes_the_exported_integers():
    model = _conv_model()
    x = load_digits().x_test[:40]
    with torch.no_grad():
        before = model(x)
    handle = attach_qat(model, "loihi")
    with torch.no_grad(), record_spikes(model) as rec:
        model(x)
    handle.detach()
    net = build_loihi_net(model_to_nir(model))
    xi = net.quantise_input(x.numpy())
    spikes = emu.run_samples(net.layers, np.broadcast_to(xi, (4,) + xi.shape))
    for (name, got), want in zip(rec.items(), spikes):
        assert want.mean() > 0.01
        # IAF: only float32 ties at the threshold may differ
        assert float((got[0].numpy().reshape(want.shape) != want).mean()) < 1e-3, name
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)   # detach restores the float model
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_train_with_qat_and_fine_tune_defaults(tmp_path):
    d = load_digits()
    data = replace(d, x_train=d.x_train[:200], y_train=d.y_train[:200], x_test=d.x_test[:50], y_test=d.y_test[:50])
    cfg = RunConfig(dataset="digits", epochs=1, batch_size=50, qat="loihi",
                    model=ModelConfig(arch="mlp", hidden=(16,), timesteps=2))
    result = train(cfg, tmp_path / "run", progress=False, data=data)
    assert result.history[0]["test_accuracy"] >= 0
    assert all("forward" not in m.__dict__ for m in result.model.modules())
    base = fine_tune_defaults(str(tmp_path / "run"))
    assert base["qat"] == "loihi" and base["model"]["hidden"] == [16] and "init_from" not in base
