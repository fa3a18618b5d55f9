"""Every training method on the recurrent model with temporal data (MNIST-1D as a
sequence, CUBA neurons): trains, writes finite losses, saves, resumes exactly and
rebuilds the same network from its checkpoint."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from snn2hw.data.datasets import DataSplit, load_dataset
from snn2hw.methods import METHODS, make_method
from snn2hw.runs.model import load_model
from snn2hw.train import trainer as trainer_mod
from snn2hw.train.config import build_config
from snn2hw.train.trainer import train


@lru_cache(maxsize=None)
def sequences() -> DataSplit:
    d = load_dataset("mnist1d-seq")
    # 12 of the 40 steps keep the test quick; the data stays temporal (N, T, 1)
    return DataSplit("mnist1d-seq", d.x_train[:128, :12], d.y_train[:128], d.x_test[:64, :12],
                     d.y_test[:64], d.num_classes, temporal=True)


def run(method: str, out=None, resume: bool = False, epochs: int = 2):
    values = {"dataset": "mnist1d-seq", "method": method, "epochs": epochs, "batch_size": 32,
              "model": {"arch": "srnn", "hidden": [12], "neuron": "cuba", "alpha": 0.5, "lam": 0.9}}
    return train(build_config(values), out, resume=resume, progress=False, data=sequences())


class _Interrupt(Exception):
    pass


class _StopAt:
    """Delegates to a method but raises at the start of epoch ``stop`` (a killed run)."""

    def __init__(self, inner, stop: int) -> None:
        self.inner, self.stop = inner, stop

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.stop:
            raise _Interrupt
        return self.inner.on_epoch_start(ctx)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_resumes_srnn(method, tmp_path, monkeypatch):
    whole = run(method, epochs=2)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in whole.history)
    monkeypatch.setattr(trainer_mod, "make_method", lambda n, o=None: _StopAt(make_method(n, o), 1))
    with pytest.raises(_Interrupt):
        run(method, out=tmp_path, epochs=2)
    monkeypatch.undo()
    resumed = run(method, out=tmp_path, resume=True, epochs=2)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{method}: {k} differs after resume")
    model, _ = load_model(tmp_path / "last.pt")
    x = sequences().x_test[:16].transpose(0, 1)
    torch.testing.assert_close(model(x), resumed.model.eval()(x), rtol=0, atol=0)
