"""Every training method on the recurrent model with temporal data (MNIST-1D as a
sequence, CUBA neurons): trains, writes finite losses, saves, resumes exactly and
rebuilds the same network from its checkpoint."""

from __future__ import annotations

from functools import lru_cache

import pytest
from interrupted_runs import whole_and_resumed
import torch

from snn2hw.data.datasets import DataSplit, load_dataset
from snn2hw.methods import METHODS
from snn2hw.runs.model import load_model
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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_resumes_srnn(method, tmp_path, monkeypatch):
    whole, resumed = whole_and_resumed(run, method, tmp_path, monkeypatch, epochs=2, stop=1)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in whole.history)
    model, _ = load_model(tmp_path / "last.pt")
    x = sequences().x_test[:16].transpose(0, 1)
    torch.testing.assert_close(model(x), resumed.model.eval()(x), rtol=0, atol=0)
