"""The robustness sweep's steps: conditions per level, one simulation per distinct
condition, and its rendering kept out of hwsim."""

from __future__ import annotations

import ast
from dataclasses import replace
import importlib
from pathlib import Path

import pytest
import torch

from snn2hw.hwsim.noise import ChipResult, NoiseSpec, QuantSpec
from snn2hw.reports.hwsim_report import render_robustness_markdown

# the module, not the function the package re-exports under the same name
rob = importlib.import_module("snn2hw.hwsim.robustness")
ROOT = Path(__file__).resolve().parents[1]


def test_level_conditions_set_one_axis_on_the_base():
    base = NoiseSpec(mismatch_params=("weights",), quant=QuantSpec("q", weight_bits=4))
    axes = rob.noise_levels(mismatch=[0, 0.1], thermal=(), spike_loss=[0.3], dead=[])
    assert axes == {"mismatch": [0.0, 0.1], "spike_loss": [0.3]}
    conds = rob.level_conditions(base, axes)
    assert conds[("mismatch", 0.1)] == NoiseSpec(mismatch=0.1, mismatch_params=("weights",), quant=base.quant)
    assert conds[("spike_loss", 0.3)] == NoiseSpec(spike_loss=0.3, mismatch_params=("weights",), quant=base.quant)
    assert conds[("mismatch", 0.0)] == base


def test_each_distinct_condition_is_simulated_once_per_model(monkeypatch):
    calls = []

    def fake_simulate(net, x, y, spec, chips, seed, temporal=False):
        calls.append((net, spec, chips, seed))
        return ChipResult([float(len(calls))] * chips)

    monkeypatch.setattr(rob, "simulate", fake_simulate)
    models = [rob.ModelUnderTest(f"m{i}", "p", {}, "digits", None, f"net{i}", torch.zeros(1), torch.zeros(1),
                                 False) for i in range(2)]
    conds = rob.level_conditions(NoiseSpec(), {"mismatch": [0, 0.2], "thermal": [0, 0.5]})
    results = rob.simulate_conditions(models, list(conds.values()), chips=3, seed=7, progress=False)
    # level 0 of both axes is one condition: 3 distinct conditions x 2 models
    assert len(calls) == 6 and len(results) == 6
    assert {(net, spec) for net, spec, _, _ in calls} == {(f"net{i}", c) for i in range(2) for c in conds.values()}
    assert all(chips == 3 and seed == 7 for _, _, chips, seed in calls)
    assert results[(1, conds[("mismatch", 0)])] is results[(1, conds[("thermal", 0)])]
    row = rob.level_row(0.2, ChipResult([0.5, 0.7, 0.6]))
    assert row["min"] == 0.5 and row["max"] == 0.7 and row["chips"] == [0.5, 0.7, 0.6]
    assert abs(row["mean"] - 0.6) < 1e-6


def test_hwsim_never_imports_reports():
    """hwsim returns data; rendering lives in reports/, which sits above it."""
    for path in (ROOT / "snn2hw" / "hwsim").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                assert "reports" not in name.split("."), f"{path.name} imports {name}"
            elif isinstance(node, ast.Import):
                assert not any("reports" in a.name.split(".") for a in node.names), path.name


def test_robustness_markdown_shows_every_level_and_only_written_images():
    report = {
        "command": "snn2hw robustness x", "versions": {"snn2hw": "0", "torch": "2"},
        "settings": {"chips": 2, "seed": 0, "mismatch_params": ["weights"], "quantisation": None,
                     "levels": {"mismatch": [0.0, 0.25], "dead": [0.5]},
                     "thermal_unit": "u", "mismatch_model": "m"},
        "models": [{"label": "a (sg)", "sha256": "f" * 64, "dataset": "digits", "samples": 10,
                    "timesteps": 4, "float_accuracy": 0.9,
                    "sweeps": {"mismatch": [rob.level_row(0.0, ChipResult([0.9, 0.9])),
                                            rob.level_row(0.25, ChipResult([0.5, 0.7]))],
                               "dead": [rob.level_row(0.5, ChipResult([0.1, 0.3]))]}}],
        "wall_time_s": 1.0, "seconds_per_chip": 0.25}
    md = render_robustness_markdown(report, ["mismatch.png"])
    assert md.startswith("# Hardware-noise robustness\n\nCommand: `snn2hw robustness x`  \n"
                         "Versions: snn2hw 0, torch 2  \n")
    assert "| model | 0 | 0.25 |" in md and "| model | 0.5 |" in md
    assert "| a (sg) | 90.0 ± 0.0 [90.0, 90.0] | 60.0 ± 10.0 [50.0, 70.0] |" in md
    assert "| a (sg) | 20.0 ± 10.0 [10.0, 30.0] |" in md
    assert "![accuracy vs mismatch](mismatch.png)" in md and "dead.png" not in md
    assert "Quantisation: none (float)." in md and "(250.0 ms per simulated chip)" in md


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from snn2hw.train.config import build_config
    from snn2hw.train.trainer import train

    out = tmp_path_factory.mktemp("tiny")
    train(build_config({"dataset": "digits", "epochs": 1, "hidden": [16], "seed": 0}), out, progress=False)
    return str(out)


def test_target_combines_its_quantisation_with_mismatch_and_thermal(tiny_ckpt):
    """Each (mismatch, thermal) cell equals the hand-built condition: the target's preset
    (here with 3-bit weights, so that the grid shows) and both noises at once."""
    from snn2hw.hwsim import lower, simulate
    from snn2hw.hwsim.energy import energy
    from snn2hw.hwsim.noise import QUANT_PRESETS
    from snn2hw.data.datasets import load_dataset
    from snn2hw.runs.model import load_model

    report = rob.robustness([tiny_ckpt], mismatch=[0, 0.3], thermal=[0, 0.5], chips=3, seed=2, samples=60,
                            weight_bits=3, target="xylo", progress=False)
    model, _ = load_model(tiny_ckpt)
    net, data = lower(model), load_dataset("digits")
    x, y = data.x_test[:60], data.y_test[:60]
    q = replace(QUANT_PRESETS["xylo"], weight_bits=3)
    cells = {(r["mismatch"], r["thermal"]): r for r in report["models"][0]["target"]["combined"]}
    assert set(cells) == {(0.0, 0.0), (0.0, 0.5), (0.3, 0.0), (0.3, 0.5)}
    for (m, t), row in cells.items():
        assert row["chips"] == simulate(net, x, y, NoiseSpec(mismatch=m, thermal=t, quant=q), 3, 2).accuracy
    # the composition is not one of its parts
    assert cells[(0.0, 0.0)]["chips"] != simulate(net, x, y, NoiseSpec(), 3, 2).accuracy
    assert cells[(0.3, 0.5)]["chips"] != simulate(net, x, y, NoiseSpec(mismatch=0.3, thermal=0.5), 3, 2).accuracy
    # every single-axis sweep runs on the target's grid too
    assert report["settings"]["quantisation"]["weight_bits"] == 3 and report["settings"]["target"] == "xylo"
    e = report["models"][0]["target"]["energy"]
    ref = energy(tiny_ckpt, "45nm-fp32", samples=60)["total"]
    assert e["ac"] == ref["ac"] and e["mac"] == ref["mac"]
    assert e["profile"] is None and e["snn_pj"] is None and "Xylo" in e["note"]  # no verified pJ/SOP
    md = render_robustness_markdown(report)
    assert "## On xylo" in md and "energy not given" in md


def test_target_energy_uses_the_targets_verified_profile(tiny_ckpt):
    from snn2hw.hwsim.energy import energy

    report = rob.robustness([tiny_ckpt], mismatch=[0], thermal=[0], chips=1, samples=30, target="loihi",
                            progress=False)
    e = report["models"][0]["target"]["energy"]
    assert e["profile"] == "loihi" and e["snn_pj"] == energy(tiny_ckpt, "loihi", samples=30)["total"]["snn_pj"]
    assert report["settings"]["quantisation"]["name"] == "loihi"


def test_target_and_another_quantisation_are_refused_before_loading():
    from snn2hw.errors import ConfigError

    with pytest.raises(ConfigError, match="drop --quant speck"):
        rob.robustness(["/nonexistent"], target="loihi", quant="speck")
    with pytest.raises(ConfigError, match="truenorth"):
        rob.robustness(["/nonexistent"], target="truenorth")
