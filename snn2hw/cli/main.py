"""``snn2hw`` command line: one small module per verb, each calling the library."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import Snn2hwError, VerificationError

# verb -> module in snn2hw.cli defining add_arguments(parser) and run(args) -> int
VERBS = {
    "train": "train",
    "evaluate": "evaluate",
    "env": "env",
    "export": "export",
    "robustness": "robustness",
    "energy": "energy",
    "report": "report",
    "sweep": "sweep",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snn2hw", description="Train spiking networks with "
                                     "adaptive surrogate gradients and deploy them to neuromorphic targets.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module in VERBS.items():
        mod = importlib.import_module(f".{module}", __package__)
        p = sub.add_parser(verb, help=mod.__doc__.strip().splitlines()[0], description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # keep examples' lines
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for reports that record their command
    try:
        return int(args.run(args) or 0)
    except VerificationError as exc:  # written, but the check failed: not a refusal (2)
        print(f"snn2hw {args.verb}: check failed: {exc}", file=sys.stderr)
        return 3
    except Snn2hwError as exc:
        print(f"snn2hw {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"snn2hw {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
