"""Dataset loaders: embedded sets, local formats, and the errors for bad files."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from snn2hw.data.datasets import load_dataset
from snn2hw.errors import DataError


def test_digits_split_is_fixed_and_complete():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=5)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert a.x_train.shape[1:] == (1, 8, 8) and a.num_classes == 10
    assert (a.x_test == b.x_test).all()  # the split does not depend on the run seed
    from sklearn.datasets import load_digits
    ref = np.sort(load_digits().data.sum(1) / 16.0)
    ours = np.sort(np.concatenate([a.x_train.sum((1, 2, 3)).numpy(), a.x_val.sum((1, 2, 3)).numpy(),
                                   a.x_test.sum((1, 2, 3)).numpy()]))
    assert np.allclose(ours, ref, atol=1e-4)


def test_mnist1d_shape():
    d = load_dataset("mnist1d")
    assert d.x_train.shape == (3600, 1, 40) and d.x_val.shape == (400, 1, 40)
    assert d.x_test.shape == (1000, 1, 40)
    assert d.num_classes == 10


def write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_mnist_idx_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", ys)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xs[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", ys[:2])
    d = load_dataset(f"mnist-idx:{tmp_path}", val_fraction=0)  # the reader alone
    assert d.x_train.shape == (6, 1, 28, 28)
    assert np.allclose(d.x_train[:, 0].numpy(), xs / 255.0, atol=1e-6)
    assert d.y_test.tolist() == ys[:2].tolist()


def test_truncated_idx_names_the_file(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)))
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(tmp_path / stem, np.zeros(4))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*header says"):
        load_dataset(f"mnist-idx:{tmp_path}")


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}, f)
    d = load_dataset(f"cifar10:{tmp_path}", val_fraction=0)  # the reader alone
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert np.allclose(d.x_train.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "a.npz", x=rng.normal(size=(50, 5)), y=rng.integers(0, 3, 50))
    d = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert len(d.x_train) == 36 and len(d.x_val) == 4 and len(d.x_test) == 10 and d.input_shape == (5,)
    np.savez(tmp_path / "b.npz", x=rng.normal(size=(8, 4, 2, 3)), y=rng.integers(0, 2, 8),
             x_test=rng.normal(size=(3, 4, 2, 3)), y_test=rng.integers(0, 2, 3), temporal=True)
    e = load_dataset(str(tmp_path / "b.npz"))
    assert e.temporal and e.input_shape == (2, 3) and len(e.x_test) == 3


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((5, 3)), "y": np.zeros(4, dtype=int)}, r"y has shape \(4,\); expected \(5,\)"),
    ({"x": np.zeros(5), "y": np.zeros(5, dtype=int)}, r"x has shape \(5,\)"),
    ({"y": np.zeros(5, dtype=int)}, "missing array 'x'"),
    ({"x": np.zeros((5, 3)), "y": np.zeros(5, dtype=int), "x_test": np.zeros((2, 4)),
      "y_test": np.zeros(2, dtype=int)}, "must match"),
])
def test_npz_wrong_shape_is_one_clear_error(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    assert "bad.npz" in str(info.value)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_validation_split_is_disjoint_fixed_and_sized():
    from snn2hw.data.datasets import DataSplit, with_validation
    import torch
    x = torch.arange(200, dtype=torch.float32)[:, None]      # every sample unique
    split = DataSplit("t", x[:150], torch.zeros(150, dtype=torch.long), x[150:],
                      torch.zeros(50, dtype=torch.long), 2)
    a, b = with_validation(split, 0.1), with_validation(split, 0.1)
    train, val, test = (set(v.flatten().tolist()) for v in (a.x_train, a.x_val, a.x_test))
    assert len(val) == 15 and len(train) == 135
    assert not (train & val) and not (val & test) and not (train & test)
    assert train | val == set(range(150))
    assert torch.equal(a.x_val, b.x_val)                      # the same carve every time
    assert with_validation(a, 0.3) is a                       # an existing split is kept
    assert with_validation(split, 0).x_val is None


def test_validation_split_does_not_depend_on_the_run_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert torch_equal(a.x_val, b.x_val) and torch_equal(a.x_train, b.x_train)
    assert len(a.x_val) == round(0.1 * (1797 - 359))


def torch_equal(a, b):
    return a.shape == b.shape and bool((a == b).all())


def test_npz_brings_its_own_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x=rng.random((40, 5)), y=rng.integers(0, 3, 40),
             x_test=rng.random((10, 5)), y_test=rng.integers(0, 3, 10),
             x_val=rng.random((7, 5)), y_val=rng.integers(0, 3, 7))
    d = load_dataset(f"npz:{tmp_path / 'v.npz'}")
    assert len(d.x_train) == 40 and len(d.x_val) == 7 and len(d.x_test) == 10
