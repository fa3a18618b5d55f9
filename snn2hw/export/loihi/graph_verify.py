"""Run a ``graph.LoihiGraph`` in Lava (subprocess, runner.py) and check it against the emulator.

Each sample runs from zero state in its own freshly built Lava network (graphs have
no netx LIFReset; a recurrent edge would also carry the last spikes of one sample
into the next), T + depth steps, frames then zeros. Lava's steps are aligned with
the float model's frames by each neuron's depth (``emulator.run_graph``).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...environment import loihi_python
from ...errors import ExportError
from ..base import Samples, Verification
from ..reference import compare, must_equal
from . import emulator as emu
from .graph import BIAS_CHANNEL, LoihiGraph

RUNNER = Path(__file__).with_name("runner.py")
FILENAME = "loihi_graph.npz"
STAND_IN = "emulator; Lava not run"
LAVA_FIX = ("the written loihi_graph.npz is not the planned network, or our graph emulator misses a rule "
            "of Lava's (Dense/DelayDense timing, LIF); export again, and report it if it persists")


def run_lava_graph(jobs: list[tuple[Path, LoihiGraph, np.ndarray]], python: Path | None = None,
                   timeout: float = 3600) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Run graph files in Lava's fixed_pt simulator, all jobs in one subprocess.

    Each job is (npz path, the graph, integer input x (T, N, input_size)). Returns per
    job Lava's spikes per neuron on its own timeline (S, N, size), S = T + depth (as
    ``emulator.run_graph_stream``), and the timings (import, build, run s)."""
    python = python or loihi_python()
    if python is None:
        raise ExportError("the Loihi environment (.venv-loihi) is missing; run scripts/setup")
    with tempfile.TemporaryDirectory() as tmp:
        args: list[str] = []
        for i, (path, net, x) in enumerate(jobs):
            T, N = x.shape[:2]
            samples = np.zeros((N, T + net.depth, net.input_size), np.int32)
            samples[:, :T] = np.swapaxes(x, 0, 1)
            np.savez(Path(tmp) / f"in{i}.npz", samples=samples)
            args += [str(path), str(Path(tmp) / f"in{i}.npz"), str(Path(tmp) / f"out{i}.npz")]
        proc = subprocess.run([str(python), str(RUNNER), *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ExportError(f"Lava simulation failed ({python}): {proc.stderr.strip()[-1500:]}")
        results = []
        for i, (_, net, _) in enumerate(jobs):
            with np.load(Path(tmp) / f"out{i}.npz") as out:
                spikes = {n.name: np.swapaxes(out[f"n{j}"], 0, 1) for j, n in enumerate(net.neurons)}
                results.append((spikes, out["timing"]))
    return results


def align(net: LoihiGraph, stream: dict[str, np.ndarray], T: int) -> dict[str, np.ndarray]:
    """Lava-timeline spikes (S, N, size) -> the float model's frames (T, N, size) by depth."""
    return {n.name: stream[n.name][n.depth:n.depth + T] for n in net.neurons}


def graph_readout(net: LoihiGraph, spikes: dict[str, np.ndarray]) -> np.ndarray:
    """Host readout: sum_src W_src mean_t(s_src) + b."""
    out = 0.0
    for src, w in net.readout.items():
        s = spikes[src]
        out = out + s.astype(np.float64).mean(0).reshape(s.shape[1], -1) @ w.T
    return out + net.readout_bias


def sample_input(net: LoihiGraph, samples: Samples, T: int) -> np.ndarray:
    """Held-out samples as the chip receives them: integers (T, N, input_size)."""
    xi = net.quantise_input(samples.x.detach().cpu().numpy())
    if not samples.temporal:
        xi = np.broadcast_to(xi, (T,) + xi.shape)
    return np.ascontiguousarray(xi)


def verify_graph(target: str, net: LoihiGraph, out_dir: Path, samples: Samples) -> Verification:
    """Lava = emulator spike for spike (``must_equal``), then the float comparison."""
    T = int(samples.timesteps or net.timesteps)
    xi = sample_input(net, samples, T)
    emulated = emu.run_graph(net, xi)
    details: dict[str, Any] = {
        "artefact": "Lava process graph (LIF + Dense/DelayDense), not netx",
        "input_levels": net.input_levels, "input_message_bits": net.input_bits(),
        "gains": [n.gain for n in net.neurons], "vThMant": [n.vth for n in net.neurons],
        "depth": {n.name: n.depth for n in net.neurons},
        "recurrent_edges": net.info["recurrent_edges"], "delayed_edges": net.info["delayed_edges"],
        "emulator_accuracy": float((graph_readout(net, emulated).argmax(1) == samples.y.numpy()).mean()),
    }
    target_spikes, runtime_failures, stand_in = emulated, [], None
    if loihi_python() is None:
        stand_in = STAND_IN
        details["loihi_simulator"] = f"{STAND_IN}: the Loihi environment (.venv-loihi) is missing; run scripts/setup"
    else:
        (stream, timing), = run_lava_graph([(Path(out_dir) / FILENAME, net, xi)])
        target_spikes = align(net, stream, T)
        details["loihi_simulator"] = "lava fixed_pt (Loihi2SimCfg), LIF + Dense processes"
        counts, runtime_failures = must_equal("Lava and our emulator", target_spikes, emulated, LAVA_FIX)
        details["lava_vs_emulator_mismatches"] = counts
        details["lava_timing_s"] = {"import": float(timing[0]), "build": float(timing[1]), "run": float(timing[2])}
    spikes = {k: torch.from_numpy(s.astype(np.float32)) for k, s in target_spikes.items()}
    v = compare(target, samples.reference, spikes, torch.from_numpy(graph_readout(net, target_spikes)),
                samples.y, details)
    v.failures[:0] = runtime_failures
    v.stand_in = stand_in
    return v


def graph_readme(net: LoihiGraph) -> str:
    rows = "".join(f"| {n.name} | {n.size} | {n.depth} | {n.du} | {n.dv} | {n.vth} | {n.gain:.4g} |\n"
                   for n in net.neurons)
    edges = "".join(f"| {e.src} | {e.dst} | {tuple(e.weight.shape)} | {e.delay} |\n" for e in net.edges)
    moved = net.info.get(BIAS_CHANNEL)
    bias_note = (f"\nThe last two input channels carry the graded values 1 and 16 in frames 0..T-1: their "
                 f"weights are the biases of the neurons {', '.join(moved)} (b = w_lo + 16 w_hi). Lava's "
                 "bias_mant (0 here) would start at step 0, `depth` steps before the first input, and a CUBA "
                 "neuron's would go to v instead of the current.\n"
                 if moved else "")
    return f"""# Loihi 2 export (Lava process graph)

This graph is not a chain (recurrence or residual sums), which netx cannot run, so
`{FILENAME}` describes Lava processes: one `lava.proc.lif.process.LIF` per neuron
(`du` below is the current decay: pass `du - 1` to LIF, whose model adds 1; `bias_exp=6`)
and one `Dense` (`DelayDense` with `delays=delay` when delay > 0) per edge, integer weights
in `weight{{i}}`. A LIF with several edges sums them; a recurrent edge returns to its own LIF.

| neuron | size | depth | du | dv | vThMant | gain G |
|---|---|---|---|---|---|---|
{rows}
| from | to | weight | delay |
|---|---|---|---|
{edges}
Each connection adds one step (Dense sends what it received the step before); delays make
every path into a neuron equally long, so neuron n's step i is frame i - depth of the
trained model. Input: graded spikes `round({net.input_levels} clip(x))`, flattened;
T = {net.timesteps} frames then {net.depth} zero steps per sample, each sample from zero state.
{bias_note}Readout (host): `logits = sum_src W_src mean_t(s_src) + b` (`readout{{i}}`, `readout_bias`).
`snn2hw.export.loihi.runner` builds and runs exactly this; `emulator.run_graph_stream`
predicts it bit for bit. Not verified on a physical chip.
"""
