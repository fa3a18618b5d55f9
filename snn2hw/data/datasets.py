"""Datasets: embedded (digits, mnist1d) and local files (npz, MNIST IDX, CIFAR-10).

A dataset spec is a name or ``kind:PATH``. Everything is loaded into memory as
float32 tensors; static samples are (N, ...), event data (N, T, ...) is marked
``temporal`` and fed to the network time-major.

Every dataset has train / validation / test. The validation split is carved
from the training data by a fixed generator (``VALIDATION_SEED``), the same
whatever the run's seed, unless the file brings its own (npz ``x_val``,
``y_val``). Model selection (best.pt) and anything tuned on held-out data use
validation; the test split is for reporting only.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .events import DEFAULT_TIMESTEPS, TONIC_SETS, EventArrays, shd_arrays, tonic_arrays


@dataclass
class DataSplit:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    temporal: bool = False  # samples are (T, ...) sequences (event frames)
    x_val: Tensor | None = None   # carved from the training data (``with_validation``)
    y_val: Tensor | None = None

    @property
    def value_range(self) -> tuple[float, float] | None:
        """(min, max) of the analog training inputs, which targets quantise; None for event counts
        (temporal, non-negative integers). An analog sequence (mnist1d-seq) has a range too."""
        lo = float(self.x_train.min())
        if self.temporal and lo >= 0 and torch.equal(self.x_train, torch.round(self.x_train)):
            return None
        return lo, float(self.x_train.max())

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = tuple(self.x_train.shape[1:])
        return shape[1:] if self.temporal else shape


VALIDATION_SEED = 20_231_113   # fixed: the validation split never depends on a run's seed
DEFAULT_VAL_FRACTION = 0.1


def with_validation(split: DataSplit, fraction: float = DEFAULT_VAL_FRACTION) -> DataSplit:
    """``split`` with a validation set: ``round(fraction * N_train)`` training samples,
    chosen by a generator seeded with ``VALIDATION_SEED``, moved to ``x_val``/``y_val``.

    A split that already has one is returned as it is; ``fraction = 0`` gives none.
    """
    if split.x_val is not None or fraction <= 0:
        return split
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(split.x_train)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise DataError(f"{split.name}: {n} training samples cannot give a validation split of "
                        f"{fraction:.0%}; use another --val-fraction")
    order = torch.from_numpy(np.random.default_rng(VALIDATION_SEED).permutation(n))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return replace(split, x_train=split.x_train[train], y_train=split.y_train[train],
                   x_val=split.x_train[val], y_val=split.y_train[val])


def to_time_major(x: Tensor, temporal: bool) -> Tensor:
    """Event data is stored (B, T, ...); the network wants (T, B, ...)."""
    return x.transpose(0, 1) if temporal else x


def _split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> DataSplit:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return _make(name, x[tr], y[tr], x[te], y[te])


def _make(name, x_tr, y_tr, x_te, y_te, temporal: bool = False) -> DataSplit:
    y_all = np.concatenate([y_tr, y_te]).astype(np.int64)
    return DataSplit(
        name,
        torch.as_tensor(np.ascontiguousarray(x_tr), dtype=torch.float32),
        torch.as_tensor(y_tr.astype(np.int64)),
        torch.as_tensor(np.ascontiguousarray(x_te), dtype=torch.float32),
        torch.as_tensor(y_te.astype(np.int64)),
        int(y_all.max()) + 1,
        temporal,
    )


def load_digits(seed: int = 0) -> DataSplit:
    """scikit-learn's 8x8 digits (1797 images), scaled to [0, 1], 20% held out.

    The split is fixed (seed 0) whatever the training seed, so accuracies of
    different runs are comparable.
    """
    # Read the CSV that ships inside scikit-learn: importing sklearn costs ~1 s.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    return _split("digits", x, table[:, -1].astype(np.int64), 0.2, 0)


def load_mnist1d(seed: int = 0) -> DataSplit:
    """MNIST-1D generated offline with its reference arguments (4000/1000, length 40)."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x, xt = d["x"].astype(np.float32)[:, None], d["x_test"].astype(np.float32)[:, None]
    return _make("mnist1d", x, d["y"], xt, d["y_test"])


def load_mnist1d_seq(seed: int = 0) -> DataSplit:
    """MNIST-1D read as a sequence: 40 steps of one channel, x (N, 40, 1), temporal."""
    d = load_mnist1d(seed)
    seq = {k: getattr(d, k).transpose(1, 2).contiguous() for k in ("x_train", "x_test")}
    return replace(d, name="mnist1d-seq", temporal=True, **seq)


def load_npz(path: str) -> DataSplit:
    """``x``, ``y`` and optional ``x_test``, ``y_test``, ``x_val``, ``y_val``; optional
    ``temporal`` flag (then x is (N, T, ...) event frames). Without a test set, 20% is
    held out; without a validation set, one is carved from x (``with_validation``)."""
    p = _existing(path, "an .npz file with arrays x, y (and optionally x_test, y_test)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{p}: cannot read as .npz ({exc}); expected arrays x, y") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{p}: missing array {key!r}; found {sorted(arrays)}; "
                            "expected x (N, ...), y (N,) and optionally x_test, y_test")
    temporal = bool(arrays.get("temporal", False))
    x, y = arrays["x"], arrays["y"]
    _check_xy(p, "x", "y", x, y, temporal)
    if "x_test" in arrays and "y_test" in arrays:
        _check_xy(p, "x_test", "y_test", arrays["x_test"], arrays["y_test"], temporal)
        if arrays["x_test"].shape[1:] != x.shape[1:]:
            raise DataError(f"{p}: x_test samples have shape {arrays['x_test'].shape[1:]}, "
                            f"x samples {x.shape[1:]}; they must match")
        split = _make(p.name, x, y, arrays["x_test"], arrays["y_test"], temporal)
    else:
        split = _split(p.name, x, y, 0.2, 0)
        split.temporal = temporal
    if "x_val" in arrays and "y_val" in arrays:
        _check_xy(p, "x_val", "y_val", arrays["x_val"], arrays["y_val"], temporal)
        if arrays["x_val"].shape[1:] != x.shape[1:]:
            raise DataError(f"{p}: x_val samples have shape {arrays['x_val'].shape[1:]}, "
                            f"x samples {x.shape[1:]}; they must match")
        split.x_val = torch.as_tensor(np.ascontiguousarray(arrays["x_val"]), dtype=torch.float32)
        split.y_val = torch.as_tensor(arrays["y_val"].astype(np.int64))
    return split


def _check_xy(p: Path, xk: str, yk: str, x: np.ndarray, y: np.ndarray, temporal: bool) -> None:
    if x.ndim < (3 if temporal else 2):
        raise DataError(f"{p}: {xk} has shape {x.shape}; expected (N, features...)"
                        + (" with a time axis (N, T, ...)" if temporal else ""))
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{p}: {yk} has shape {y.shape}; expected ({len(x)},) integer labels")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f"{p}: {yk} must hold non-negative integer class labels")


def _existing(path: str, expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; expected {expected}")
    return p


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number (expected unsigned-byte IDX)")
        dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"header says {dims} = {int(np.prod(dims))} values, file holds {data.size}")
        return data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"{path}: not a valid MNIST IDX file ({exc})") from None


def load_mnist_idx(directory: str) -> DataSplit:
    """The four MNIST IDX files (optionally .gz) in a directory."""
    d = _existing(directory, "a directory with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                             "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz)")
    arrays = {}
    for key, stem in (("x", "train-images-idx3-ubyte"), ("y", "train-labels-idx1-ubyte"),
                      ("xt", "t10k-images-idx3-ubyte"), ("yt", "t10k-labels-idx1-ubyte")):
        cands = [d / stem, d / (stem + ".gz"), d / stem.replace("-idx", ".idx")]
        found = next((c for c in cands if c.exists()), None)
        if found is None:
            raise DataError(f"{d}: missing {stem}[.gz]; expected the four MNIST IDX files")
        arrays[key] = _read_idx(found)
    for xk, yk in (("x", "y"), ("xt", "yt")):
        if arrays[xk].ndim != 3 or len(arrays[xk]) != len(arrays[yk]):
            raise DataError(f"{d}: images {arrays[xk].shape} and labels {arrays[yk].shape} "
                            "do not match; expected (N, 28, 28) and (N,)")
    return _make("mnist", arrays["x"][:, None] / 255.0, arrays["y"],
                 arrays["xt"][:, None] / 255.0, arrays["yt"])


def load_cifar10(directory: str) -> DataSplit:
    """CIFAR-10 python batches (data_batch_1..5, test_batch), normalised per channel."""
    d = _existing(directory, "the cifar-10-batches-py directory (data_batch_1..5, test_batch)")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        f = d / name
        if not f.exists():
            raise DataError(f"{d}: missing {name}; expected CIFAR-10 python batches")
        try:
            with open(f, "rb") as fh:
                obj = pickle.load(fh, encoding="bytes")  # the dataset's own format
            data = np.asarray(obj[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            return data, np.asarray(obj[b"labels"])
        except Exception as exc:
            raise DataError(f"{f}: not a CIFAR-10 python batch ({exc}); "
                            "expected a dict with b'data' (N, 3072) and b'labels'") from None

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts]) / 255.0
    y = np.concatenate([p[1] for p in parts])
    xt, yt = batch("test_batch")
    xt = xt / 255.0
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True)
    return _make("cifar10", (x - mean) / std, y, (xt - mean) / std, yt)


def _event_split(name: str, arrays: EventArrays) -> DataSplit:
    x_tr, y_tr, x_te, y_te = arrays
    if x_te is None:  # one file: 20% held out, as for npz
        split = _split(name, x_tr, y_tr, 0.2, 0)
        split.temporal = True
        return split
    return _make(name, x_tr, y_tr, x_te, y_te, temporal=True)


def load_shd(path: str, timesteps: int = DEFAULT_TIMESTEPS, max_time: float | None = None) -> DataSplit:
    """Spiking Heidelberg Digits (data/events.py): a directory with shd_train.h5 and
    shd_test.h5, or one file; (N, T, 700) spike counts."""
    p = _existing(path, "an SHD .h5 file or a directory with shd_train.h5 and shd_test.h5")
    return _event_split("shd", shd_arrays(p, int(timesteps), max_time))


def _tonic_loader(kind: str):
    def load(path: str, timesteps: int = 20, max_time: float | None = None,
             downsample: int | None = None) -> DataSplit:
        root = _existing(path, f"the directory tonic saved {TONIC_SETS[kind][0]} to")
        return _event_split(kind, tonic_arrays(kind, root, int(timesteps), max_time, downsample))
    load.__doc__ = f"{TONIC_SETS[kind][0]} from local files through tonic (data/events.py)."
    return load


EMBEDDED = {"digits": load_digits, "mnist1d": load_mnist1d, "mnist1d-seq": load_mnist1d_seq}
FROM_PATH = {"npz": load_npz, "mnist-idx": load_mnist_idx, "cifar10": load_cifar10, "shd": load_shd,
             **{kind: _tonic_loader(kind) for kind in TONIC_SETS}}
# options a FROM_PATH loader takes after its path: ``shd:PATH?timesteps=50&max_time=1.0``
OPTIONS = {"shd": {"timesteps": int, "max_time": float},
           **{kind: {"timesteps": int, "max_time": float, "downsample": int} for kind in TONIC_SETS}}


def load_dataset(spec: str, seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION) -> DataSplit:
    """Load ``digits``, ``mnist1d``, ``mnist1d-seq``, or ``npz:PATH``, ``mnist-idx:DIR``,
    ``cifar10:DIR``, ``shd:PATH``, ``nmnist:DIR``, ``dvsgesture:DIR`` (event sets take
    options: ``shd:PATH?timesteps=50&max_time=1.0``), with a validation split
    (``with_validation``) unless the file brings one."""
    return with_validation(_load_split(spec, seed), val_fraction)


def with_timesteps(spec: str, timesteps: int) -> str:
    """``spec`` binned into ``timesteps`` frames: an event set's spec (``shd:PATH``, tonic sets)
    gains ``?timesteps=T``; any other spec is returned unchanged (its T is the model's).
    DataError when the spec already names a different T."""
    kind, sep, path = spec.partition(":")
    if not sep or "timesteps" not in OPTIONS.get(kind, {}):
        return spec
    said = _options(kind, path)[1].get("timesteps")
    if said is not None and said != int(timesteps):
        raise DataError(f"{kind}: --timesteps {timesteps} and the spec's timesteps={said} disagree; give one")
    return spec if said is not None else f"{spec}{'&' if '?' in path else '?'}timesteps={int(timesteps)}"


def _load_split(spec: str, seed: int) -> DataSplit:
    if spec in EMBEDDED:
        return EMBEDDED[spec](seed)
    kind, sep, path = spec.partition(":")
    if sep and kind in FROM_PATH:
        path, options = _options(kind, path)
        return FROM_PATH[kind](path, **options)
    if spec.endswith(".npz"):
        return load_npz(spec)
    raise DataError(f"unknown dataset {spec!r}; use one of {sorted(EMBEDDED)} or "
                    f"{', '.join(k + ':PATH' for k in FROM_PATH)}")


def _options(kind: str, path: str) -> tuple[str, dict]:
    """Split ``PATH?key=value&key=value`` into the path and the loader's typed options."""
    known = OPTIONS.get(kind, {})
    if not known or "?" not in path:
        return path, {}
    path, _, query = path.rpartition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise DataError(f"{kind}: unknown option {item!r}; use {kind}:PATH?"
                            + "&".join(f"{k}=..." for k in known))
        try:
            options[key] = known[key](value)
        except ValueError:
            raise DataError(f"{kind}: option {key}={value!r} is not a {known[key].__name__}") from None
    return path, options
