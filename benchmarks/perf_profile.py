"""Where a training step's time goes, per operator, for one candidate of perf_compare.py.

    .venv-bench/bin/python benchmarks/perf_profile.py --candidate snn2hw --net conv --timesteps 4

Prints torch.profiler's operator table (self time, one torch thread) and the
share of the spiking neuron: for snn2hw the FusedLIF forward/backward and the
surrogate's element-wise operators they call, for the others everything that
is not a synaptic, normalisation or pooling operator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import perf_compare as pc  # noqa: E402

# operators that belong to the network around the neuron (same in every candidate)
SHARED = ("conv", "batch_norm", "avg_pool", "addmm", "aten::mm", "linear", "convolution")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", default="snn2hw", choices=pc.CANDIDATES)
    ap.add_argument("--net", default="conv", choices=list(pc.NETS))
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, step = pc.build(args.candidate, args.net, args.timesteps)
    x, y = pc.data()
    for _ in range(3):
        step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            step(x, y)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    shared = sum(e.self_cpu_time_total for e in events if any(s in e.key.lower() for s in SHARED))
    print(f"{args.candidate} {args.net} T={args.timesteps}: {total / args.steps / 1e3:.1f} ms per step; "
          f"synaptic/BN/pooling operators {100 * shared / total:.0f}%, the rest (neuron, loss, "
          f"element-wise glue) {100 * (total - shared) / total:.0f}%")


if __name__ == "__main__":
    main()
