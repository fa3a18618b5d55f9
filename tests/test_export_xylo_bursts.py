"""When a float model fails Xylo's check because Xylo bursts (up to 31 spikes per step) and
saturates where the float neuron fires once, the failure says so and names the fix (--qat xylo),
and a notice warns as soon as the emulator shows bursts; a model checked on the grid it was
fine-tuned on (its forward has Xylo's rule) gets neither."""

from __future__ import annotations

import warnings

import pytest
import torch

from snn2hw.errors import Notice
from snn2hw.export.api import Source, _reference_as_trained
from snn2hw.export.base import Samples
from snn2hw.export.reference import gate
from snn2hw.export.to_nir import model_to_nir
from snn2hw.export.xylo import XyloExporter

from cuba_models import bursting_cuba_model

T, RANGE = 12, (-1.0, 1.0)


def _bursting_srnn():
    """A float srnn (seeded) whose weights, once on Xylo's grid, burst."""
    return bursting_cuba_model("srnn", (24,), 25, T, alpha=0.5, lam=0.875, input_gain=2.5)


def _checked(tmp_path, qat: str | None):
    """The gate's verdict on the Xylo export, the reference as ``export_model`` builds it (the
    float forward, or the forward on the grid of a model fine-tuned with ``--qat xylo``), and the
    notices ``verify`` raised."""
    model = _bursting_srnn()
    graph = model_to_nir(model, temporal=True)
    graph.metadata["input_range"] = list(RANGE)
    exporter = XyloExporter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)       # the leaks' rounding notice of check()
        plan = exporter.check(graph)
    x = torch.rand(T, 64, 3) * 2.4 - 1.2
    samples = Samples(x, torch.zeros(64, dtype=torch.long), T, temporal=True)
    samples.reference = _reference_as_trained(Source(graph, model, qat=qat), exporter, "xylo", samples)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", Notice)
        v = gate(exporter.verify(plan, tmp_path, samples), exporter.min_agreement, allow_stand_in=True)
    return v, [str(w.message) for w in seen if issubclass(w.category, Notice)]


def test_a_float_model_failing_on_bursts_is_told_to_retrain_with_qat_xylo(tmp_path):
    v, notices = _checked(tmp_path, qat=None)
    bursts = sum(v.details["multi_spike_events"].values())
    assert bursts > 100 and not v.passed
    last = v.failures[-1]
    assert last.startswith("Xylo fires up to 31 spikes per step") and last.endswith("--qat xylo")
    assert f"measured: {bursts} burst events, 0 16-bit saturations" in last
    assert len(v.failures) >= 2                     # after the gate's own agreement failures
    assert [n for n in notices if "--qat xylo" in n and f"{bursts} burst events" in n]


def test_a_model_fine_tuned_with_qat_xylo_passes_without_the_burst_diagnosis(tmp_path):
    v, notices = _checked(tmp_path, qat="xylo")
    assert sum(v.details["multi_spike_events"].values()) > 100      # the same bursts, now trained for
    assert v.passed and v.failures == [] and "diagnosis" not in v.details
    assert list(v.spike_agreement.values()) == [1.0] and v.output_agreement == 1.0
    assert not [n for n in notices if "burst" in n]


def test_the_diagnosis_is_not_a_failure_where_the_check_passes(tmp_path):
    v, notices = _checked(tmp_path, qat=None)
    from snn2hw.export.base import MinAgreement
    v.failures, v.passed = [], False
    assert gate(v, MinAgreement(0.0, 0.0), allow_stand_in=True).passed
    assert notices                                  # the notice still told the user
