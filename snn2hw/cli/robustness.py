"""Accuracy under simulated hardware noise (mismatch, thermal, spike loss, dead neurons).

Examples:
  snn2hw robustness runs/sg runs/psg --out reports/rob
  snn2hw robustness runs/sg --mismatch 0,0.1,0.2,0.4 --thermal 0,0.2,0.5 --chips 20 --out r
  snn2hw robustness runs/sg --quant loihi --spike-loss 0,0.1,0.3 --dead 0,0.1 --out r
  snn2hw robustness runs/sg --target xylo --mismatch 0,0.2,0.4 --thermal 0,0.5,1 --out r
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..api import robustness
from ..errors import ConfigError
from ..hwsim import MISMATCH_PARAMS, QUANT_PRESETS
from .options import add_device_option


def _levels(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints or run directories")
    p.add_argument("--mismatch", type=_levels, default="0,0.05,0.1,0.2",
                   help="mismatch levels xi: psi' ~ N(psi, (xi|psi|)^2) per chip (default 0,0.05,0.1,0.2)")
    p.add_argument("--thermal", type=_levels, default="0,0.05,0.1,0.2",
                   help="thermal noise std per step, relative to V_th (default 0,0.05,0.1,0.2)")
    p.add_argument("--spike-loss", type=_levels, default="", help="spike drop probabilities (off)")
    p.add_argument("--dead", type=_levels, default="", help="fractions of dead neurons (off)")
    p.add_argument("--mismatch-params", default=",".join(MISMATCH_PARAMS),
                   help="which parameters mismatch perturbs (default weights,thresholds,decays)")
    p.add_argument("--chips", type=int, default=10, help="simulated chips per level (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quant", choices=["none", *QUANT_PRESETS], default="none",
                   help="simulate a target's precision at every level (default none: float)")
    p.add_argument("--target", choices=list(QUANT_PRESETS),
                   help="the target's precision at every level, plus every (mismatch, thermal) pair "
                        "combined on it and the model's energy: what the chip will lose")
    p.add_argument("--weight-bits", type=int, help="weight bits (overrides the preset)")
    p.add_argument("--state-bits", type=int, help="membrane state bits (overrides the preset)")
    p.add_argument("--dataset", help="dataset spec (default: the one each model was trained on)")
    p.add_argument("--samples", type=int, help="use the first N test samples (default all)")
    p.add_argument("--out", required=True, help="report directory (report.json, report.md, PNGs)")
    p.add_argument("--no-progress", action="store_true")
    add_device_option(p)


def run(args: argparse.Namespace) -> int:
    params = tuple(v.strip() for v in args.mismatch_params.split(",") if v.strip())
    if not params:
        raise ConfigError("--mismatch-params is empty; give e.g. weights,thresholds,decays")
    report = robustness(args.checkpoints, mismatch=args.mismatch, thermal=args.thermal,
                        spike_loss=args.spike_loss, dead=args.dead, chips=args.chips, seed=args.seed, mismatch_params=params, quant=args.quant,
                        weight_bits=args.weight_bits, state_bits=args.state_bits, dataset=args.dataset,
                        samples=args.samples, out=args.out, progress=not args.no_progress, device=args.device,
                        command=shlex.join(["snn2hw", *getattr(args, "argv", sys.argv[1:])]),
                        target=args.target)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return 0
    for m in report["models"]:
        parts = [f"{axis} " + " ".join(f"{r['level']:g}:{100 * r['mean']:.1f}" for r in rows)
                 for axis, rows in m["sweeps"].items()]
        print(f"{m['label']}: float {100 * m['float_accuracy']:.1f}%; " + "; ".join(parts))
        if "target" in m:
            worst = min(m["target"]["combined"], key=lambda r: r["mean"])
            print(f"  on {m['target']['name']}: worst combined (mismatch {worst['mismatch']:g}, thermal "
                  f"{worst['thermal']:g}) {100 * worst['mean']:.1f}%")
    print(f"report in {args.out}/report.md ({report['seconds_per_chip'] * 1000:.0f} ms per simulated chip)")
    return 0
