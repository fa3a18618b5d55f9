"""Train a spiking network (exact Heaviside forward, surrogate backward).

Examples:
  snn2hw train --dataset digits --out runs/digits
  snn2hw train --dataset mnist1d --model conv --epochs 30 --out runs/m1d
  snn2hw train --config run.yaml --lr 1e-3
  snn2hw train --resume runs/digits
  snn2hw train --nproc 2 --model conv --sync-bn --out runs/ddp   (torchrun, docs/distributed.md)
  snn2hw train --dataset cifar10:DIR --model resnet19 --device cuda --precision bf16 \
      --augment crop,flip,cutout --workers 4 --out runs/r19            (docs/quickstart.md)
  snn2hw train --init-from runs/digits --qat loihi --epochs 5 --lr 5e-4 --out runs/digits-qat
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..api import resume, train_from_options
from ..core.neuron import LIF_RESETS
from ..core.surrogate import DEFAULT_SURROGATE, SURROGATES
from ..data.datasets import with_timesteps
from ..methods import METHODS, option_flags
from ..models.config import ARCHS, NEURONS
from ..train.qat import qat_targets
from .options import add_device_option


def _names(names) -> str:
    """A registry's names for a help text, sorted."""
    return ", ".join(sorted(names))


# Registry names are not argparse choices: an unknown one is refused when the run
# config is built (one line naming the choices), as it is in a config file.
# Methods that install their own surrogate shape, for the --surrogate help:
_OWN_SHAPES = "; ".join(f"{n}: {'/'.join(c.surrogates)}" for n, c in sorted(METHODS.items())
                        if getattr(c, "surrogates", ()))

# flag -> config key; values None are not passed, so the config file or the defaults apply
FLAGS: list[tuple[str, dict]] = [
    ("--dataset", dict(help="digits (default), mnist1d, mnist1d-seq, npz:PATH, mnist-idx:DIR, cifar10:DIR, "
                            "shd:PATH, nmnist:DIR, dvsgesture:DIR")),
    ("--model", dict(metavar="ARCH", help=f"architecture: {_names(ARCHS)} (default mlp)")),
    ("--timesteps", dict(type=int, help="time steps T (default 4); an event set (shd:, nmnist:, "
                                        "dvsgesture:) is binned into T frames")),
    ("--epochs", dict(type=int, help="epochs (default 30)")),
    ("--batch-size", dict(type=int, help="batch size (default 64)")),
    ("--lr", dict(type=float, help="learning rate (default 2e-3), cosine schedule")),
    ("--weight-decay", dict(type=float, help="L2 weight decay of the weights (never the surrogate "
                            "shape parameters)")),
    ("--optimizer", dict(choices=["adam", "sgd"], help="adam (default) or sgd (the papers': with --momentum)")),
    ("--momentum", dict(type=float, help="sgd momentum (default 0.9)")),
    ("--surrogate", dict(metavar="SHAPE", help=f"surrogate shape: {_names(SURROGATES)} (default "
                         f"{DEFAULT_SURROGATE}; methods that install their own use it: {_OWN_SHAPES})")),
    ("--surrogate-param", dict(type=float, help="its shape parameter (default: the shape's)")),
    ("--method", dict(metavar="METHOD", help=f"training method: {_names(METHODS)} "
                      "(default sg: fixed surrogate)")),
    ("--loss", dict(choices=["ce", "tet"], help="ce on the mean output, or TET")),
    ("--tet-lambda", dict(type=float, help="TET: weight of the MSE term pulling o[t] to phi (default 0.05)")),
    ("--tet-phi", dict(type=float, help="TET: the MSE term's constant phi (default 1.0)")),
    ("--lam", dict(type=float, help="membrane leak lambda, 1 = IAF (default 0.5)")),
    ("--neuron", dict(choices=list(NEURONS), help="lif, or cuba: a synaptic current i = alpha i + c "
                      "drives the membrane (default lif)")),
    ("--alpha", dict(type=float, help="cuba: synaptic current decay, 0 = LIF (default 0.5)")),
    ("--v-th", dict(type=float, help="threshold (default 1.0)")),
    ("--reset", dict(choices=list(LIF_RESETS), help="hard (to 0), soft (subtract V_th, decayed), "
                     "soft_nodecay (GSG Eq. 4: V_th subtracted undecayed; not exportable)")),
    ("--carrier", dict(choices=["spike", "current"], help="between layers: spikes, or currents (ISNM: BN/pooling on currents)")),
    ("--hidden", dict(type=int, nargs="+", help="MLP hidden widths (default 256)")),
    ("--channels", dict(type=int, nargs="+", help="conv channels per block (default 32 32 32)")),
    ("--pool", dict(choices=["avg", "max", "sum", "none"])),
    ("--seed", dict(type=int)),
    ("--shape-lr", dict(type=float, help="learning rate of learnable surrogate parameters "
                                          "(psg gamma, asgl alpha); default: --lr")),
    ("--init-from", dict(help="start from this checkpoint's weights (TIT: T may differ)")),
    ("--sync-bn", dict(action="store_true", help="several processes: tdBN statistics over the global batch")),
    ("--precision", dict(choices=["fp32", "bf16", "fp16"], help="fp32 (default); bf16/fp16: synapses under "
                         "autocast, the neurons' membrane and spike condition stay fp32")),
    ("--augment", dict(metavar="LIST", help="image augmentation, e.g. crop,flip,cutout (pad 4, square 16; "
                       "crop=N, cutout=N to change): the CIFAR recipes'; default none")),
    ("--qat", dict(metavar="TARGET", help=f"quantisation-aware fine-tuning on a target's grid "
                   f"({_names(qat_targets())}); with --init-from CKPT and no --config, the "
                   "checkpoint's settings are the defaults")),
    ("--train-noise", dict(metavar="K=V,...", help="noise-aware training: a fresh simulated chip per "
                           "batch, as `robustness` samples them, e.g. mismatch=0.2,thermal=0.5 "
                           "(keys: mismatch, thermal, spike_loss, dead, quant=loihi|speck|xylo, "
                           "mismatch_params=weights+thresholds+decays)")),
]


def dest(flag: str) -> str:
    """The argparse attribute of ``flag`` (``--batch-size`` -> ``batch_size``)."""
    return flag.lstrip("-").replace("-", "_")


def options_from_args(args: argparse.Namespace, flags: list[tuple[str, dict]]) -> dict[str, Any]:
    """Config values of the ``flags`` given on the command line (those not given are left
    out, so the config file or the defaults apply). ``--model`` is the config's
    ``arch``: under the key ``model`` it would replace a config file's ``model:`` section."""
    options = {dest(flag): getattr(args, dest(flag)) for flag, _ in flags}
    options = {k: v for k, v in options.items() if v is not None}
    if "model" in options:
        options["arch"] = options.pop("model")
    return options


def add_arguments(p: argparse.ArgumentParser) -> None:
    for flag, kw in FLAGS:
        p.add_argument(flag, default=None, **kw)
    group = p.add_argument_group("method options (generated from each method's fields; "
                                 "same as --set method_options.NAME=VALUE)")
    for name, (flag, kw) in option_flags().items():
        group.add_argument(flag, dest=f"method_option__{name}", default=None, **kw)
    p.add_argument("--config", help="YAML/TOML/JSON file of settings; flags override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set tdbn=false --set method_options.k_limit=0.3")
    p.add_argument("--out", help="run directory (checkpoints, history.csv, summary.json)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_option(p)
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="data-loader processes making the batches (default 0: in this process); "
                        "same batches either way, with pinned memory on a GPU")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine (launches torchrun; "
                        "--batch-size stays the global batch)")


def _method_sets(args: argparse.Namespace) -> list[str]:
    """Method flags as method_options overrides (an explicit --set still wins)."""
    return [f"method_options.{name}={json.dumps(getattr(args, f'method_option__{name}'))}"
            for name in option_flags() if getattr(args, f"method_option__{name}") is not None]


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces ``args`` (without --nproc), for torchrun."""
    argv = ["train"]
    for flag, kw in FLAGS + [("--config", {}), ("--out", {}), ("--resume", {})]:
        value = getattr(args, dest(flag))
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    for item in _method_sets(args) + args.set:
        argv += ["--set", item]
    if args.device is not None:
        argv += ["--device", args.device]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    return argv + (["--no-progress"] if args.no_progress else [])


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from ..train.ddp import launch

        return launch(args.nproc, _argv(args))
    options = options_from_args(args, FLAGS)
    if "timesteps" in options and "dataset" in options:   # event sets are binned into T frames
        options["dataset"] = with_timesteps(options["dataset"], options["timesteps"])
    if args.resume:
        result = resume(args.resume, epochs=options.get("epochs"), progress=not args.no_progress,
                        device=args.device, workers=args.workers)
    else:
        result = train_from_options(options, config_file=args.config,
                                    overrides=_method_sets(args) + args.set,
                                    out=args.out, progress=not args.no_progress,
                                    device=args.device, workers=args.workers)
    s = result.summary
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = ""
    if s.get("best_epoch") and s.get("val_accuracy_at_best") is not None:
        best = (f"; best.pt = epoch {s['best_epoch']} (chosen on validation, {s['val_accuracy_at_best']:.4f}): "
                f"test accuracy {s['test_accuracy_at_best']:.4f}")
    print(f"final test accuracy {s['final_test_accuracy']:.4f} after {s['epochs']} epochs "
          f"({s['wall_time_s']:.1f} s training){best}"
          + (f"; run saved in {Path(result.out_dir)}" if result.out_dir else ""))
    return 0
