"""hwsim timings: the energy counter's overhead over plain inference, and the
robustness sweep's time per simulated chip, on the digits test set.

    .venv/bin/python benchmarks/hwsim_bench.py [CKPT ...] [--repeats 7]

Without checkpoints it trains a digits MLP and a digits conv net for 2 epochs
(timings depend on the architecture, hardly on the weights). Ratios are taken
in one run from interleaved repeats, taking each variant's fastest run (the
least disturbed by other processes); one torch thread unless --threads.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from snn2hw.data.datasets import load_dataset
from snn2hw.hwsim import NoiseSpec, PROFILES, count_energy, lower, run, simulate
from snn2hw.train.config import build_config
from snn2hw.runs.model import load_model
from snn2hw.train.trainer import train


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chips", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    x, y = data.x_test, data.y_test
    ckpts = list(args.checkpoints)
    tmp = tempfile.TemporaryDirectory()
    if not ckpts:
        for arch in ("mlp", "conv"):
            out = f"{tmp.name}/{arch}"
            train(build_config({"dataset": "digits", "model": arch, "epochs": 2}), out, progress=False)
            ckpts.append(out)
    print(f"digits test set: {len(x)} samples; torch threads {torch.get_num_threads()}")
    for ck in ckpts:
        model, _ = load_model(ck)
        net = lower(model)
        prof = PROFILES["45nm-fp32"]

        def plain():
            with torch.inference_mode():
                model(x)

        def lowered():
            with torch.inference_mode():
                run(net, x)

        def counted():
            count_energy(net, x, prof, batch_size=len(x))

        for fn in (plain, lowered, counted):  # warm-up
            fn()
        t = {"plain": [], "lowered": [], "counted": []}
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("lowered", lowered), ("counted", counted)):
                t[name].append(_time(fn))
        med = {k: min(v) for k, v in t.items()}
        print(f"\n{ck} ({model.config.arch}, T={model.timesteps})")
        print(f"  plain inference        {med['plain'] * 1e3:8.2f} ms")
        print(f"  lowered, no counting   {med['lowered'] * 1e3:8.2f} ms  ratio {med['lowered'] / med['plain']:.3f}")
        print(f"  energy counter         {med['counted'] * 1e3:8.2f} ms  "
              f"overhead ratio vs plain inference {med['counted'] / med['plain']:.3f} (goal <= 1.05); "
              f"vs the same lowered run without counting {med['counted'] / med['lowered']:.3f}")
        levels = (0.0, 0.05, 0.1, 0.2, 0.4)
        for axis in ("mismatch", "thermal"):
            t0 = time.perf_counter()
            for lv in levels:
                simulate(net, x, y, NoiseSpec(**{axis: lv}), chips=args.chips)
            wall = time.perf_counter() - t0
            n = len(levels) * args.chips
            print(f"  {axis:8s} sweep {len(levels)} levels x {args.chips} chips: {wall:6.2f} s, "
                  f"{wall / n * 1e3:7.1f} ms per simulated chip "
                  f"({wall / n / med['plain']:.2f} x one plain inference pass)")


if __name__ == "__main__":
    main()
