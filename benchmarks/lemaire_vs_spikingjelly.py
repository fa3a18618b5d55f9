"""Our Lemaire et al. 2022 energy model against SpikingJelly 2.0's implementation of it,
on the same networks and inputs.

    .venv/bin/python benchmarks/lemaire_vs_spikingjelly.py      # needs .venv-bench (benchmarks/setup)

Each network is lowered (``snn2hw.hwsim.lower``) and described as plain data
(weights, conv geometry, neuron constants); the SpikingJelly side
(``--reference SPEC OUT``, run by .venv-bench's python) rebuilds it from
``layer.Linear/Conv2d/Flatten`` and ``neuron.LIFNode`` (``tau = 1/(1 - lam)``,
``decay_input=False``: the same update) or ``IFNode`` (lam = 1), all multi-step,
and runs ``estimate_lemaire_energy`` one sample at a time (its memory sizes
scale with the batch; ours are per sample). Prints both energies per sample
and per component.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
COMPONENTS = ("ops", "addressing", "inout", "params", "potential")


# ---------------------------------------------------------------- our side (main env)


def spec_of(net, x: torch.Tensor, temporal: bool) -> dict:
    """The lowered ``net`` and its input (B, T, ...) as plain tensors and numbers."""
    from snn2hw.hwsim.graph import Neuron, Stateless, Synapse

    layers = []
    for op in net.ops:
        if isinstance(op, Synapse):
            layers.append({"op": op.kind, "weight": op.weight.clone(), "bias": op.bias,
                           "stride": op.stride, "padding": op.padding, "dilation": op.dilation,
                           "groups": op.groups})
        elif isinstance(op, Neuron):
            layers.append({"op": "neuron", "lam": op.lam, "v_th": op.v_th, "reset": op.reset})
        elif isinstance(op, Stateless) and isinstance(op.module, torch.nn.Flatten):
            layers.append({"op": "flatten"})
        else:
            raise ValueError(f"{op.name}: no SpikingJelly counterpart in this comparison")
    frames = x if temporal else x.unsqueeze(1).expand(len(x), net.timesteps, *x.shape[1:])
    return {"layers": layers, "inputs": frames.contiguous()}


def ours(net, x: torch.Tensor, temporal: bool) -> dict:
    """Our Lemaire energy per sample: total and per component."""
    from snn2hw.hwsim import PROFILES, count_energy

    rep = count_energy(net, x, PROFILES["45nm-fp32"], temporal=temporal, energy_model="lemaire")
    parts = [r["energy"] for r in rep["layers"]] + [r["energy"] for r in rep["neurons"]]
    out = {k: sum(p[k] for p in parts) for k in COMPONENTS}
    out["total"] = rep["total"]["snn_pj"]
    out["spikes"] = rep["total"]["spikes"]
    return out


def reference(spec: dict, python: Path = BENCH_PYTHON) -> dict:
    """SpikingJelly's Lemaire energy per sample, run in ``python`` (the benchmark env)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "spec.pt", Path(tmp) / "out.json"
        torch.save(spec, path)
        proc = subprocess.run([str(python), __file__, "--reference", str(path), str(out)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"SpikingJelly reference failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------- SpikingJelly side (.venv-bench)


def _spikingjelly_net(spec: dict):
    from spikingjelly.activation_based import layer, neuron

    mods = []
    for L in spec["layers"]:
        if L["op"] == "linear":
            w, b = L["weight"], L["bias"]
            m = layer.Linear(w.shape[1], w.shape[0], bias=b is not None, step_mode="m")
        elif L["op"] == "conv2d":
            w, b = L["weight"], L["bias"]
            m = layer.Conv2d(w.shape[1] * L["groups"], w.shape[0], tuple(w.shape[2:]), stride=L["stride"],
                             padding=L["padding"], dilation=L["dilation"], groups=L["groups"],
                             bias=b is not None, step_mode="m")
        elif L["op"] == "flatten":
            mods.append(layer.Flatten(step_mode="m"))
            continue
        else:
            v_reset = 0.0 if L["reset"] == "hard" else None
            if L["lam"] == 1.0:
                mods.append(neuron.IFNode(v_threshold=L["v_th"], v_reset=v_reset, step_mode="m"))
            else:
                mods.append(neuron.LIFNode(tau=1.0 / (1.0 - L["lam"]), decay_input=False,
                                           v_threshold=L["v_th"], v_reset=v_reset, step_mode="m"))
            continue
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        mods.append(m)
    return torch.nn.Sequential(*mods)


def _run_reference(spec_path: str, out_path: str) -> None:
    import warnings

    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import LemaireEnergyConfig, estimate_lemaire_energy

    spec = torch.load(spec_path, weights_only=False)
    net = _spikingjelly_net(spec).eval()
    x = spec["inputs"]
    keys = {"ops": "ops_pj", "addressing": "addressing_pj", "inout": "inout_pj", "params": "params_pj",
            "potential": "potential_pj"}
    acc = {k: 0.0 for k in (*keys, "total", "spikes")}
    for i in range(len(x)):  # batch 1: SpikingJelly sizes its memories by the whole batch
        functional.reset_net(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Flatten: "omitted" (it has no energy)
            rep = estimate_lemaire_energy(net, (x[i:i + 1].transpose(0, 1).contiguous(),),
                                          config=LemaireEnergyConfig(strict=False))
        for k, v in keys.items():
            acc[k] += rep.breakdown_pj[v]
        acc["total"] += rep.total_pj
        acc["spikes"] += rep.counts["write_out_bytes"] / 4  # every spike is written once
    Path(out_path).write_text(json.dumps({k: v / len(x) for k, v in acc.items()}))


# ---------------------------------------------------------------- the comparison


def networks() -> list[tuple[str, object, torch.Tensor, bool]]:
    """(label, lowered net, input, temporal): an MLP on direct input, an IF MLP on
    events, and a conv net (stride, padding) on events and on direct input."""
    from torch import nn

    from snn2hw.core.layers import LIF
    from snn2hw.hwsim import lower
    from snn2hw.models.config import ModelConfig
    from snn2hw.models.network import SpikingNetwork, build_model

    torch.manual_seed(0)
    mlp = build_model(ModelConfig(arch="mlp", input_shape=(64,), hidden=(128, 64), timesteps=4)).eval()
    g = torch.Generator().manual_seed(1)
    out = [("mlp, direct input, LIF hard reset", lower(mlp), torch.rand(16, 64, generator=g), False)]
    layers = [nn.Linear(40, 48), LIF(lam=1.0, v_th=0.4, reset="soft"), nn.Linear(48, 10)]
    for m in layers[::2]:
        m.weight.data.abs_()
    ifmlp = SpikingNetwork(ModelConfig(arch="mlp", input_shape=(40,), timesteps=5), layers).eval()
    out.append(("mlp, event input, IF soft reset", lower(ifmlp),
                (torch.rand(16, 5, 40, generator=g) > 0.7).float(), True))
    layers = [nn.Conv2d(2, 8, 3, padding=1), LIF(v_th=0.3), nn.Conv2d(8, 8, 3, stride=2, padding=1),
              LIF(v_th=0.3), nn.Flatten(), nn.Linear(8 * 5 * 6, 10)]
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.abs_()
    conv = SpikingNetwork(ModelConfig(arch="conv", input_shape=(2, 9, 11), timesteps=3), layers).eval()
    out.append(("conv (stride 1 and 2, padding 1), event input", lower(conv),
                (torch.rand(16, 3, 2, 9, 11, generator=g) > 0.7).float(), True))
    out.append(("conv (stride 1 and 2, padding 1), direct input", lower(conv),
                torch.rand(16, 2, 9, 11, generator=g), False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        _run_reference(*args.reference)
        return
    if not BENCH_PYTHON.exists():
        sys.exit(f"{BENCH_PYTHON} is missing: run benchmarks/setup first")
    for label, net, x, temporal in networks():
        a, b = ours(net, x, temporal), reference(spec_of(net, x, temporal))
        print(f"\n{label}: {len(x)} samples, energy per sample (pJ)")
        print(f"  {'component':12s} {'snn2hw':>14s} {'SpikingJelly':>14s} {'difference':>11s}")
        for k in (*COMPONENTS, "total"):
            rel = (a[k] - b[k]) / b[k] if b[k] else 0.0
            print(f"  {k:12s} {a[k]:14.2f} {b[k]:14.2f} {100 * rel:+10.4f}%")
        print(f"  spikes per sample: snn2hw {a['spikes']:.2f}, SpikingJelly {b['spikes']:.2f}")


if __name__ == "__main__":
    main()
