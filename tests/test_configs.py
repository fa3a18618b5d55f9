"""configs/: the papers' CIFAR-10 recipes load as run configs with the papers' settings,
and each trains one step on a synthetic batch in the CIFAR-10 file layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from snn2hw.train.config import merge_options
from snn2hw.train.trainer import train

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))

# (method, arch, T, optimizer, lr, weight decay) as each paper states them
RECIPES = {
    "cpng_cifar10": ("cpng", "resnet19", 2, "sgd", 0.1, 1e-4),
    "psg_cifar10": ("psg", "resnet19", 2, "sgd", 0.1, 5e-4),
    "asgl_cifar10": ("asgl", "resnet19", 2, "sgd", 0.1, 5e-4),
    "gsg_cifar10": ("gsg", "resnet19", 5, "adam", 1e-3, 1e-4),
    "dspike_cifar10": ("dspike", "resnet18", 6, "sgd", 0.01, 1e-4),
    "dspike_cifar10_tit": ("dspike", "resnet18", 4, "sgd", 0.004, 1e-4),
}


def test_every_config_file_is_listed():
    assert {p.stem for p in CONFIGS} == set(RECIPES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_the_papers_run(path):
    c = merge_options({}, config_file=str(path))
    method, arch, T, opt, lr, wd = RECIPES[path.stem]
    assert (c.method, c.model.arch, c.model.timesteps, c.optimizer) == (method, arch, T, opt)
    assert (c.lr, c.weight_decay) == pytest.approx((lr, wd))
    assert c.dataset.startswith("cifar10:")
    if opt == "sgd":
        assert c.momentum == 0.9


def _fake_cifar(directory: Path) -> None:
    rng = np.random.default_rng(1)
    directory.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}, f)


def test_each_recipe_trains_a_step_on_cifar_shaped_data(tmp_path):
    """Tiny widths and one epoch: the recipe, the data reader and the method fit together
    (the TIT round starts from the first round's checkpoint and inherits b)."""
    _fake_cifar(tmp_path / "cifar")
    small = ["width=2", "epochs=1", "batch_size=10", "timesteps=2", "val_fraction=0",
             f"dataset=cifar10:{tmp_path / 'cifar'}"]
    for path in CONFIGS:
        extra = ["method_options.fdg_max_coords=4"] if "dspike" in path.stem else []
        if path.stem.endswith("_tit"):
            extra.append(f"init_from={tmp_path / 'dspike_cifar10' / 'last.pt'}")
        c = merge_options({}, config_file=str(path), overrides=small + extra)
        r = train(c, tmp_path / path.stem, progress=False)
        assert np.isfinite(r.history[-1]["train_loss"]), path.stem
        assert r.model.config.input_shape == (3, 32, 32)
