"""Evaluate a checkpoint: test accuracy and per-layer spike rates."""

from __future__ import annotations

import argparse
import json

from ..api import evaluate
from .options import add_device_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory")
    p.add_argument("--dataset", help="dataset spec (default: the one it was trained on)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_device_option(p)


def run(args: argparse.Namespace) -> int:
    result = evaluate(args.checkpoint, dataset=args.dataset, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    epoch = f", epoch {result['epoch']}" if result.get("epoch") else ""
    print(f"{result['checkpoint']}{epoch}: test accuracy {result['test_accuracy']:.4f} "
          f"on {result['samples']} test samples of {result['dataset']} (T={result['timesteps']}, {result['device']})")
    print("spike rate per layer (spikes per neuron per step):")
    for name, rate in result["spike_rates"].items():
        print(f"  {name:<24} {rate:.4f}")
    return 0
