"""The float reference every exporter's verify() compares against, and the comparison.

``export_model`` runs the trained model (exact Heaviside step, eval mode) on the
held-out samples once and attaches the result to ``Samples.reference``; an
exporter runs its artefact and calls ``compare`` to fill ``Verification``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import Samples, Verification


@dataclass
class Reference:
    """Spikes per NIR neuron node (T, N, ...) and the readout (N, K) of the float model."""

    spikes: dict[str, Tensor]
    output: Tensor


def run_reference(model: torch.nn.Module, samples: Samples, batch_size: int = 256) -> Reference:
    """Run ``model`` (a trained SpikingNetwork or a NIRNetwork) on ``samples.x`` in batches."""
    from .from_nir import node_spikes

    axis = 1 if samples.temporal else 0
    n = samples.x.shape[axis]
    parts: list[tuple[dict[str, Tensor], Tensor]] = []
    for i in range(0, n, batch_size):
        parts.append(node_spikes(model, samples.x.narrow(axis, i, min(batch_size, n - i))))
    spikes = {k: torch.cat([p[0][k] for p in parts], 1) for k in parts[0][0]}
    return Reference(spikes, torch.cat([p[1] for p in parts], 0))


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
    info.update(details or {})
    return Verification(
        target=target, samples=int(len(labels)), spike_agreement=agreement,
        output_agreement=int((pred == pred_ref).sum()) / n,
        accuracy_reference=int((pred_ref == labels).sum()) / n,
        accuracy_target=int((pred == labels).sum()) / n, details=info)
