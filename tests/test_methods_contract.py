"""Contract tests over every registered training method (the METHODS registry, so a
new method is tested as soon as it is registered): each trains every architecture
with both losses, records its adaptive parameters in the history, gives exactly
binary spikes in eval mode, has its hooks called in order, round-trips its state
through a checkpoint, resumes exactly, and its checkpoint names the surrogate shape
its layers ran with."""

from __future__ import annotations

from functools import lru_cache

import pytest
from interrupted_runs import whole_and_resumed
import torch

from snn2hw.data.datasets import DataSplit, load_dataset
from snn2hw.models.network import record_spikes
from snn2hw.runs.checkpoint import load_checkpoint
from snn2hw.train.config import build_config
from snn2hw.methods import METHODS, make_method
from snn2hw.train import trainer as trainer_mod
from snn2hw.runs.model import load_model
from snn2hw.train.trainer import train

# The history keys each method must write (prefix of ``<param>/<layer>``).
RECORDED = {"sg": None, "cpng": "beta/", "psg": "gamma/", "asgl": "alpha/", "gsg": "beta/", "dspike": "b"}


@lru_cache(maxsize=None)
def digits() -> DataSplit:
    return load_dataset("digits")


def digits_subset(n_train: int = 256, n_test: int = 128) -> DataSplit:
    d = digits()
    return DataSplit("digits", d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test],
                     d.y_test[:n_test], d.num_classes)


def run(method: str, data: DataSplit | None = None, out=None, resume: bool = False, **kw):
    values = {"dataset": "digits", "method": method, "epochs": 2, "batch_size": 32, "timesteps": 2, **kw}
    return train(build_config(values), out, resume=resume, progress=False, data=data or digits_subset())


MODELS = {
    "mlp": {"model": "mlp", "hidden": [32]},
    "conv": {"model": "conv", "channels": [4, 8], "fc_hidden": 16},
    "resnet18": {"model": "resnet18", "width": 4},
    "srnn": {"model": "srnn", "hidden": [16], "neuron": "cuba"},
}


def test_every_method_is_registered():
    assert set(METHODS) == set(RECORDED)
    for name, cls in METHODS.items():
        assert cls.name == name
        make_method(name)  # defaults are valid


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_trains_every_model_and_records_parameters(method, arch):
    loss = "tet" if arch == "conv" else "ce"  # TET and CE both covered on every method
    r = run(method, epochs=1, loss=loss, **MODELS[arch])
    row = r.history[-1]
    assert torch.isfinite(torch.tensor(row["train_loss"]))
    prefix = RECORDED.get(method)
    if prefix:
        keys = [k for k in row if k.startswith(prefix)]
        assert keys, f"{method} wrote no {prefix!r} entries: {sorted(row)}"
        assert all(isinstance(row[k], float) for k in keys)
        # what the history reports is what the layers trained with (not a stale or other value)
        lif_ids = {id(m) for m in r.model.lif_layers()}
        lifs = {n: m for n, m in r.model.named_modules() if id(m) in lif_ids}
        for k in keys:
            layer = k.split("/", 1)[1] if "/" in k else None
            got = ([float(lifs[layer].shape_param.detach())] if layer in lifs
                   else [float(m.shape_param.detach()) for m in lifs.values()])
            assert got == pytest.approx([row[k]] * len(got), rel=1e-6), f"{method}: {k}"
    # eval mode: exactly binary spikes whatever the method does in training
    r.model.eval()
    with torch.no_grad(), record_spikes(r.model) as rec:
        r.model(digits_subset().x_test[:16])
    for name, outs in rec.items():
        vals = torch.unique(torch.cat([o.flatten() for o in outs]))
        assert set(vals.tolist()) <= {0.0, 1.0}, f"{method}: layer {name} gave non-binary output in eval"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_matches_an_uninterrupted_run(method, tmp_path, monkeypatch):
    whole, resumed = whole_and_resumed(run, method, tmp_path, monkeypatch, epochs=3, stop=2)
    assert len(resumed.history) == len(whole.history)
    for r1, r2 in zip(resumed.history, whole.history):
        r1, r2 = dict(r1), dict(r2)
        r1.pop("wall_time_s"), r2.pop("wall_time_s")
        assert r1 == pytest.approx(r2, rel=1e-6, abs=1e-9), f"{method}: history differs after resume"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_state_dict_round_trip_through_a_checkpoint(method, tmp_path):
    r = run(method, out=tmp_path, epochs=2)
    saved = load_checkpoint(tmp_path / "last.pt")["method_state"]  # weights_only load
    fresh = make_method(method, r.config.method_options)
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved
    # the checkpoint rebuilds the same network (learnable shape parameters included)
    model, _ = load_model(tmp_path / "last.pt")
    x = digits_subset().x_test[:32]
    torch.testing.assert_close(model(x), r.model.eval()(x), rtol=0, atol=0)


class _CallLog:
    """Delegates to a method and logs each hook call as (hook, epoch or None)."""

    def __init__(self, inner, log: list) -> None:
        self.inner, self.log = inner, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def setup(self, model):
        self.log.append(("setup", None))
        return self.inner.setup(model)

    def on_epoch_start(self, ctx):
        self.log.append(("on_epoch_start", ctx.epoch))
        return self.inner.on_epoch_start(ctx)

    def extra_loss(self, model):
        self.log.append(("extra_loss", None))
        return self.inner.extra_loss(model)

    def on_epoch_end(self, ctx):
        self.log.append(("on_epoch_end", ctx.epoch))
        return self.inner.on_epoch_end(ctx)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_trainer_calls_every_hook_in_order(method, monkeypatch):
    log: list = []
    monkeypatch.setattr(trainer_mod, "make_method", lambda n, o=None: _CallLog(make_method(n, o), log))
    data = digits_subset(n_train=96)
    run(method, data=data, epochs=2, batch_size=32)  # 3 batches per epoch
    per_epoch = lambda e: [("on_epoch_start", e)] + [("extra_loss", None)] * 3 + [("on_epoch_end", e)]  # noqa: E731
    assert log == [("setup", None)] + per_epoch(0) + per_epoch(1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_checkpoint_names_the_surrogate_every_layer_ran(method, tmp_path):
    r = run(method, out=tmp_path, epochs=1)
    installed = {m.surrogate.name for m in r.model.lif_layers()}
    own = METHODS[method].surrogates
    assert installed <= set(own) if own else installed == {r.config.model.surrogate}
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert {ckpt["model_config"]["surrogate"]} == installed  # an MLP: one shape in every layer
    model, _ = load_model(tmp_path / "last.pt")
    assert {m.surrogate.name for m in model.lif_layers()} == installed
