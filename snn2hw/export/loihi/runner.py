"""Run a netx HDF5 file, or a process graph, in Lava's bit-accurate CPU simulator (Loihi 2, fixed point).

Executed by the Loihi environment's Python (3.10, lava-dl), never imported by
snn2hw itself: it needs only numpy and lava, and talks through npz files.

    python runner.py NET.h5 IN.npz OUT.npz [NET2.h5 IN2.npz OUT2.npz ...]

IN.npz holds ``stream`` (steps, *input_shape) int32 in PyTorch order (C, H, W)
or (N,), one input frame per Lava step; ``reset_interval`` and ``reset_offset``
(0 = no reset) for ``netx.hdf5.Network``; ``input_bits`` (graded input message
bits, 0 = binary). OUT.npz gets ``layer{i}`` (steps, *shape) int8: the spikes
every netx block emitted at every step, in PyTorch order, plus ``timing``
(import, build, run seconds) and ``steps``. Several triples share one import
of lava (about 3-10 s).

A NET ending in ``.npz`` is a process graph (``graph.write_graph``): one
``lava.proc.lif.process.LIF`` per neuron (du = current decay - 1, as netx writes
iDecay - 1: the model adds 1; bias_exp = 6), one ``Dense`` (or ``DelayDense``
when delayed) per edge from a LIF's ``s_out`` or the input to a LIF's ``a_in``;
a LIF with several connections sums them, a recurrent Dense returns to its own
LIF. IN.npz then holds ``samples`` (N, steps, input_size) int32: each sample runs
from zero state in a freshly built network (no LIFReset for graphs). OUT.npz gets
``n{j}`` (N, steps, size) int8 per neuron j and ``timing``.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _lava_order(x: np.ndarray) -> np.ndarray:
    """(T, C, H, W) or (T, N) -> Lava's (W, H, C, T) or (N, T)."""
    return np.ascontiguousarray(x.transpose(tuple(range(x.ndim - 1, -1, -1))))


def run_one(net_path: str, in_path: str, out_path: str, t_import: float) -> None:
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    inp = np.load(in_path)
    stream = inp["stream"].astype(np.int32)
    steps = stream.shape[0]
    reset_interval = int(inp["reset_interval"])
    t1 = time.perf_counter()
    net = netx.hdf5.Network(
        net_config=net_path,
        input_message_bits=int(inp["input_bits"]),
        reset_interval=reset_interval or None,
        reset_offset=int(inp["reset_offset"]),
    )
    source = io.source.RingBuffer(data=_lava_order(stream))
    source.s_out.connect(net.inp)
    # One sink per block: an OutPort may feed several InPorts, so the next
    # block still receives the spikes.
    sinks = []
    for block in net.layers:
        sink = io.sink.RingBuffer(shape=block.out.shape, buffer=steps)
        block.out.connect(sink.a_in)
        sinks.append(sink)
    t2 = time.perf_counter()
    net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    t3 = time.perf_counter()
    result = {}
    for i, sink in enumerate(sinks):
        data = sink.data.get()  # (W, H, C, T) or (N, T)
        result[f"layer{i}"] = _lava_order(data).astype(np.int8)
    net.stop()
    np.savez(out_path, steps=steps, timing=np.array([t_import, t2 - t1, t3 - t2]), **result)


def run_graph(net_path: str, in_path: str, out_path: str, t_import: float) -> None:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.dense.process import DelayDense, Dense
    from lava.proc.lif.process import LIF

    g = np.load(net_path)
    samples = np.load(in_path)["samples"].astype(np.int32)
    names = [str(n) for n in g["neuron_names"]]
    params = g["neuron_params"]
    ends, delays = g["edge_ends"], g["edge_delays"]
    n_samples, steps = samples.shape[:2]
    result = {f"n{j}": np.zeros((n_samples, steps, int(params[j][0])), np.int8) for j in range(len(names))}
    t_build = t_run = 0.0
    for k in range(n_samples):
        t1 = time.perf_counter()
        source = io.source.RingBuffer(data=np.ascontiguousarray(samples[k].T))
        lifs = {}
        for j, name in enumerate(names):
            size, du, dv, vth, _ = (int(v) for v in params[j])
            lifs[name] = LIF(shape=(size,), du=du - 1, dv=dv, vth=vth, bias_mant=g[f"bias{j}"].astype(np.int32),
                             bias_exp=6, name=name)
        for i, (src, dst) in enumerate(ends):
            w, d = g[f"weight{i}"].astype(np.int32), int(delays[i])
            bits = int(g["input_bits"]) if src == "input" else 0
            conn = (DelayDense(weights=w, delays=d, num_message_bits=bits) if d
                    else Dense(weights=w, num_message_bits=bits))
            (source if src == "input" else lifs[str(src)]).s_out.connect(conn.s_in)
            conn.a_out.connect(lifs[str(dst)].a_in)
        sinks = []
        for name in names:
            sink = io.sink.RingBuffer(shape=lifs[name].s_out.shape, buffer=steps)
            lifs[name].s_out.connect(sink.a_in)
            sinks.append(sink)
        t2 = time.perf_counter()
        source.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        t3 = time.perf_counter()
        for j, sink in enumerate(sinks):
            result[f"n{j}"][k] = sink.data.get().T.astype(np.int8)
        source.stop()
        t_build, t_run = t_build + t2 - t1, t_run + t3 - t2
    np.savez(out_path, steps=steps, timing=np.array([t_import, t_build, t_run]), **result)


def main(args: list[str]) -> None:
    if not args or len(args) % 3:
        sys.exit(__doc__)
    t0 = time.perf_counter()
    import lava.lib.dl.netx  # noqa: F401  (timed once for all jobs)

    t_import = time.perf_counter() - t0
    for i in range(0, len(args), 3):
        (run_graph if args[i].endswith(".npz") else run_one)(*args[i:i + 3], t_import)


if __name__ == "__main__":
    main(sys.argv[1:])
