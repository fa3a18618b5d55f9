"""NeuroBench's metrics (neurobench 2.3.0, ``neurobench/metrics/``), with its conventions,
computed from one counted run and the model's parameters. Names are NeuroBench's.

Static (the torch model): ``Footprint`` (bytes of parameters and buffers),
``ParameterCount``, ``ConnectionSparsity`` (zero weights / weights of the
connection layers, rounded to 4 decimals as NeuroBench does).

Workload (per sample, as NeuroBench divides by the samples seen):

* ``SynapticOperations``: every call of a connection layer (NeuroBench runs an
  SNN one step at a time, so a call is one step over one batch) is ``AC`` if
  all its input values are in {-1, 0, 1}, else ``MAC``; it costs the
  (non-zero input, non-zero weight) pairs that meet, biases excluded:
  ``sum_i nz_i f'_i`` with ``f'`` the fan-out over non-zero weights.
  ``Dense`` counts every (input, weight) pair of every call: ``rows x sum_i f_i``.
* ``ActivationSparsity`` (and ``ActivationSparsityByLayer``): 1 - spikes /
  (neurons x steps) over the spiking layers.
* ``MembraneUpdates``: per neuron, the first step always, then each step where
  the membrane potential u changed (NeuroBench compares snnTorch's ``mem`` before
  and after the step: our u, the potential compared with V_th).
* ``NeuronOperations``: membrane updates (effective) or neuron steps (dense)
  times NeuroBench's operations per update of the neuron type.

Extension point: a connection layer type adds its weights to
``CONNECTION_WEIGHTS`` (ConnectionSparsity) and its synapse kind an entry in
``energy.fan_out``; a neuron type its row in ``NEURON_OPS``. Recurrent layers
(NeuroBench's RNN/LSTM/GRU cells) come in through these.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

from torch import Tensor, nn

# connection layer type -> its weight tensors (NeuroBench: Linear, Conv1d/2d/3d weights, no biases)
CONNECTION_WEIGHTS: dict[type, Callable[[nn.Module], list[Tensor]]] = {
    nn.Linear: lambda m: [m.weight],
    nn.Conv1d: lambda m: [m.weight],
    nn.Conv2d: lambda m: [m.weight],
    nn.Conv3d: lambda m: [m.weight],
}

# neuron type -> reset -> operations per membrane update. Our LIF is snnTorch's Leaky:
# NeuroBench 2.3.0 neuron_operations.neuron_ops_reset_operations["Leaky"] (4 for both resets).
NEURON_OPS: dict[str, dict[str, int]] = {"LIF": {"hard": 4, "soft": 4}}


TensorVersions = list[tuple[Tensor, int]]


def tensor_versions(tensors: Iterable[Tensor]) -> TensorVersions | None:
    """Each tensor with its in-place version counter: a cache key that changes when a
    tensor is replaced or written in place (the entry holds the tensor, so its identity
    cannot be reused). Writes through ``.data`` bypass the counter and are not seen. None
    where a tensor keeps no counter (made in inference mode): such values are not cached."""
    out = []
    for t in tensors:
        if t.is_inference():
            return None
        out.append((t, t._version))
    return out


def unchanged(saved: TensorVersions | None, now: TensorVersions | None) -> bool:
    """Whether ``now`` names the same tensors at the same versions as ``saved``."""
    return (saved is not None and now is not None and len(saved) == len(now)
            and all(t is t0 and v == v0 for (t, v), (t0, v0) in zip(now, saved)))


# model -> (tensor_versions of its parameters and buffers, its static metrics)
_STATIC_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[TensorVersions, dict]]" = weakref.WeakKeyDictionary()


def static_metrics(model: nn.Module) -> dict:
    """``Footprint``, ``ParameterCount`` and ``ConnectionSparsity`` of ``model``, as NeuroBench.

    One walk over the modules finds every parameter and buffer (each once, as
    ``model.parameters()`` does); the metrics are computed again only when one of them
    was replaced or written in place since the last call (``tensor_versions``): a report's
    fixed cost, which matters next to the inference of a small network."""
    params, buffers, connections, seen = [], [], [], set()
    stack, visited = [model], set()
    while stack:  # depth first over the submodules, each once (nn.Module.modules without its prefixes)
        m = stack.pop()
        if id(m) in visited:
            continue
        visited.add(id(m))
        for store, out in ((m._parameters, params), (m._buffers, buffers)):
            for t in store.values():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
        children = [c for c in m._modules.values() if c is not None]
        get = CONNECTION_WEIGHTS.get(type(m))
        if get is not None and not children:
            connections.extend(get(m))
        stack.extend(reversed(children))
    tensors = params + buffers
    versions, hit = tensor_versions(tensors), _STATIC_CACHE.get(model)
    if hit is not None and unchanged(hit[0], versions):
        return dict(hit[1])
    zeros = sum(int((w == 0).sum()) for w in connections)
    total = sum(w.numel() for w in connections)
    metrics = {
        "Footprint": sum(t.numel() * t.element_size() for t in tensors),
        "ParameterCount": sum(p.numel() for p in params),
        "ConnectionSparsity": round(zeros / total, 4) if total else 0.0,
    }
    if versions is not None:
        _STATIC_CACHE[model] = (versions, metrics)
    return dict(metrics)


def workload_metrics(samples: int, synapses: list[dict], neurons: list[dict]) -> dict:
    """NeuroBench's workload metrics per sample from summed counts.

    ``synapses``: per connection layer ``nb_ac``, ``nb_mac`` (effective pairs in
    binary / non-binary calls) and ``nb_dense``; ``neurons``: per spiking layer
    ``layer``, ``neurons``, ``steps`` (neuron steps), ``spikes``,
    ``membrane_updates`` and ``reset``; all summed over ``samples``.
    """
    n = max(samples, 1)
    steps = sum(r["steps"] for r in neurons)
    spikes = sum(r["spikes"] for r in neurons)
    eff = sum(r["membrane_updates"] * NEURON_OPS["LIF"][r["reset"]] for r in neurons)
    dense = sum(r["steps"] * NEURON_OPS["LIF"][r["reset"]] for r in neurons)
    return {
        "SynapticOperations": {"Effective_MACs": sum(r["nb_mac"] for r in synapses) / n,
                               "Effective_ACs": sum(r["nb_ac"] for r in synapses) / n,
                               "Dense": sum(r["nb_dense"] for r in synapses) / n},
        "ActivationSparsity": (steps - spikes) / steps if steps else 0.0,
        "ActivationSparsityByLayer": {r["layer"]: (r["steps"] - r["spikes"]) / r["steps"] if r["steps"] else 0.0
                                      for r in neurons},
        "MembraneUpdates": sum(r["membrane_updates"] for r in neurons) / n,
        "NeuronOperations": {"Effective Neuron Ops": eff / n, "Neuron Dense Ops": dense / n},
    }
