"""Measure cosine(FDG, surrogate gradient) at eps = 0.1 and 0.001 (Dspike Fig. 2b).

    .venv/bin/python docs/results/fdg_cosine.py RUN_DIR [--out docs/results] [--batches 8]

RUN_DIR is a training run (its last.pt and the same seed's fresh initialisation
are measured). Writes OUT/fdg_cosine.md and OUT/fdg_cosine.png. The FDG and
surrogate-gradient code is the dspike training method's.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from snn2hw.reports.fdg_agreement import fdg_agreement, render_fdg_agreement  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.001])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    rows = fdg_agreement(Path(args.run_dir) / "last.pt", args.eps, args.temperatures, args.batches,
                         args.batch_size)
    command = shlex.join([".venv/bin/python", "docs/results/fdg_cosine.py", *sys.argv[1:]])
    files = render_fdg_agreement(rows, Path(args.out), title=f"Run: `{Path(args.run_dir).name}`.",
                                 command=command)
    for r in rows:
        print(f"{r.state:<8} {r.gradient:<22} eps={r.eps:<6g} cos {r.mean:+.3f} +- {r.std:.3f}  "
              f"FDG zeros {r.fdg_zero_fraction:.2f}")
    print("wrote " + ", ".join(map(str, files)))


if __name__ == "__main__":
    main()
