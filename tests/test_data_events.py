"""Temporal data: MNIST-1D as a sequence, the SHD HDF5 layout binned by hand,
dataset spec options, and the refusal when tonic is missing."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest
import torch

from snn2hw.data.datasets import load_dataset, with_timesteps
from snn2hw.data.events import bin_events
from snn2hw.errors import DataError


def test_mnist1d_seq_is_the_static_set_transposed():
    seq, flat = load_dataset("mnist1d-seq"), load_dataset("mnist1d")
    assert seq.temporal and not flat.temporal
    assert seq.x_train.shape == (3600, 40, 1) and seq.x_val.shape == (400, 40, 1)
    assert seq.x_test.shape == (1000, 40, 1) and seq.input_shape == (1,)
    assert torch.equal(seq.x_train[:, :, 0], flat.x_train[:, 0, :])
    assert torch.equal(seq.x_val[:, :, 0], flat.x_val[:, 0, :]) and torch.equal(seq.y_test, flat.y_test)


def write_shd(path, samples, labels, time_dtype=np.float16):
    """The real SHD layout: spikes/times and spikes/units as HDF5 vlen arrays, labels."""
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(time_dtype))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for n, (t, k) in enumerate(samples):
            times[n] = np.asarray(t, dtype=time_dtype)
            units[n] = np.asarray(k, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))


# max time 1.0 s, T = 4: frames [0, .25), [.25, .5), [.5, .75), [.75, 1.0]
TRAIN = [([0.0, 0.25, 0.25, 0.5, 1.0], [3, 3, 3, 699, 0]), ([0.125, 0.875], [10, 10])]
TEST = [([0.5, 0.75], [1, 2])]


def test_shd_directory_is_binned_by_hand(tmp_path):
    write_shd(tmp_path / "shd_train.h5", TRAIN, [7, 19])
    write_shd(tmp_path / "shd_test.h5", TEST, [2])
    d = load_dataset(f"shd:{tmp_path}?timesteps=4", val_fraction=0)
    assert d.temporal and d.x_train.shape == (2, 4, 700) and d.x_test.shape == (1, 4, 700)
    expected = np.zeros((2, 4, 700), dtype=np.float32)
    expected[0, 0, 3] = 1      # t = 0
    expected[0, 1, 3] = 2      # two spikes at t = 0.25 on unit 3: a count of 2
    expected[0, 2, 699] = 1    # t = 0.5
    expected[0, 3, 0] = 1      # t = max time goes into the last frame
    expected[1, 0, 10] = expected[1, 3, 10] = 1
    np.testing.assert_array_equal(d.x_train.numpy(), expected)
    test = np.zeros((1, 4, 700), dtype=np.float32)
    test[0, 2, 1] = test[0, 3, 2] = 1
    np.testing.assert_array_equal(d.x_test.numpy(), test)
    assert d.y_train.tolist() == [7, 19] and d.y_test.tolist() == [2] and d.num_classes == 20


def test_shd_max_time_option_drops_later_spikes(tmp_path):
    write_shd(tmp_path / "shd_train.h5", TRAIN, [0, 1])
    write_shd(tmp_path / "shd_test.h5", TEST, [1])
    d = load_dataset(f"shd:{tmp_path}?timesteps=2&max_time=0.5", val_fraction=0)
    # frames [0, .25), [.25, .5]: sample 0 keeps t = 0, .25, .25, .5; sample 1 only t = .125
    assert d.x_train[0, 0, 3] == 1 and d.x_train[0, 1, 3] == 2 and d.x_train[0, 1, 699] == 1
    assert d.x_train[0, :, 0].sum() == 0 and d.x_train[1].sum() == 1 and d.x_train[1, 0, 10] == 1
    assert d.x_test[0, 1, 1] == 1 and d.x_test.sum() == 1


def test_bin_events_against_a_histogram():
    rng = np.random.default_rng(0)
    times = [rng.uniform(0, 2.0, 200) for _ in range(3)]
    units = [rng.integers(0, 7, 200) for _ in range(3)]
    frames = bin_events(times, units, 7, 5, 2.0)
    for n in range(3):
        ref, _, _ = np.histogram2d(times[n], units[n], bins=[np.linspace(0, 2.0, 6), np.arange(8)])
        np.testing.assert_array_equal(frames[n], ref)


def test_shd_single_file_and_errors(tmp_path):
    write_shd(tmp_path / "one.h5", TRAIN * 5, [0, 1] * 5)
    d = load_dataset(f"shd:{tmp_path / 'one.h5'}", val_fraction=0)
    assert d.x_train.shape == (8, 100, 700) and d.x_test.shape == (2, 100, 700)  # default T, 20% held out
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(2))
    with pytest.raises(DataError, match="spikes/times"):
        load_dataset(f"shd:{tmp_path / 'bad.h5'}")
    with pytest.raises(DataError, match="shd_test.h5"):
        load_dataset(f"shd:{tmp_path}")
    with pytest.raises(DataError, match="unknown option 'bins=3'"):
        load_dataset(f"shd:{tmp_path / 'one.h5'}?bins=3")
    with pytest.raises(DataError, match="not a int"):
        load_dataset(f"shd:{tmp_path / 'one.h5'}?timesteps=many")


@pytest.mark.skipif(importlib.util.find_spec("tonic") is not None, reason="tonic is installed")
@pytest.mark.parametrize("kind", ["nmnist", "dvsgesture"])
def test_tonic_sets_name_the_install_when_tonic_is_missing(kind, tmp_path):
    with pytest.raises(DataError, match="pip install tonic"):
        load_dataset(f"{kind}:{tmp_path}")


@pytest.mark.skipif(importlib.util.find_spec("tonic") is None, reason="tonic is not installed")
def test_tonic_reads_local_files_only(tmp_path):
    with pytest.raises(DataError, match="local files only"):
        load_dataset(f"nmnist:{tmp_path}")


def test_timesteps_flag_bins_event_sets(tmp_path):
    """train --timesteps T on shd:PATH bins into T frames (the spec gains ?timesteps=T)."""
    write_shd(tmp_path / "shd_train.h5", TRAIN, [7, 19])
    write_shd(tmp_path / "shd_test.h5", TEST, [2])
    spec = with_timesteps(f"shd:{tmp_path}", 4)
    assert spec == f"shd:{tmp_path}?timesteps=4"
    assert load_dataset(spec, val_fraction=0).x_train.shape == (2, 4, 700)
    assert with_timesteps(f"shd:{tmp_path}?max_time=0.5", 2).endswith("?max_time=0.5&timesteps=2")
    assert with_timesteps("mnist1d-seq", 4) == "mnist1d-seq" and with_timesteps("npz:a.npz", 4) == "npz:a.npz"
    assert with_timesteps(f"shd:{tmp_path}?timesteps=4", 4) == f"shd:{tmp_path}?timesteps=4"
    with pytest.raises(DataError, match=r"shd: --timesteps 5 and the spec's timesteps=4 disagree"):
        with_timesteps(f"shd:{tmp_path}?timesteps=4", 5)


def test_value_range_is_none_only_for_event_counts(tmp_path):
    """Targets quantise analog input over its range; event counts go as they are."""
    write_shd(tmp_path / "shd_train.h5", TRAIN, [7, 19])
    write_shd(tmp_path / "shd_test.h5", TEST, [2])
    assert load_dataset(f"shd:{tmp_path}?timesteps=4", val_fraction=0).value_range is None
    seq = load_dataset("mnist1d-seq")
    lo, hi = seq.value_range
    assert (lo, hi) == (float(seq.x_train.min()), float(seq.x_train.max())) and lo < 0 < 1 < hi
