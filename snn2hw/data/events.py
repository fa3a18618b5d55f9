"""Event data binned into frames: the Spiking Heidelberg Digits HDF5 files, and
N-MNIST / DVS Gesture through ``tonic`` (optional, local files only).

Every reader ends in ``bin_events``: an event at time ``t`` on channel ``k``
adds 1 to frame ``floor(t / max_time * T)`` (the last frame also takes
``t == max_time``; events after ``max_time`` are dropped), so a sample is
(T, channels...) spike counts. ``max_time`` is the largest event time of the
whole data set (train and test alike, so both are binned on one grid) unless
given. Options come with the dataset spec (``shd:PATH?timesteps=50&max_time=1.0``)
because every command that reloads a run's data has only that spec.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataError

SHD_CHANNELS = 700
DEFAULT_TIMESTEPS = 100


def bin_events(times: list[np.ndarray], channels: list[np.ndarray], n_channels: int,
               timesteps: int, max_time: float) -> np.ndarray:
    """(N, T, n_channels) float32 spike counts of N ragged event lists (module docstring)."""
    if timesteps < 1 or not max_time > 0:
        raise DataError(f"binning needs timesteps >= 1 and max_time > 0, got {timesteps}, {max_time}")
    out = np.zeros((len(times), timesteps, n_channels), dtype=np.float32)
    for n, (t, k) in enumerate(zip(times, channels)):
        t, k = np.asarray(t, dtype=np.float64), np.asarray(k, dtype=np.int64)
        keep = (t >= 0) & (t <= max_time)
        frame = np.minimum((t[keep] / max_time * timesteps).astype(np.int64), timesteps - 1)
        np.add.at(out[n], (frame, k[keep]), 1.0)
    return out


def _largest_time(*groups: list[np.ndarray]) -> float:
    return max((float(np.max(t)) for g in groups for t in g if len(t)), default=0.0)


def read_shd_file(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(times in seconds, units, labels) of an SHD/SSC file: ``spikes/times`` and
    ``spikes/units`` (ragged arrays, one per sample) and ``labels``."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for key in ("spikes/times", "spikes/units", "labels"):
                if key not in f:
                    raise DataError(f"{path}: missing {key!r}; expected an SHD file with "
                                    "spikes/times, spikes/units (one array per sample) and labels")
            times, units = list(f["spikes/times"][:]), list(f["spikes/units"][:])
            labels = np.asarray(f["labels"][:], dtype=np.int64)
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({exc}); expected an SHD .h5 file") from None
    if not len(times) == len(units) == len(labels):
        raise DataError(f"{path}: {len(times)} spike times, {len(units)} unit lists and "
                        f"{len(labels)} labels; they must be one per sample")
    for n, (t, k) in enumerate(zip(times, units)):
        if len(t) != len(k):
            raise DataError(f"{path}: sample {n} has {len(t)} times and {len(k)} units")
        if len(k) and (k.min() < 0 or k.max() >= SHD_CHANNELS):
            raise DataError(f"{path}: sample {n} has units outside 0..{SHD_CHANNELS - 1}")
    return times, units, labels


EventArrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def shd_arrays(p: Path, timesteps: int = DEFAULT_TIMESTEPS,
               max_time: float | None = None) -> EventArrays:
    """SHD as event frames: (x_train (N, T, 700), y_train, x_test, y_test). ``p``: a
    directory holding ``shd_train.h5`` and ``shd_test.h5``, or one such file (then
    no test arrays: None)."""
    if p.is_dir():
        files = [p / "shd_train.h5", p / "shd_test.h5"]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise DataError(f"{p}: missing {', '.join(missing)}; expected shd_train.h5 and shd_test.h5")
        (t_tr, k_tr, y_tr), (t_te, k_te, y_te) = (read_shd_file(f) for f in files)
    else:
        (t_tr, k_tr, y_tr), (t_te, k_te, y_te) = read_shd_file(p), ([], [], None)
    span = float(max_time) if max_time is not None else _largest_time(t_tr, t_te)
    x_tr = bin_events(t_tr, k_tr, SHD_CHANNELS, int(timesteps), span)
    x_te = bin_events(t_te, k_te, SHD_CHANNELS, int(timesteps), span) if y_te is not None else None
    return x_tr, y_tr, x_te, y_te


# tonic data sets: class name, sensor (W, H, P), downsampling default, install hint
TONIC_SETS = {"nmnist": ("NMNIST", (34, 34, 2), 1), "dvsgesture": ("DVSGesture", (128, 128, 2), 4)}


def _tonic_class(kind: str):
    """The tonic data set class, changed to refuse downloading: local files only."""
    if importlib.util.find_spec("tonic") is None:
        raise DataError(f"{kind}: reading this data set needs the optional package tonic, which is "
                        "not installed; install it into this environment with `pip install tonic`, "
                        "or convert the data to npz "
                        "(x as (N, T, ...) frames, temporal=True)")
    import tonic.datasets

    base = getattr(tonic.datasets, TONIC_SETS[kind][0])

    def refuse_download(self) -> None:
        raise DataError(f"{kind}: no extracted {base.__name__} files under {self.location_on_system}; "
                        "snn2hw reads local files only: download and extract the data set there")

    # the same class name: tonic looks for files under save_to/<class name>
    return type(base.__name__, (base,), {"download": refuse_download})


def tonic_arrays(kind: str, root: Path, timesteps: int = 20, max_time: float | None = None,
                 downsample: int | None = None) -> EventArrays:
    """N-MNIST or DVS Gesture from local files via tonic, binned to frames
    (N, T, P, H/d, W/d) with spatial downsampling ``d`` (pixels // d)."""
    cls = _tonic_class(kind)
    (w, h, pol), d = TONIC_SETS[kind][1], int(downsample or TONIC_SETS[kind][2])
    wd, hd = -(-w // d), -(-h // d)
    parts = []
    for train in (True, False):
        ds = cls(str(root), train=train)
        times, chans, labels = [], [], []
        for events, label in (ds[i] for i in range(len(ds))):
            p = events["p"].astype(np.int64)
            y, x = events["y"].astype(np.int64) // d, events["x"].astype(np.int64) // d
            times.append(events["t"].astype(np.float64) * 1e-6)  # tonic times are microseconds
            chans.append((p * hd + y) * wd + x)
            labels.append(int(label))
        parts.append((times, chans, np.asarray(labels, dtype=np.int64)))
    span = float(max_time) if max_time is not None else _largest_time(parts[0][0], parts[1][0])
    frames = [bin_events(t, k, pol * hd * wd, int(timesteps), span).reshape(-1, int(timesteps), pol, hd, wd)
              for t, k, _ in parts]
    return frames[0], parts[0][2], frames[1], parts[1][2]
