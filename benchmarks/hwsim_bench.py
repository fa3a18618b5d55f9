"""hwsim timings: the energy counter's overhead over plain inference (for every energy
model), and the robustness sweep's time per simulated chip, on the digits test set.

    .venv/bin/python benchmarks/hwsim_bench.py [CKPT ...] [--repeats 15] [--rounds 3] [--clock cpu]

Without checkpoints it trains a digits MLP and a digits conv net for 2 epochs
(timings depend on the architecture, hardly on the weights). Every variant runs
its inference in inference mode on the same input tensor, after one warm-up call.
Ratios are taken in one run from interleaved repeats (the order rotated at each
repeat), taking each variant's fastest run (the least disturbed by other
processes); ``--rounds`` repeats that and prints every round's ratios and their spread. ``--clock cpu`` times the thread's CPU time
(``time.thread_time``: waiting for a loaded machine's cores is not counted) instead
of wall time. One torch thread unless --threads. "lowered, no counting" is
``run(net, x)`` with its outputs; a report runs it with ``outputs=False`` (the
readout synapse is counted, not applied: nothing reads its currents).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from snn2hw.data.datasets import load_dataset
from snn2hw.hwsim import ENERGY_MODELS, PROFILES, NoiseSpec, count_energy, lower, run, simulate
from snn2hw.train.config import build_config
from snn2hw.runs.model import load_model
from snn2hw.train.trainer import train


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _time(fn, clock) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def _spread(values: list[float]) -> str:
    v = sorted(values)
    return f"{v[0]:.3f} / {v[len(v) // 2]:.3f} / {v[-1]:.3f} (min / median / max of {len(v)} rounds)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--samples", type=int, default=0,
                    help="repeat the test set up to this many samples (default: the test set once): "
                         "a report's fixed cost is then shared by more samples")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    x, y = data.x_test, data.y_test
    if args.samples > len(x):
        reps = -(-args.samples // len(x))
        x, y = x.repeat(reps, *([1] * (x.dim() - 1)))[:args.samples], y.repeat(reps)[:args.samples]
    ckpts = list(args.checkpoints)
    tmp = tempfile.TemporaryDirectory()
    if not ckpts:
        for arch in ("mlp", "conv"):
            out = f"{tmp.name}/{arch}"
            train(build_config({"dataset": "digits", "model": arch, "epochs": 2}), out, progress=False)
            ckpts.append(out)
    print(f"digits test set: {len(x)} samples (the 359 test images, repeated if --samples); "
          f"torch threads {torch.get_num_threads()}")
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

        variants = {"plain": plain, "lowered": lowered}
        for em in ENERGY_MODELS:  # each model counts the same; pricing is per layer, after the run
            variants[em] = lambda em=em: count_energy(net, x, prof, batch_size=len(x), energy_model=em,
                                                      model=model)
        for fn in variants.values():  # warm-up
            fn()
        ratios: dict[str, list[float]] = {k: [] for k in variants if k != "plain"}
        names = list(variants)
        for r in range(args.rounds):
            t = {k: [] for k in variants}
            for i in range(args.repeats):
                # rotated each repeat: no variant always runs right after the same one (the one
                # before leaves the caches holding its code and data)
                for name in names[i % len(names):] + names[:i % len(names)]:
                    t[name].append(_time(variants[name], clock))
            best = {k: min(v) for k, v in t.items()}
            for k in ratios:
                ratios[k].append(best[k] / best["plain"])
            print(f"\n{ck} ({model.config.arch}, T={model.timesteps}), round {r + 1}, {args.clock} clock")
            print(f"  plain inference        {best['plain'] * 1e3:8.2f} ms")
            print(f"  lowered, no counting   {best['lowered'] * 1e3:8.2f} ms  ratio {best['lowered'] / best['plain']:.3f}")
            for em in ENERGY_MODELS:
                print(f"  counter, {em:13s} {best[em] * 1e3:8.2f} ms  overhead ratio vs plain inference "
                      f"{best[em] / best['plain']:.3f} (goal <= 1.05); vs the lowered run without counting "
                      f"{best[em] / best['lowered']:.3f}")
        print("  over the rounds, vs plain inference:")
        for k, v in ratios.items():
            print(f"    {k:10s} {_spread(v)}")
        levels = (0.0, 0.05, 0.1, 0.2, 0.4)
        for axis in ("mismatch", "thermal"):
            t0 = time.perf_counter()
            for lv in levels:
                simulate(net, x, y, NoiseSpec(**{axis: lv}), chips=args.chips)
            wall = time.perf_counter() - t0
            n = len(levels) * args.chips
            print(f"  {axis:8s} sweep {len(levels)} levels x {args.chips} chips: {wall:6.2f} s, "
                  f"{wall / n * 1e3:7.1f} ms per simulated chip "
                  f"({wall / n / best['plain']:.2f} x one plain inference pass)")


if __name__ == "__main__":
    main()
