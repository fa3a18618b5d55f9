"""Time per training epoch of every registered method, as a ratio to the fixed surrogate (sg).

    .venv/bin/python benchmarks/method_overhead.py                  # all methods, mnist1d conv
    .venv/bin/python benchmarks/method_overhead.py --dataset digits --rounds 5
    .venv/bin/python benchmarks/method_overhead.py --profile dspike  # where its extra time goes
    .venv/bin/python benchmarks/method_overhead.py --profile psg+pda --against psg  # PDA's own share
    .venv/bin/python benchmarks/method_overhead.py --isolate        # each run in a fresh process

Each method trains the same conv net through the real trainer (``snn2hw.train``),
so an epoch is what a user waits for: the method's hooks, its extra loss, the
batches and the test evaluation. The first epoch of every run is dropped (one-off
allocation and set-up). Runs are interleaved: every round trains every method
once, in a rotated order, and a method's ratio is the median over rounds of its
mean epoch time divided by sg's in the same round, so slow drifts of the machine
cancel. In one process a run also inherits the allocator's state from the runs
before it (glibc returning freed blocks to the system and faulting them back:
Dspike's epoch measured 0.92-1.01 s after the six other methods, 0.81-0.84 s with
the allocator's thresholds fixed); ``--isolate`` starts every run in a fresh
process, as a user's run starts, at the cost of an import per run. Goals (the
papers' overheads, with margin): CPNG and GSG <= 1.02, PSG <= 1.10, ASGL <= 1.15,
PSG+PDA <= 1.25, Dspike with its FDG <= 1.25 (issue 19).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from snn2hw.data.datasets import load_dataset  # noqa: E402
from snn2hw.train.config import build_config  # noqa: E402
from snn2hw.methods import METHODS  # noqa: E402
from snn2hw.train import trainer  # noqa: E402
from snn2hw.train.trainer import train  # noqa: E402

class CpuClock:
    """Stands in for the ``time`` module in the trainer, which times epochs with
    ``time.perf_counter``: epochs are then timed in CPU seconds of this process, which
    other jobs on a shared machine disturb far less than wall time."""

    perf_counter = staticmethod(time.process_time)


GOALS = {"sg": 1.0, "cpng": 1.02, "gsg": 1.02, "psg": 1.10, "psg+pda": 1.25, "asgl": 1.15,
         "dspike": 1.25}
# Rows that are a registered method with options: name -> (method, options).
VARIANTS = {"psg+pda": ("psg", {"pda": True})}


def resolve(name: str, options: dict[str, dict]) -> tuple[str, dict]:
    method, opts = VARIANTS.get(name, (name, {}))
    return method, {**opts, **options.get(name, {})}


def epoch_times(method: str, options: dict, data, base: dict, epochs: int, isolate: bool = False,
                threads: int = 1, clock: str = "cpu") -> list[float]:
    """Seconds per epoch (epochs 2..E) of one run of ``method`` through the trainer; with
    ``isolate`` in a fresh Python process, as a user's run starts (``--isolate``)."""
    if isolate:
        job = json.dumps(dict(method=method, options=options, base=base, epochs=epochs, threads=threads, clock=clock))
        out = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.splitlines()[-1])
    cfg = build_config({**base, "method": method, "method_options": options, "epochs": epochs})
    gc.collect()
    hist = train(cfg, None, progress=False, data=data).history
    cumulative = [0.0] + [r["wall_time_s"] for r in hist]
    return [b - a for a, b in zip(cumulative, cumulative[1:])][1:]


def profile(method: str, baseline: str, options: dict[str, dict], data, base: dict, epochs: int,
            top: int) -> None:
    """cProfile of a run of ``method`` and of ``baseline`` (rows such as psg+pda, default sg):
    the functions whose own time differs most, then ``method``'s top functions by cumulative time."""
    profs = {}
    for name in (baseline, method):
        profs[name] = cProfile.Profile(time.process_time)  # CPU time: the machine is shared
        profs[name].enable()
        epoch_times(*resolve(name, options), data, base, epochs)
        profs[name].disable()
    own = {}
    for name, prof in profs.items():
        st = pstats.Stats(prof).stats  # (file, line, func) -> (calls, prim, own time, cum time, callers)
        own[name] = {f"{Path(k[0]).name}:{k[1]}({k[2]})": v[2] for k, v in st.items()}
    total = {name: sum(v.values()) for name, v in own.items()}
    print(f"profile, {epochs} epochs each: own time {baseline} {total[baseline]:.2f} s, {method} "
          f"{total[method]:.2f} s; functions that cost {method} the most extra time:")
    diff = sorted(((own[method].get(k, 0.0) - own[baseline].get(k, 0.0), k) for k in own[method]), reverse=True)
    for extra, fn in diff[:top]:
        print(f"  {extra:+8.3f} s  {fn}")
    buf = io.StringIO()
    pstats.Stats(profs[method], stream=buf).sort_stats("cumulative").print_stats(top)
    print(f"\n{method}: top {top} by cumulative time")
    print(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--model", default="conv")
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"default: every registered method and {', '.join(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:OPTION=VALUE",
                    help="a method option, e.g. --set dspike:fdg_max_coords=64")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: CPU time then equals compute time)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="time epochs in process CPU seconds (default) or wall seconds")
    ap.add_argument("--profile", metavar="METHOD", help="profile METHOD against sg (or --against) instead")
    ap.add_argument("--against", metavar="METHOD", default="sg",
                    help="the run --profile compares with, e.g. psg for psg+pda's own share (default sg)")
    ap.add_argument("--isolate", action="store_true",
                    help="every run in a fresh process, as a user's run starts: in one process, what ran "
                         "before (the allocator's state) moves a method's epoch by up to 10%%")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one isolated run (JSON job), prints its epoch times
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        torch.set_num_threads(job["threads"])
        if job["clock"] == "cpu":
            trainer.time = CpuClock
        data = load_dataset(job["base"]["dataset"])
        print(json.dumps(epoch_times(job["method"], job["options"], data, job["base"], job["epochs"])))
        return
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        trainer.time = CpuClock
    import yaml

    options: dict[str, dict] = {}
    for item in args.set:
        lhs, _, value = item.partition("=")
        method, _, key = lhs.partition(":")
        options.setdefault(method, {})[key] = yaml.safe_load(value)
    base = {"dataset": args.dataset, "arch": args.model, "timesteps": args.timesteps}
    data = None if args.isolate and not args.profile else load_dataset(args.dataset)  # each child loads its own
    if args.profile:
        profile(args.profile, args.against, options, data, base, args.epochs, 25)
        return
    methods = ["sg"] + [m for m in (args.methods or [*METHODS, *VARIANTS]) if m != "sg"]
    run = dict(isolate=args.isolate, threads=args.threads, clock=args.clock)
    if not args.isolate:
        epoch_times("sg", {}, data, base, 2)  # warm-up: first-call costs of torch kernels
    per_round: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.rounds):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        times = {m: statistics.fmean(epoch_times(*resolve(m, options), data, base, args.epochs, **run))
                 for m in order}
        for m in methods:
            per_round[m].append(times[m] / times["sg"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {times[m]:.3f} s" for m in methods),
              flush=True)
    print(f"\n{args.model} on {args.dataset}, T={args.timesteps}, {torch.get_num_threads()} thread(s), "
          f"{args.clock} clock{', a fresh process per run' if args.isolate else ''}; "
          f"epoch time / sg epoch time, median over {args.rounds} interleaved rounds:")
    print(f"{'method':<10} {'ratio':>7} {'min':>7} {'max':>7} {'goal':>6}  verdict")
    for m in methods:
        ratios = per_round[m]
        goal = GOALS.get(m)
        med = statistics.median(ratios)
        verdict = "-" if goal is None or m == "sg" else ("ok" if med <= goal else "OVER GOAL")
        print(f"{m:<10} {med:7.3f} {min(ratios):7.3f} {max(ratios):7.3f} "
              f"{goal if goal else '-':>6}  {verdict}")


if __name__ == "__main__":
    main()
