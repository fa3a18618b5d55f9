"""Export a trained network to a neuromorphic target (NIR, Loihi, Speck, ONNX).

Examples:
  snn2hw export runs/digits --target nir --out export/nir --check
  snn2hw export runs/digits/best.pt --target onnx --out export/onnx --check --samples 500
  snn2hw export --from-nir model.nir --target onnx --out export/onnx --timesteps 8

With --check the artefact is run on held-out test samples and compared with the
float model spike by spike (DIR/verification.json), and the check is a gate: it
fails when class or per-layer spike agreement is below --min-agreement (default
per target: 1.0 for nir and onnx, measured for loihi and speck; docs/export.md
"The gate"), when the target's runtime and our model of it differ in any spike
(Lava vs our emulator, onnxruntime vs torch), when a layer never spikes or always
spikes on the samples, or when Lava did not run (unless --allow-emulator).

Exit codes: 0 written (and, with --check, passed); 2 refused or bad input,
nothing written; 3 written but the check failed (the failures are listed, and in
DIR/verification.json and DIR/README.md).
"""

from __future__ import annotations

import argparse

from ..errors import notice, ConfigError, VerificationError
from ..export import EXPORTERS
from ..export.api import DEFAULT_SAMPLES, ExportResult, export_model, read_nir
from ..export.nir_reading import INPUT_ENCODINGS, PRODUCERS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="a .pt checkpoint or a run directory")
    p.add_argument("--from-nir", metavar="FILE", help="export a NIR graph file instead of a checkpoint")
    p.add_argument("--target", required=True, choices=sorted(EXPORTERS),
                   help="; ".join(f"{k}: {v.description}" for k, v in sorted(EXPORTERS.items())))
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--check", action="store_true",
                   help="run the artefact on held-out samples and compare with the float model")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"held-out test samples for --check (default {DEFAULT_SAMPLES})")
    p.add_argument("--dataset", help="dataset for --check (default: the checkpoint's; needed with --from-nir)")
    p.add_argument("--timesteps", type=int, help="time steps T (default: the model's / the graph's metadata)")
    p.add_argument("--min-agreement", type=float, metavar="X",
                   help="--check fails below this class agreement or per-layer spike agreement "
                        "(default per target: " + ", ".join(
                            f"{k} {v.min_agreement.classes:g}/{v.min_agreement.spikes:g}"
                            for k, v in sorted(EXPORTERS.items())) + " classes/spikes)")
    p.add_argument("--allow-emulator", action="store_true",
                   help="let --check pass on a stand-in when the target's runtime is missing "
                        "(Loihi without .venv-loihi: our emulator; Lava not run)")
    p.add_argument("--producer", choices=PRODUCERS,
                   help="with --from-nir: read the graph as this framework meant it (tau, reset, spike "
                        "rule; docs/export.md 'Foreign graphs'); default: the graph's metadata, else NIR's "
                        "equations (sinabs' layout is recognised)")
    p.add_argument("--input-encoding", choices=sorted(INPUT_ENCODINGS),
                   help="with --from-nir, for graphs without snn2hw metadata: direct (the same frame at "
                        "every step) or events (a (T, B, ...) stream)")
    p.add_argument("--approximate", action="store_true",
                   help="deploy a graph the target cannot run exactly with the target's nearest semantics "
                        "(listed as 'approximations'); --check then measures the loss")


def run(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.from_nir):
        raise ConfigError("give either a checkpoint or --from-nir FILE")
    try:
        result = export_model(read_nir(args.from_nir) if args.from_nir else args.checkpoint, args.target,
                              args.out, check=args.check, samples=args.samples, dataset=args.dataset,
                              timesteps=args.timesteps, min_agreement=args.min_agreement,
                              allow_emulator=args.allow_emulator, producer=args.producer,
                              input_encoding=args.input_encoding, approximate=args.approximate)
    except VerificationError as exc:   # written: say what, then main exits with 3
        if exc.result is not None:
            _summary(exc.result)
        raise
    _summary(result)
    return 0


def _summary(result: ExportResult) -> None:
    print(f"{result.target}: wrote " + ", ".join(str(f) for f in result.files))
    for n in result.notes:   # how a foreign graph was read: one 'snn2hw: note:' line each
        notice(n)
    for a in result.approximations:
        print(f"approximated: {a}")
    v = result.verification
    if v is not None:
        worst = min(v.spike_agreement.values()) if v.spike_agreement else float("nan")
        ran = f" ({v.stand_in})" if v.stand_in else ""
        print(f"checked on {v.samples} test-split samples{ran}: accuracy {v.accuracy_reference:.4f} (float) -> "
              f"{v.accuracy_target:.4f} ({v.target}); class agreement {v.output_agreement:.4f}; "
              f"lowest per-layer spike agreement {worst:.6f}: {'PASSED' if v.passed else 'FAILED'}; "
              f"see {result.out_dir / 'verification.json'}")
