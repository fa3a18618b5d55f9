"""What the trainer does around the methods: TET's two terms by hand, the NaN stop,
clamps of shape parameters made visible, and one SGD step of ASGL's width by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from snn2hw.errors import TrainingDivergedError
from snn2hw.methods import make_method
from snn2hw.runs.checkpoint import load_checkpoint
from snn2hw.train import trainer as trainer_mod
from snn2hw.train.config import build_config
from snn2hw.train.trainer import make_loss, train

from test_methods_contract import digits_subset, run


@pytest.mark.parametrize("lam,phi", [(0.05, 1.0), (0.3, -0.5), (0.0, 1.0)])
def test_tet_loss_is_per_step_ce_plus_lambda_mse_by_hand(lam, phi):
    gen = torch.Generator().manual_seed(0)
    seq = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 2
    y = torch.tensor([0, 3, 4, 1])
    o = seq.numpy()
    ce = 0.0
    for t in range(3):
        for b in range(4):
            z = o[t, b] - o[t, b].max()
            ce += -(z[y[b]] - np.log(np.exp(z).sum()))
    ce /= 12
    mse = np.mean((o - phi) ** 2)
    got = float(make_loss("tet", lam, phi)(seq, y))
    assert got == pytest.approx(ce + lam * mse, rel=1e-12)
    if lam:
        assert got != pytest.approx(ce, rel=1e-3)  # the MSE term is there


@pytest.mark.parametrize("kind,lam,phi", [("ce", 0.0, 1.0), ("tet", 0.05, 1.0), ("tet", 0.3, -0.5), ("tet", 0.0, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_losss_per_copy_form_is_the_loss_of_each_copy(kind, lam, phi, dtype):
    """``per_copy`` on P outputs stacked sample-major (T, B, P, K), as the FDG stacks its
    copies: each copy's loss as the loss itself gives it (to rounding: the sums over the
    samples run in another order), and a copy's value does not depend on how many share
    the call (bit for bit: one copy alone, or all)."""
    gen = torch.Generator().manual_seed(1)
    T, B, P, K = 3, 6, 5, 4
    seq = torch.randn(T, B, P, K, generator=gen, dtype=dtype) * 2
    y = torch.randint(0, K, (B,), generator=gen)
    loss = make_loss(kind, lam, phi)
    got = loss.per_copy(seq, y)
    ref = torch.stack([loss(seq[:, :, p], y) for p in range(P)])
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    assert got.unique().numel() == P  # five different copies
    for p in range(P):
        assert torch.equal(loss.per_copy(seq[:, :, p:p + 1].contiguous(), y), got[p:p + 1])


class _NanAt:
    """Delegates to a method; its extra loss is NaN from epoch ``at`` (0-based) on."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.epoch = inner, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_epoch_start(self, ctx):
        self.epoch = ctx.epoch
        return self.inner.on_epoch_start(ctx)

    def extra_loss(self, model):
        return torch.tensor(float("nan")) if self.epoch >= self.at else self.inner.extra_loss(model)


def test_a_nan_loss_stops_the_run_naming_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "make_method", lambda n, o=None: _NanAt(make_method(n, o), 1))
    with pytest.raises(TrainingDivergedError, match=r"in epoch 2, batch 1.*epoch 1\) is kept"):
        run("sg", out=tmp_path, epochs=3)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 0 and len(ckpt["history"]) == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values() if v.is_floating_point())
    assert not (tmp_path / "summary.json").exists()


def test_the_cli_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    from snn2hw.cli.main import main

    monkeypatch.setattr(trainer_mod, "make_method", lambda n, o=None: _NanAt(make_method(n, o), 0))
    rc = main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("snn2hw train: error: the loss became nan in epoch 1")


def test_shape_parameter_clamps_are_counted_in_the_history():
    r = train(build_config({"method": "asgl", "epochs": 1, "hidden": [16], "shape_lr": 5.0,
                            "method_options": {"alpha_init": 20.0}}), None, progress=False)
    counts = [row["shape_param_clamped"] for row in r.history]
    assert counts[0] > 0   # at shape_lr 5 the width is driven below 1e-3 and held there
    alphas = [float(m.shape_param.detach()) for m in r.model.lif_layers()]
    assert min(alphas) >= 1e-3
    quiet = run("asgl", epochs=1)
    assert quiet.history[0]["shape_param_clamped"] == 0.0


def test_one_sgd_step_moves_asgl_width_by_lr_times_its_gradient_without_weight_decay():
    """p = 1 (exact spikes, no random mask), one batch, SGD momentum 0, weight decay 0.5:
    alpha_1 = alpha_0 - lr * dL/dalpha (no decay on alpha); weights do get the decay."""
    data = digits_subset(n_train=64)
    values = {"dataset": "digits", "method": "asgl", "epochs": 1, "batch_size": 64, "timesteps": 2,
              "hidden": [16], "optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "weight_decay": 0.5,
              "val_fraction": 0, "method_options": {"p": 1.0, "alpha_init": 1.5}}
    r = train(build_config(values), None, progress=False, data=data)
    # the same start, by hand
    trainer_mod.seed_everything(0)
    from snn2hw.models.network import build_model

    cfg = trainer_mod.model_config_for(build_config(values), data)
    model = build_model(cfg)
    method = make_method("asgl", values["method_options"])
    method.setup(model)
    model.train()
    x = data.x_train
    loss = torch.nn.functional.cross_entropy(model.forward_sequence(x.unsqueeze(0).expand(2, *x.shape)).mean(0),
                                             data.y_train)
    lifs = list(model.lif_layers())
    w = dict(model.named_parameters())["layers.1.weight"]
    grads = torch.autograd.grad(loss, [m.shape_param for m in lifs] + [w])
    for m_run, m0, g in zip(r.model.lif_layers(), lifs, grads[:-1]):
        want = float(m0.shape_param.detach()) - 0.1 * float(g)
        assert float(m_run.shape_param.detach()) == pytest.approx(want, rel=1e-5, abs=1e-7)
    w_want = w.detach() * (1 - 0.1 * 0.5) - 0.1 * grads[-1]
    torch.testing.assert_close(dict(r.model.named_parameters())["layers.1.weight"].detach(), w_want,
                               rtol=1e-4, atol=1e-6)
