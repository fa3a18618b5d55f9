"""Run a grid of training runs (methods x parameter grid x seeds), resumable and in parallel.

Each run trains in its own OUT/<method>__<key>=<value>...__seed<s>/ directory;
re-running skips finished runs and resumes interrupted ones. OUT/results.csv has
one row per run, OUT/results.md the mean and spread over seeds per grid point.

Grid: KEY=V1,V2,... per axis (cartesian product). KEY is any config key
(surrogate, surrogate_param, lr, timesteps, ...), method_options.NAME or a bare
method option; METHOD:KEY=... varies only that method's runs. Linked keys
move together: K1+METHOD:K2=(a1,a2),(b1,b2) (the first key labels the points).

Examples:
  snn2hw sweep --methods sg cpng --param-grid surrogate=triangle,rectangular \\
      surrogate_param=0.2,1,5 --seeds 0 1 --dataset mnist1d --model conv --epochs 10 --out runs/sw
  snn2hw sweep --methods cpng --param-grid cpng:k_limit=0.1,0.2,0.3 --seeds 0 --out runs/k
  snn2hw sweep --methods sg asgl --param-grid "surrogate_param+asgl:alpha_init=(0.1,10),(1,1),(10,0.1)" \
      sg:surrogate=rectangular --seeds 0 1 --out runs/width

A method that installs its own surrogate (psg, asgl, gsg, dspike) refuses another
--surrogate; scope the shape to the methods that take it (sg:surrogate=...).
"""

from __future__ import annotations

import argparse
import shlex

from ..api import sweep
from .train import FLAGS, dest, options_from_args

# Per-run flags shared with `train`, except those the sweep itself varies.
COMMON = [(flag, kw) for flag, kw in FLAGS if flag not in ("--method", "--seed")]


def _methods(values: list[str]) -> list[str]:
    return [m for v in values for m in v.split(",") if m]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", nargs="+", required=True, help="training methods (space or comma separated)")
    p.add_argument("--param-grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help="grid axes; see above")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per grid point (default 0)")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--workers", type=int, help="parallel runs (default min(cores, runs))")
    g = p.add_argument_group("settings common to every run (as for `snn2hw train`)")
    for flag, kw in COMMON:
        g.add_argument(flag, default=None, **kw)
    g.add_argument("--config", help="YAML/TOML/JSON file of settings; flags override it")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this sweep (for the results page)."""
    words = ["snn2hw", "sweep", "--methods", *_methods(args.methods)]
    if args.param_grid:
        words += ["--param-grid", *args.param_grid]
    words += ["--seeds", *map(str, args.seeds)]
    for flag, _ in COMMON:
        value = getattr(args, dest(flag))
        if value is not None:
            words += [flag, *map(str, value if isinstance(value, list) else [value])]
    if args.config:
        words += ["--config", args.config]
    for item in args.set:
        words += ["--set", item]
    words += ["--out", args.out]
    for flag in ("workers", "threads"):
        if getattr(args, flag):
            words += [f"--{flag}", str(getattr(args, flag))]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args, COMMON)
    result = sweep(_methods(args.methods), args.param_grid, args.seeds, args.out, options=options,
                   config_file=args.config, overrides=args.set, workers=args.workers,
                   threads=args.threads, progress=not args.no_progress, command=command_line(args))
    if not result.files:  # torchrun: a rank other than 0
        return 0
    print(f"{len(result.rows)} runs, {len(result.failed)} failed; wrote "
          + ", ".join(str(f) for f in result.files))
    return 1 if result.failed else 0
