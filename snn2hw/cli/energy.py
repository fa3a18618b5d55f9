"""Per-layer synaptic operations and energy of a checkpoint, its SNN/ANN energy ratio,
and NeuroBench's metrics.

Examples:
  snn2hw energy runs/digits
  snn2hw energy runs/digits --profile 45nm-int8 --samples 256
  snn2hw energy runs/digits --energy-model lemaire
  snn2hw energy runs/digits --profile mychip --profile-file my_profiles.yaml --json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ..hwsim import ENERGY_MODELS, PROFILES, energy
from ..reports.hwsim_report import render_energy_markdown
from .options import add_device_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory")
    p.add_argument("--profile", default="45nm-fp32",
                   help=f"energy profile: {', '.join(PROFILES)} or one from --profile-file "
                        "(default 45nm-fp32: 0.9 pJ/AC, 4.6 pJ/MAC)")
    p.add_argument("--profile-file", help="YAML/TOML/JSON: name -> {ac_pj, mac_pj, ann_mac_pj, source}")
    p.add_argument("--energy-model", default="compute", choices=list(ENERGY_MODELS),
                   help="; ".join(f"{k}: {m.description}" for k, m in ENERGY_MODELS.items())
                   + " (default compute; lemaire uses its own 45 nm costs, not --profile)")
    p.add_argument("--samples", type=int, default=512, help="test samples to measure on (default 512)")
    p.add_argument("--dataset", help="dataset spec (default: the one it was trained on)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    add_device_option(p)


def run(args: argparse.Namespace) -> int:
    report = energy(args.checkpoint, args.profile, args.profile_file, args.samples, args.dataset,
                    command=shlex.join(["snn2hw", *getattr(args, "argv", sys.argv[1:])]),
                    energy_model=args.energy_model, device=args.device)
    print(json.dumps(report, indent=2) if args.json else render_energy_markdown(report), end="")
    return 0
