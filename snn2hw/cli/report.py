"""Render a run directory as report.md with PNG plots (curves, adaptive parameters, spike rates).

Examples:
  snn2hw report runs/digits
  snn2hw report runs/digits --no-spike-rates
"""

from __future__ import annotations

import argparse

from ..api import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `snn2hw train --out DIR`")
    p.add_argument("--no-spike-rates", action="store_true",
                   help="skip evaluating the best checkpoint for per-layer spike rates")


def run(args: argparse.Namespace) -> int:
    result = report(args.run_dir, spike_rates=not args.no_spike_rates)
    print(f"wrote {result.path} and {len(result.plots)} plot(s): "
          + ", ".join(p.name for p in result.plots))
    return 0
