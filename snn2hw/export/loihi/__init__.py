"""The ``loihi`` target: a lava-dl netx HDF5 file for Loihi 2, checked in Lava's simulator.

* ``write``: the integer network of ``mapping.build_loihi_net`` as netx HDF5
  (``loihi.net``): ``layer/0`` the input (shape only, no neuron group), then one
  ``dense``/``conv`` block per spiking layer in PyTorch order (a ``flatten``
  group before a dense block that follows a conv block), CUBA neurons with
  iDecay = 4096, vDecay = round(4096 (1 - lam)), integer bias and vThMant. The
  group ``host`` holds what runs off-chip: the input quantisation and the readout.
* Readout: the last Affine has no neuron. It is computed **on the host** from the
  spike counts of the last spiking block, ``logits = W_r mean_t(s_t) + b_r``
  in float (any pooling before it fused into W_r). This equals the float model's
  ``mean_t(W_r s_t + b_r)`` exactly when the spikes agree, needs no probe of a
  membrane voltage (which netx cannot stream out, and which would saturate at 24
  bits), and keeps the argmax rule of training; the chip's output port carries
  the last block's spikes, which a host reads anyway.
* Input: direct-encoded frames are sent as graded spikes ``round(16 x)`` (x
  clipped to [0, 1]; ``input_message_bits`` in the README), event frames as binary
  spikes (clipped to [0, 1]; the clipped fraction is reported).
* ``verify``: runs the file in ``Loihi2SimCfg(select_tag='fixed_pt')`` inside the
  Loihi environment (``snn2hw.environment.loihi_python()``; a subprocess with npz
  files, lava is never imported here), all samples in one run with
  ``reset_interval = T``, and compares every block spike for spike with our numpy
  emulator (``emulator``) and with the float model. Any spike where Lava and the
  emulator differ fails the check. Without the Loihi environment the emulator stands
  in (``stand_in = "emulator; Lava not run"``), which fails the check unless allowed
  (``--allow-emulator``).
* Graphs that are not chains (a recurrent CUBA layer, residual blocks): netx cannot
  express them, so ``check`` plans a ``graph.LoihiGraph`` instead, written as
  ``loihi_graph.npz`` (Lava LIF + Dense/DelayDense processes, built by runner.py) and
  verified the same way by ``graph_verify``. Chains keep the netx path unchanged.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ...environment import loihi_python
from ...errors import ExportError
from . import emulator as emu
from ..base import MinAgreement, Samples, Verification
from ..reference import compare, must_equal
from .grid import LoihiGrid
from .graph import LoihiGraph, build_loihi_graph, is_chain, write_graph
from .graph_verify import FILENAME as GRAPH_FILENAME, graph_readme, verify_graph
from .mapping import LoihiNet, build_loihi_net

RUNNER = Path(__file__).with_name("runner.py")
STAND_IN = "emulator; Lava not run"
LAVA_FIX = ("the written loihi.net is not the network planned from the model (changed after writing?) "
            "or our emulator misses a rule of Lava's; export again, and report it if it persists")


def write_netx(net: LoihiNet, path: Path) -> Path:
    """Write ``net`` as a netx HDF5 file (module docstring; targets.md A.1)."""
    import h5py

    def put_type(g: Any, name: str) -> None:
        g.create_dataset("type", data=np.array([name.encode()], dtype="S10"))

    with h5py.File(path, "w") as f:
        root = f.create_group("layer")
        g = root.create_group("0")
        put_type(g, "input")
        g.create_dataset("shape", data=np.array(net.input_shape, np.int64))
        idx, prev_conv = 1, len(net.input_shape) == 3
        for layer in net.layers:
            if layer.kind == "dense" and prev_conv:
                put_type(root.create_group(str(idx)), "flatten")
                idx += 1
            g = root.create_group(str(idx))
            idx += 1
            put_type(g, layer.kind)
            g.create_dataset("shape", data=np.array(layer.out_shape, np.int64))
            g.create_dataset("weight", data=layer.weight.astype(np.int64))
            g.create_dataset("bias", data=layer.bias.astype(np.int64))
            if layer.kind == "conv":
                g.create_dataset("stride", data=np.array(layer.stride, np.int64))
                g.create_dataset("padding", data=np.array(layer.padding, np.int64))
                g.create_dataset("dilation", data=np.array([1, 1], np.int64))
                g.create_dataset("groups", data=np.int64(1))
            n = g.create_group("neuron")
            put_type(n, "CUBA")
            for key, value in (("iDecay", layer.i_decay), ("vDecay", layer.v_decay),
                               ("vThMant", layer.vth), ("refDelay", 1)):
                n.create_dataset(key, data=np.int64(value))
            n.create_dataset("gradedSpike", data=False)
            prev_conv = layer.kind == "conv"
        host = f.create_group("host")
        host.create_dataset("input_levels", data=np.int64(net.input_levels))
        host.create_dataset("input_range", data=np.array(net.input_range))
        host.create_dataset("input_message_bits", data=np.int64(net.input_bits()))
        host.create_dataset("timesteps", data=np.int64(net.timesteps))
        host.create_dataset("reset_offset", data=np.int64(emu.STREAM_RESET_OFFSET))
        host.create_dataset("readout_weight", data=net.readout.weight)
        host.create_dataset("readout_bias", data=net.readout.bias)
        host.create_dataset("neuron_names", data=np.array([s.encode() for s in net.neuron_names]))
        host.create_dataset("gains", data=np.array(net.gains))
    return path


def run_lava(jobs: list[tuple[Path, np.ndarray, int, int]], workdir: Path | None = None,
             python: Path | None = None, timeout: float = 3600) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Run netx files in Lava's fixed_pt simulator (one subprocess for all jobs).

    Each job is (hdf5 path, stream (S, *input_shape) int, input_message_bits, T), run
    with ``reset_interval = T`` and ``reset_offset = 1`` (``emulator.make_stream``
    lays samples out that way). Returns per job the
    stream spikes of every block (S, *shape) and the timings (import, build, run s).
    """
    python = python or loihi_python()
    if python is None:
        raise ExportError("the Loihi environment (.venv-loihi) is missing; run scripts/setup")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        args: list[str] = []
        for i, (path, stream, bits, T) in enumerate(jobs):
            np.savez(Path(tmp) / f"in{i}.npz", stream=stream.astype(np.int32), reset_interval=T,
                     reset_offset=emu.STREAM_RESET_OFFSET, input_bits=bits)
            args += [str(path), str(Path(tmp) / f"in{i}.npz"), str(Path(tmp) / f"out{i}.npz")]
        proc = subprocess.run([str(python), str(RUNNER), *args], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise ExportError(f"Lava simulation failed ({python}): {proc.stderr.strip()[-1500:]}")
        results = []
        for i in range(len(jobs)):
            with np.load(Path(tmp) / f"out{i}.npz") as out:
                n = sum(1 for k in out.files if k.startswith("layer"))
                results.append(([out[f"layer{k}"] for k in range(n)], out["timing"]))
    return results


def sample_input(net: LoihiNet, samples: Samples, T: int) -> np.ndarray:
    """Held-out samples as the chip receives them: integers (T, N, *input_shape)."""
    x = samples.x.detach().cpu().numpy()
    xi = net.quantise_input(x)
    if not samples.temporal:
        xi = np.broadcast_to(xi, (T,) + xi.shape)
    return np.ascontiguousarray(xi)


def readout(net: LoihiNet, spikes: np.ndarray) -> np.ndarray:
    """Host readout: W_r mean_t(s_t) + b_r from the last block's spikes (T, N, ...)."""
    rate = spikes.astype(np.float64).mean(0).reshape(spikes.shape[1], -1)
    return rate @ net.readout.weight.T + net.readout.bias


class LoihiExporter:
    name: ClassVar[str] = "loihi"
    description: ClassVar[str] = "Loihi 2 via lava-dl netx HDF5 (8-bit integer CUBA), checked in Lava's simulator"
    filename: ClassVar[str] = "loihi.net"
    grid: ClassVar[type | None] = LoihiGrid   # train --qat loihi
    # float model vs the chip's integers (Lava vs our emulator must agree exactly, always);
    # measured in docs/export.md "The gate"
    min_agreement: ClassVar[MinAgreement] = MinAgreement(classes=0.9, spikes=0.85)
    approximate: bool = False                 # --approximate: the nearest CUBA neuron (mapping.py)

    def check(self, graph: Any) -> LoihiNet | LoihiGraph:
        """The plan is the quantised integer network: a netx chain (``mapping.build_loihi_net``)
        or, for graphs that are not chains, a Lava process graph (``graph.build_loihi_graph``)."""
        if is_chain(graph):
            return build_loihi_net(graph, approximate=self.approximate)
        return build_loihi_graph(graph)

    def write(self, plan: LoihiNet | LoihiGraph, out_dir: Path) -> list[Path]:
        if isinstance(plan, LoihiGraph):
            return [write_graph(plan, Path(out_dir) / GRAPH_FILENAME)]
        return [write_netx(plan, Path(out_dir) / self.filename)]

    def verify(self, plan: LoihiNet | LoihiGraph, out_dir: Path, samples: Samples) -> Verification:
        if isinstance(plan, LoihiGraph):
            return verify_graph(self.name, plan, out_dir, samples)
        T = int(samples.timesteps or plan.timesteps)
        xi = sample_input(plan, samples, T)
        N = xi.shape[1]
        emulated = emu.run_samples(plan.layers, xi)
        x = samples.x.detach().cpu().numpy()
        lo, hi = plan.input_range
        details: dict[str, Any] = {
            "input_levels": plan.input_levels, "input_message_bits": plan.input_bits(),
            "input_clipped_fraction": float(np.mean((x < lo) | (x > hi))),
            "gains": plan.gains, "vThMant": [l.vth for l in plan.layers],
            "vDecay": [l.v_decay for l in plan.layers],
            "lam_effective": [1 - l.v_decay / emu.DECAY_UNIT for l in plan.layers],
            "weight_bits_used": plan.info["weight_bits_used"],
            "emulator_accuracy": float((readout(plan, emulated[-1]).argmax(1) == samples.y.numpy()).mean()),
        }
        target, runtime_failures, stand_in = emulated, [], None
        python = loihi_python()
        if python is None:
            stand_in = STAND_IN
            details["loihi_simulator"] = (f"{STAND_IN}: the Loihi environment (.venv-loihi) is missing, so "
                                          "the numbers below are our emulator's; run scripts/setup")
        else:
            stream, _, _ = emu.make_stream(xi, len(plan.layers))
            (lava_stream, timing), = run_lava([(Path(out_dir) / self.filename, stream, plan.input_bits(), T)])
            target = [emu.unstream(s, k, T, N) for k, s in enumerate(lava_stream)]
            details["loihi_simulator"] = "lava fixed_pt (Loihi2SimCfg), bit-accurate CPU model"
            counts, runtime_failures = must_equal(
                "Lava and our emulator", dict(zip(plan.neuron_names, target)),
                dict(zip(plan.neuron_names, emulated)), LAVA_FIX)
            details["lava_vs_emulator_mismatches"] = counts
            details["lava_timing_s"] = {"import": float(timing[0]), "build": float(timing[1]),
                                        "run": float(timing[2]), "steps": int(stream.shape[0])}
        spikes = {name: torch.from_numpy(s.astype(np.float32)) for name, s in zip(plan.neuron_names, target)}
        output = torch.from_numpy(readout(plan, target[-1]))
        v = compare(self.name, samples.reference, spikes, output, samples.y, details)
        v.failures[:0] = runtime_failures
        v.stand_in = stand_in
        return v

    def readme(self, plan: LoihiNet | LoihiGraph, files: list[Path]) -> str:
        if isinstance(plan, LoihiGraph):
            return graph_readme(plan)
        rows = "".join(
            f"| {i + 1} | {l.name} / {n} | {l.kind} | {tuple(l.weight.shape)} | {l.out_shape} | "
            f"{l.stride if l.kind == 'conv' else ''} | {l.vth} | {l.v_decay} | {g:.4g} |\n"
            for i, (l, n, g) in enumerate(zip(plan.layers, plan.neuron_names, plan.gains)))
        T, bits = plan.timesteps, plan.input_bits()
        return f"""# Loihi 2 export (lava-dl netx)

`{self.filename}`: HDF5 for `lava.lib.dl.netx.hdf5.Network`, integer CUBA blocks
(targets.md A). Per step every block computes `u = 64 a` (iDecay = 4096),
`v = trunc0(v (1 - vDecay/4096)) + u + 64 bias`, spikes where `v > 64 vThMant`, then `v = 0`.

| group | source layer / neuron | type | weight | output shape | stride | vThMant | vDecay | gain G |
|---|---|---|---|---|---|---|---|---|
{rows}
Weights are even integers in [-256, 254] (8-bit, scale S = G g per layer), so
`v > V_th` of the float model is `v_int > 64 vThMant` with vThMant = V_th G exactly.
Avg/sum pooling is fused into the next layer (kernel repeated, stride times k).

**Input** (host): `x_int = round({plan.input_levels} * clip(x, {plan.input_range[0]}, {plan.input_range[1]}))`,
sent as graded spikes (`input_message_bits={bits}`), shape {plan.input_shape} in PyTorch order
(Lava wants `(W, H, C, T)`: `x.transpose(3, 2, 1, 0)` of `(T, C, H, W)`).

**Readout** (host): the last Affine has no neuron; the chip streams out the spikes of the
last block and the host computes `logits = W_r mean_t(s_t) + b_r` with the float weights in
`host/readout_weight`, `host/readout_bias` (argmax = class). This is the trained model's
readout exactly, given the same spikes.

**Batching**: samples of T = {T} frames are sent back to back; `reset_interval=T,
reset_offset=1` zeroes every block exactly when the first frame of a sample reaches it.
Each block adds one step of latency: frame j of sample n leaves block k at step n T + j + k + 1.

```python
from lava.lib.dl import netx
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc import io
net = netx.hdf5.Network("{self.filename}", input_message_bits={bits}, reset_interval={T}, reset_offset=1)
src = io.source.RingBuffer(data=frames)          # (W, H, C, steps) or (N, steps), int
src.s_out.connect(net.inp)
sink = io.sink.RingBuffer(shape=net.out.shape, buffer=steps)
net.out.connect(sink.a_in)
net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
spikes = sink.data.get(); net.stop()
```

`snn2hw.export.loihi.runner` does exactly this; `snn2hw.export.loihi.emulator` predicts it bit
for bit in numpy. Not verified on a physical chip (targets.md, risk 1).
"""
