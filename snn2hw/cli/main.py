"""``snn2hw`` command line: one small module per verb, each calling the library."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import Notice, Snn2hwError, VerificationError

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


def common_options() -> argparse.ArgumentParser:
    """Options every verb takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output and threads (every verb)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: torch's; sweep: per run, default cores // workers). "
                        "On a busy or small machine 1 is often much faster for these small models "
                        "(docs/performance.md)")
    g.add_argument("-q", "--quiet", action="store_true", help="no notes (errors still print)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="notes with where they come from, and other libraries' warnings")
    return p


def show_notices(verbose: bool, quiet: bool) -> None:
    """Our notices as one line each, once per message (``snn2hw: note: ...``); other
    libraries' warnings only with -v, in Python's format."""
    seen: set[str] = set()
    python_format = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if issubclass(category, Notice):
            text = str(message)
            if quiet or text in seen:
                return
            seen.add(text)
            where = f" ({filename}:{lineno})" if verbose else ""
            print(f"snn2hw: note: {text}{where}", file=sys.stderr)
        elif verbose:
            python_format(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("always" if verbose else "default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snn2hw", description="Train spiking networks with "
                                     "adaptive surrogate gradients and deploy them to neuromorphic targets.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = common_options()
    for verb, module in VERBS.items():
        mod = importlib.import_module(f".{module}", __package__)
        p = sub.add_parser(verb, help=mod.__doc__.strip().splitlines()[0], description=mod.__doc__,
                           parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # keep examples' lines
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for reports that record their command
    show_notices(args.verbose, args.quiet)
    if args.threads and args.verb != "sweep":   # the sweep gives each run its threads
        import torch

        torch.set_num_threads(args.threads)
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
