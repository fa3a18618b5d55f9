"""The float reference every exporter's verify() compares against, the comparison, the
gate that judges it, and the batched run every verify uses.

``export_model`` runs the trained model (exact Heaviside step, eval mode) on the
held-out samples once and attaches the result to ``Samples.reference``; an
exporter runs its artefact (``run_batched`` when it goes batch by batch), calls
``compare`` to fill ``Verification`` and ``must_equal`` where its runtime must equal
our model of it; ``export_model`` then calls ``gate`` (docs/export.md "The gate").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import MinAgreement, Samples, Verification


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


def _activity_failure(name: str, ref: Tensor, n: int) -> str | None:
    """A layer the float model leaves silent or saturated on the check samples: equal spikes
    there would prove nothing (a network that never spikes agrees with anything silent)."""
    if ref.numel() and not bool(ref.any()):
        return (f"{name}: the float model's layer is silent on the {n} check samples (0 spikes), so "
                f"agreement there proves nothing; check on more samples (--samples) or fix the network "
                f"(input range, weights, v_th)")
    if ref.numel() and bool((ref != 0).all()):
        return (f"{name}: the float model's layer is saturated on the {n} check samples (every neuron "
                f"spikes at every step), so agreement there proves nothing; fix the network (v_th, weights)")
    return None


def _same_layout(got: Tensor, ref: Tensor) -> bool:
    """Same (T, N) and the same neurons per step and sample; the target may shape its neurons
    its own way (Speck's linear layer is a 1x1 conv: (T, N, C, 1, 1) for (T, N, C))."""
    return tuple(got.shape[:2]) == tuple(ref.shape[:2]) and got.numel() == ref.numel()


def compare(target: str, reference: Reference, spikes: dict[str, Tensor], output: Tensor,
            labels: Tensor, details: dict[str, Any] | None = None) -> Verification:
    """Verification of a target's ``spikes`` (per node, (T, N, ...)) and readout (N, K).

    spike_agreement[node] = fraction of equal spike values over T x N x neurons;
    output_agreement = fraction of samples whose predicted class equals the reference's;
    accuracies against ``labels``. Nothing is broadcast: a node the target did not report,
    or reported with another (T, N) or number of neurons, is left out of spike_agreement
    with a failure; a readout that is not (N, K) like the reference's, for N labels, gives
    agreement and target accuracy 0 with a failure. A layer the reference leaves silent or
    saturated adds a failure. ``passed`` is left for ``gate``.
    """
    n = int(len(labels))
    failures: list[str] = []
    agreement, counts = {}, {}
    for name, ref in reference.spikes.items():
        failures += [f] if (f := _activity_failure(name, ref, n)) else []
        if name not in spikes:
            failures.append(f"{name}: the target reported no spikes for this layer, so it was not "
                            f"compared; the {target} exporter's verify must return every neuron layer (a bug: report it)")
            continue
        got = spikes[name]
        if not _same_layout(got, ref):
            failures.append(f"{name}: the target's spikes have shape {tuple(got.shape)}, the float model's "
                            f"{tuple(ref.shape)} (T, samples, ...), so they were not compared; "
                            f"the {target} exporter's verify returns the wrong layout (a bug: report it)")
            continue
        got = got.to(ref.dtype).reshape(ref.shape)
        agreement[name] = float((got == ref).float().mean())
        counts[name] = {"reference": int(ref.sum()), "target": int(got.sum()),
                        "mismatches": int((got != ref).sum())}
    info: dict[str, Any] = {"spike_counts": counts}
    expected = (n, reference.output.shape[-1])
    accuracy_reference = output_agreement = accuracy_target = 0.0
    if labels.dim() != 1 or tuple(reference.output.shape) != expected:
        failures.append(f"readout: the float model's output has shape {tuple(reference.output.shape)} "
                        f"for labels of shape {tuple(labels.shape)}, expected (samples, classes) for one "
                        f"label per sample, so no class was compared (a bug: report it)")
    elif tuple(output.shape) != expected:
        failures.append(f"readout: the target's output has shape {tuple(output.shape)}, expected "
                        f"{expected} (samples, classes) like the float model's, so no class was compared; "
                        f"the {target} exporter's verify returns the wrong layout (a bug: report it)")
    if labels.dim() == 1 and tuple(reference.output.shape) == expected:
        pred_ref = reference.output.argmax(1)
        accuracy_reference = int((pred_ref == labels).sum()) / max(n, 1)
        if tuple(output.shape) == expected:
            pred = output.argmax(1)
            output_agreement = int((pred == pred_ref).sum()) / max(n, 1)
            accuracy_target = int((pred == labels).sum()) / max(n, 1)
            info["max_abs_output_difference"] = float((output.float() - reference.output.float()).abs().max())
    if "max_abs_output_difference" not in info:
        info["readout_compared"] = False   # the failure above says why; no class agreement to judge
    info["reference"] = reference.source
    info.update(details or {})
    return Verification(
        target=target, samples=n, spike_agreement=agreement, output_agreement=output_agreement,
        accuracy_reference=accuracy_reference, accuracy_target=accuracy_target, details=info,
        failures=failures)


def must_equal(what: str, got: Mapping[str, Any], want: Mapping[str, Any], fix: str
               ) -> tuple[dict[str, int], list[str]]:
    """Spike-for-spike equality of two runs that compute the same numbers (Lava and our integer
    emulator; onnxruntime and the torch rebuild): the mismatches per node of ``want`` and one
    failure line per node that differs, has another shape (never broadcast) or is missing.
    ``what`` names the two ("Lava and our emulator"), ``fix`` says what to do."""
    counts: dict[str, int] = {}
    failures: list[str] = []
    for name, b in want.items():
        if name not in got:
            failures.append(f"{name}: {what}: the first gave no spikes for this layer; {fix}")
            continue
        a, b = np.asarray(got[name]), np.asarray(b)
        if a.shape != b.shape:
            failures.append(f"{name}: {what} give spikes of shapes {a.shape} and {b.shape}, "
                            f"so they were not compared; {fix}")
            continue
        counts[name] = int((a != b).sum())
        if counts[name]:
            failures.append(f"{name}: {what} disagree on {counts[name]} of {a.size} spike values "
                            f"(must be 0); {fix}")
    return counts, failures


def gate(v: Verification, floor: MinAgreement, allow_stand_in: bool = False) -> Verification:
    """Judge ``v`` once: add a failure when a stand-in ran instead of the target's runtime
    (``v.stand_in``) unless ``allow_stand_in``, when the class agreement is below
    ``floor.classes`` and for each layer whose spike agreement is below ``floor.spikes``;
    where any failed, the target's reading of why (``v.details["diagnosis"]``) last; then
    ``passed`` = no failures. Returns ``v``."""
    if v.stand_in and not allow_stand_in:
        v.failures.append(f"the {v.target} runtime did not run ({v.stand_in}), so the numbers are a "
                          f"stand-in's, not the target's; set the runtime up (scripts/setup) or accept "
                          f"the stand-in with --allow-emulator")
    if v.details.get("readout_compared", True) and v.output_agreement < floor.classes:
        v.failures.append(f"class agreement {v.output_agreement:.4f} < {floor.classes:g} (--min-agreement): "
                          f"the {v.target} artefact predicts another class than the float model on "
                          f"{round((1 - v.output_agreement) * v.samples)} of {v.samples} samples; fine-tune "
                          f"for the target (--qat) or accept it with a lower --min-agreement")
    for name, a in v.spike_agreement.items():
        if a < floor.spikes:
            v.failures.append(f"{name}: spike agreement {a:.6f} < {floor.spikes:g} (--min-agreement); "
                              f"fine-tune for the target (--qat) or accept it with a lower --min-agreement")
    if v.failures and v.details.get("diagnosis"):   # the target's own reading of why (e.g. Xylo's bursts)
        v.failures.append(str(v.details["diagnosis"]))
    v.passed = not v.failures
    return v
