"""Hand-built recurrent CUBA NIR graphs, as snnTorch writes RSynaptic (Input -> Affine -> CubaLIF
<-> Affine w_rec -> Affine -> Output), and their float reference computed here from the
equations (independent of the exporter):

    c[t] = W x[t] + W_rec s[t-1] + b,  i[t] = alpha i[t-1] + c[t],
    u[t] = lam (u[t-1] - V_th s[t-1]) + i[t],  s[t] = u[t] > V_th,  logits = mean_t(W_out s[t] + b_out)
"""

from __future__ import annotations

import nir
import numpy as np
import torch

from snn2hw.export.base import Samples
from snn2hw.export.reference import Reference

DT = 1e-4


def cuba_node(n: int, alpha: float, lam: float, v_th: float, reset: str = "subtract") -> nir.CubaLIF:
    """A CubaLIF whose Euler step with dt = 1e-4 is the CUBA update above (snnTorch's mapping)."""
    ones = np.ones(n)
    tau_syn, tau_mem = DT / (1 - alpha) * ones, DT / (1 - lam) * ones
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / DT, v_leak=0 * ones,
                       v_threshold=v_th * ones, w_in=tau_syn / DT, metadata={"reset": reset})


def cuba_graph(rng: np.random.Generator, sizes=(4, 12), classes: int = 3, alpha: float = 0.75,
               lam: float = 0.5, v_th: float = 1.0, recurrent: bool = True, bias: bool = True,
               timesteps: int = 6, scale: float = 0.6, input_range=(0.0, 1.0), reset: str = "subtract",
               temporal: bool = False) -> nir.NIRGraph:
    """``sizes`` = (inputs, hidden layer sizes...); one CubaLIF layer per hidden size."""
    nodes = {"input": nir.Input(input_type={"input": np.array([sizes[0]])})}
    edges, prev = [], "input"
    for k, (n_in, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(0, scale, (n, n_in))
        b = rng.normal(0, 0.2, n) if bias else np.zeros(n)
        nodes[f"fc{k}"] = nir.Affine(weight=w, bias=b)
        nodes[f"lif{k}"] = cuba_node(n, alpha, lam, v_th, reset)
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        if recurrent:
            nodes[f"rec{k}"] = nir.Linear(weight=rng.normal(0, scale / 2, (n, n)))
            edges += [(f"lif{k}", f"rec{k}"), (f"rec{k}", f"lif{k}")]
        prev = f"lif{k}"
    nodes["out"] = nir.Affine(weight=rng.normal(0, 0.5, (classes, sizes[-1])), bias=rng.normal(0, 0.1, classes))
    nodes["output"] = nir.Output(output_type={"output": np.array([classes])})
    edges += [(prev, "out"), ("out", "output")]
    meta = {"dt": DT, "timesteps": timesteps, "input_range": list(input_range),
            "input_encoding": "temporal" if temporal else "direct"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def float_reference(graph: nir.NIRGraph, x: np.ndarray, multi_spike: bool = False) -> Reference:
    """The equations of the module docstring on ``x`` ((N, F) direct or (T, N, F) temporal).

    ``multi_spike``: Xylo's spike rule instead, in float: while ``u > V_th`` (at most 31 times)
    one more spike and ``u -= V_th``; s[t] is the count (what the chip's integers approximate)."""
    meta = graph.metadata
    T = int(meta["timesteps"])
    x = np.asarray(x, np.float64)
    seq = x if meta.get("input_encoding") == "temporal" else np.broadcast_to(x, (T,) + x.shape)
    nodes, k, spikes = graph.nodes, 0, {}
    while f"fc{k}" in nodes:
        fc, lif = nodes[f"fc{k}"], nodes[f"lif{k}"]
        alpha = 1 - DT / np.asarray(lif.tau_syn)
        lam = 1 - DT / np.asarray(lif.tau_mem)
        v_th = np.asarray(lif.v_threshold)
        w_rec = np.asarray(nodes[f"rec{k}"].weight) if f"rec{k}" in nodes else None
        n = v_th.shape[0]
        i = u = s = np.zeros((seq.shape[1], n))
        out = []
        for t in range(T):
            c = seq[t] @ np.asarray(fc.weight).T + np.asarray(fc.bias)
            if w_rec is not None:
                c = c + s @ w_rec.T
            i = alpha * i + c
            if multi_spike:
                u = lam * u + i
                s = np.zeros_like(u)
                for _ in range(31):
                    fire = u > v_th
                    s, u = s + fire, u - v_th * fire
                out.append(s)
                continue
            u = lam * (u - v_th * s) + i
            s = (u > v_th).astype(np.float64)
            out.append(s)
        seq = np.stack(out)
        spikes[f"lif{k}"] = torch.from_numpy(seq.astype(np.float32))
        k += 1
    ro = nodes["out"]
    logits = (seq @ np.asarray(ro.weight).T + np.asarray(ro.bias)).mean(0)
    return Reference(spikes, torch.from_numpy(logits))


def samples_for(graph: nir.NIRGraph, x: np.ndarray, y: np.ndarray, multi_spike: bool = False) -> Samples:
    s = Samples(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), int(graph.metadata["timesteps"]),
                graph.metadata.get("input_encoding") == "temporal")
    s.reference = float_reference(graph, s.x.numpy(), multi_spike)
    return s
