"""Quantisation-aware fine-tuning on a target's integer grid (``train --qat TARGET``).

While attached, every synapse of the network computes with its weights and
bias (tdBN folded in with its running statistics, which stay frozen) put on
the target's grid by straight-through rounding: the forward pass sees exactly
the values the exporter will write, the backward pass treats rounding as the
identity (``ste_round``), so the float ("latent") weights keep learning. The
checkpoint stores the latent weights; the exporter quantises them with the same
function, so the fine-tuned network is what the chip runs.

A target offers QAT by giving its exporter class a ``grid`` attribute (in its
own package, ``snn2hw/export/<target>/``); its instances satisfy
``snn2hw.export.grid.TargetGrid``:

    class TargetGrid(Protocol):
        input_levels: int | None            # direct-encoded input becomes round(x L) / L (None: as is)
        input_range: tuple[float, float]    # ... after clipping to this range
        def quantise(self, site: Site) -> Quantised: ...

``quantise`` receives one synapse (``Site``: folded float weight and bias,
the threshold and leak of the neuron it drives or ``None`` for the readout, and
``input_unit``, the float value of one unit of its input: 1 for spikes, 1/L
for the quantised input, times 1/k^d after avg pooling) and returns the values
on the grid in float units, built with ``ste_round`` so gradients pass.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..export import EXPORTERS
from ..export.grid import TargetGrid
from ..export.qat import QAT_SITES, QATHandle, attach_grid, plan_sites  # noqa: F401  (re-exported)
from ..registry import lookup


def fine_tune_defaults(checkpoint: str) -> dict:
    """The run config stored in ``checkpoint`` as config values, for fine-tuning it
    (``train --init-from CKPT --qat TARGET``): same data, model and method."""
    from ..runs.checkpoint import load_checkpoint

    run = dict(load_checkpoint(checkpoint).get("run_config") or {})
    if not run:
        raise ConfigError(f"{checkpoint}: no run config stored; pass the model flags or --config")
    run.pop("init_from", None)
    return run


def qat_targets() -> list[str]:
    """The targets whose exporter offers an integer grid to fine-tune on."""
    return sorted(name for name, cls in EXPORTERS.items() if getattr(cls, "grid", None) is not None)


def make_grid(target: str) -> TargetGrid:
    """The QAT grid of ``target``, reached through its exporter (one registry for both)."""
    return lookup({t: EXPORTERS[t] for t in qat_targets()}, target, "QAT target").grid()


def attach_qat(model: nn.Module, target: str | None,
               input_range: tuple[float, float] | None = None) -> QATHandle:
    """Make ``model`` compute on ``target``'s grid (module docstring); ``None`` does nothing.

    ``input_range``: the data's (min, max), as the exporter records it in the NIR
    metadata, so that QAT quantises the input exactly as the export will.
    """
    if not target:
        return QATHandle()
    grid = make_grid(target)
    if input_range is not None:
        grid.input_range = (float(input_range[0]), float(input_range[1]))
    return attach_grid(model, grid)
