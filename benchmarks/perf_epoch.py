"""End-to-end ``snn2hw train`` epoch time on digits and mnist1d: fused LIF vs the plain loop.

    .venv/bin/python benchmarks/perf_epoch.py [--rounds 3] [--epochs 1]

Each round trains every configuration once, in turn, through the same function
the ``snn2hw train`` verb calls (``merge_options`` + the trainer: data order,
forward, loss, backward, Adam, cosine schedule, test evaluation), on data loaded
once beforehand. Variants of the LIF layers:

  plain        LIF.use_fused = False: the autograd loop (lif_sequence)
  fused-torch  the fused Function, compiled kernel switched off (torch loop)
  fused        the fused Function with the compiled kernel (the default)

Reported: seconds per epoch, the fastest round, on the process's CPU clock with
one torch thread (see perf_compare.py for why), and the wall clock beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from snn2hw.train.config import merge_options  # noqa: E402
from snn2hw.core import _kernel  # noqa: E402
from snn2hw.core.layers import LIF  # noqa: E402
from snn2hw.data.datasets import load_dataset  # noqa: E402
from snn2hw.train.trainer import train  # noqa: E402

VARIANTS = ("plain", "fused-torch", "fused")


def parse_method(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,...`` (e.g. ``psg:pda=true``) -> (name, options)."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        low = raw.lower()
        options[key] = True if low == "true" else False if low == "false" else float(raw)
    return name, options


def run_once(dataset: str, data, arch: str, T: int, epochs: int, variant: str,
             method: str = "sg") -> tuple[float, float, float]:
    """(CPU s per epoch, wall s per epoch, final test accuracy) of one training run."""
    LIF.use_fused = variant != "plain"
    lib = _kernel._library()
    _kernel._lib = None if variant == "fused-torch" else lib
    try:
        name, options = parse_method(method)
        config = merge_options({"dataset": dataset, "arch": arch, "timesteps": T, "epochs": epochs,
                                "method": name, "method_options": options})
        c0, w0 = time.process_time(), time.perf_counter()
        result = train(config, None, progress=False, data=data)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        LIF.use_fused, _kernel._lib = True, lib
    return cpu / epochs, wall / epochs, float(result.summary["test_accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    ap.add_argument("--models", nargs="+", default=["mlp", "conv"])
    ap.add_argument("--methods", nargs="+", default=["sg"],
                    help="training methods, name or name:key=value,... (e.g. asgl psg:pda=true)")
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = {d: load_dataset(d, 0) for d in args.datasets}
    keys = [(d, m, me, v) for d in args.datasets for m in args.models for me in args.methods
            for v in VARIANTS]
    best: dict = {k: (float("inf"), float("inf"), 0.0) for k in keys}
    for _ in range(args.rounds):
        for d, m, me, v in keys:
            cpu, wall, acc = run_once(d, data[d], m, args.timesteps, args.epochs, v, me)
            b = best[(d, m, me, v)]
            best[(d, m, me, v)] = (min(b[0], cpu), min(b[1], wall), acc)
    print(f"snn2hw train, T={args.timesteps}, {args.epochs} epoch(s) per run, fastest of {args.rounds} "
          f"rounds, {args.threads} thread(s); seconds per epoch (CPU clock | wall clock)")
    print(f"{'dataset':8} {'model':5} {'method':14} " + " ".join(f"{v:>18}" for v in VARIANTS)
          + f" {'plain/fused':>11} {'acc (fused)':>11} {'acc (plain)':>11}")
    for d, m, me in dict.fromkeys(k[:3] for k in keys):
        cells = " ".join(f"{best[(d, m, me, v)][0]:8.2f} | {best[(d, m, me, v)][1]:6.2f}" for v in VARIANTS)
        ratio = best[(d, m, me, "plain")][0] / best[(d, m, me, "fused")][0]
        print(f"{d:8} {m:5} {me:14} {cells} {ratio:11.2f} {best[(d, m, me, 'fused')][2]:11.4f} "
              f"{best[(d, m, me, 'plain')][2]:11.4f}")


if __name__ == "__main__":
    main()
