"""``robustness --target xylo`` runs Xylo's own arithmetic (hwsim/xylo.py): noise-free, hwsim's
logits are the ones the host computes from our Xylo emulator (= xylosim, tests/test_export_xylo.py)
on the integers the xylo exporter writes: bursts, shift decays, input events and the output
neurons' integration included."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from snn2hw.export.to_nir import model_to_nir
from snn2hw.export.xylo import emulator
from snn2hw.export.xylo.mapping import build_xylo_net
from snn2hw.hwsim.graph import lower, run
from snn2hw.hwsim.noise import QUANT_PRESETS, NoiseSpec, sample_chips, simulate

from cuba_models import bursting_cuba_model

T, RANGE = 12, (-1.0, 1.0)


def _model(arch: str, hidden: tuple[int, ...], seed: int):
    """A float model (off-grid leaks) whose weights burst on Xylo's grid."""
    return bursting_cuba_model(arch, hidden, seed, T)


def _emulated_logits(model, x: torch.Tensor) -> tuple[np.ndarray, emulator.XyloRun]:
    graph = model_to_nir(model, temporal=True)
    graph.metadata["input_range"] = list(RANGE)
    plan = build_xylo_net(graph)
    r = emulator.run(plan.spec, plan.events(x.numpy(), T))
    return plan.logits(r.v_out[-1], r.i_out[-1], T), r


@pytest.mark.filterwarnings("ignore::snn2hw.errors.Notice")
@pytest.mark.parametrize("arch,hidden", [("srnn", (24,)), ("srnn", (16, 12)), ("mlp", (20,))])
def test_noise_free_xylo_preset_computes_the_emulators_logits(arch, hidden):
    model = _model(arch, hidden, seed=len(hidden) + hidden[0])
    x = torch.rand(T, 64, 3) * 2.4 - 1.2                       # both signs, some clipped
    chip, r = _emulated_logits(model, x)
    assert not r.saturated and (r.hidden_spikes > 1).sum() > 100  # bursts: the rule matters
    net = replace(lower(model), input_range=RANGE)
    params = sample_chips(net, NoiseSpec(quant=QUANT_PRESETS["xylo"]), 1, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got = run(net, x, params).mean(0)[:, 0].numpy()
        plain = run(net, x).mean(0)[:, 0].numpy()
    np.testing.assert_allclose(got, chip, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), chip.argmax(1))
    assert (plain.argmax(1) != chip.argmax(1)).any()             # the float model predicts otherwise here
    # the sweep's accuracy at mismatch 0, thermal 0 is the chip's
    y = torch.as_tensor(chip.argmax(1))
    y[::3] = (y[::3] + 1) % 3
    res = simulate(net, x.transpose(0, 1), y, NoiseSpec(quant=QUANT_PRESETS["xylo"]), chips=2, temporal=True)
    assert res.accuracy == [float((chip.argmax(1) == y.numpy()).mean())] * 2


@pytest.mark.filterwarnings("ignore::snn2hw.errors.Notice")
def test_weight_mismatch_moves_the_xylo_chips_apart():
    model = _model("srnn", (24,), seed=25)
    net = replace(lower(model), input_range=RANGE)
    x, y = torch.rand(64, T, 3) * 2 - 1, torch.randint(0, 3, (64,))
    res = simulate(net, x, y, NoiseSpec(mismatch=0.3, quant=QUANT_PRESETS["xylo"]), chips=4, temporal=True)
    assert len(set(res.accuracy)) > 1
