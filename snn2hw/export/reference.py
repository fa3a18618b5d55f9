"""The float reference every exporter's verify() compares against, the comparison, and
the batched run every verify uses.

``export_model`` runs the trained model (exact Heaviside step, eval mode) on the
held-out samples once and attaches the result to ``Samples.reference``; an
exporter runs its artefact (``run_batched`` when it goes batch by batch) and calls
``compare`` to fill ``Verification``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .base import Samples, Verification


# What a batched function returns per output: a tensor, or a tensor per layer name
Batched = Tensor | dict[str, Tensor]


def run_batched(fn: Callable[[Tensor], Sequence[Batched]], x: Tensor, axis: int, batch_size: int,
                cat_axes: Sequence[int]) -> tuple[Batched, ...]:
    """``fn`` over consecutive slices of at most ``batch_size`` samples of ``x`` (the sample
    axis is ``axis``), its outputs joined back: output ``j`` (a tensor, or a dict of tensors
    joined key by key) is concatenated along ``cat_axes[j]`` (e.g. 1 for time-major spikes
    (T, B, ...), 0 for logits (B, K)). Keys come from the first batch."""
    n = x.shape[axis]
    parts = [fn(x.narrow(axis, i, min(batch_size, n - i))) for i in range(0, n, batch_size)]
    joined: list[Batched] = []
    for j, dim in enumerate(cat_axes):
        first = parts[0][j]
        if isinstance(first, dict):
            joined.append({k: torch.cat([p[j][k] for p in parts], dim) for k in first})
        else:
            joined.append(torch.cat([p[j] for p in parts], dim))
    return tuple(joined)


@dataclass
class Reference:
    """Spikes per NIR neuron node (T, N, ...) and the readout (N, K) of the float model, and
    what computed them (``details.reference`` in verification.json)."""

    spikes: dict[str, Tensor]
    output: Tensor
    source: str = "trained model"


def run_reference(model: torch.nn.Module, samples: Samples, batch_size: int = 256) -> Reference:
    """Run ``model`` (a trained SpikingNetwork or a NIRNetwork) on ``samples.x`` in batches."""
    from .from_nir import node_spikes

    spikes, output = run_batched(lambda xb: node_spikes(model, xb), samples.x,
                                 1 if samples.temporal else 0, batch_size, cat_axes=(1, 0))
    # a NIRNetwork is our own reading of a graph, not an independent reference
    return Reference(spikes, output, "snn2hw from_nir" if hasattr(model, "node_names") else "trained model")


def compare(target: str, reference: Reference, spikes: dict[str, Tensor], output: Tensor,
            labels: Tensor, details: dict[str, Any] | None = None) -> Verification:
    """Verification of a target's ``spikes`` (per node, (T, N, ...)) and readout (N, K).

    spike_agreement[node] = fraction of equal spike values over T x N x neurons (nodes the
    target did not report are left out); output_agreement = fraction of samples whose
    predicted class equals the reference's; accuracies against ``labels``.
    """
    agreement, counts = {}, {}
    for name, ref in reference.spikes.items():
        if name not in spikes:
            continue
        got = spikes[name].to(ref.dtype).reshape(ref.shape)
        agreement[name] = float((got == ref).float().mean())
        counts[name] = {"reference": int(ref.sum()), "target": int(got.sum()),
                        "mismatches": int((got != ref).sum())}
    pred_ref, pred = reference.output.argmax(1), output.argmax(1)
    n = max(int(len(labels)), 1)
    info = {"spike_counts": counts,
            "max_abs_output_difference": float((output.float() - reference.output.float()).abs().max())}
    info["reference"] = reference.source
    info.update(details or {})
    return Verification(
        target=target, samples=int(len(labels)), spike_agreement=agreement,
        output_agreement=int((pred == pred_ref).sum()) / n,
        accuracy_reference=int((pred_ref == labels).sum()) / n,
        accuracy_target=int((pred == labels).sum()) / n, details=info)
