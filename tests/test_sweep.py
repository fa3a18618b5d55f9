"""`snn2hw sweep`: grid parsing, one row per run, seed statistics, skip and resume."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import snn2hw
import importlib
from snn2hw.cli.main import main
from snn2hw.data.datasets import load_dataset
from snn2hw.errors import ConfigError
from snn2hw.methods import METHODS
from snn2hw.methods.sg import FixedSurrogate
from snn2hw.sweep import parse_grid, plan_jobs, split_values
from markdown_tables import markdown_table_rows

run_model = importlib.import_module("snn2hw.runs.model")

GRID = ["surrogate_param=0.3,2"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> str:
    """A 300/100 digits subset as an npz dataset (fast 1-epoch runs)."""
    d = load_dataset("digits")
    path = tmp_path_factory.mktemp("data") / "digits_small.npz"
    np.savez(path, x=d.x_train[:300].numpy(), y=d.y_train[:300].numpy(),
             x_test=d.x_test[:100].numpy(), y_test=d.y_test[:100].numpy())
    return f"npz:{path}"


def common(subset: str, epochs: int = 1) -> dict:
    return {"dataset": subset, "hidden": [24], "timesteps": 2, "epochs": epochs, "batch_size": 50}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))



def test_parse_grid():
    assert split_values("0.5,1,[8,16], {a: 1, b: 2}") == ["0.5", "1", "[8,16]", "{a: 1, b: 2}"]
    axes = parse_grid(["surrogate=triangle,rectangular", "k_limit=0.1,0.2", "cpng:method_options.x=1,2",
                       "hidden=[32],[64,32]", "surrogate_param+asgl:alpha_init=(0.1,10),(2,0.5)"])
    assert [(a.keys, a.values) for a in axes] == [
        ((("surrogate", None),), (("triangle",), ("rectangular",))),
        ((("method_options.k_limit", None),), (("0.1",), ("0.2",))),
        ((("method_options.x", "cpng"),), (("1",), ("2",))),
        ((("hidden", None),), (("[32]",), ("[64,32]",))),
        ((("surrogate_param", None), ("method_options.alpha_init", "asgl")), (("0.1", "10"), ("2", "0.5")))]
    assert axes[4].settings("asgl", 1) == ["surrogate_param=2", "method_options.alpha_init=0.5"]
    assert axes[4].settings("sg", 1) == ["surrogate_param=2"]
    assert axes[2].applies("cpng") and not axes[2].applies("sg") and axes[4].applies("sg")
    assert axes[1].label == "k_limit"
    for bad in (["seed=1,2"], ["method=sg"], ["lr"], ["lr=0.1,,0.2"], ["lr=1,1"], ["lr=1", "lr=2"],
                ["a:lr=1", "lr=2"], ["lr+epochs=1,2"], ["lr+epochs=(1,2),(3)"], ["lr+a:seed=(1,2)"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)


@dataclass
class ToyOption(FixedSurrogate):
    """sg with one extra option, to test method-scoped grid keys."""

    x: float = 0.0
    name: ClassVar[str] = "toy_option"


def test_plan_jobs_scoped_axes_and_validation(tmp_path, subset, monkeypatch):
    monkeypatch.setitem(METHODS, ToyOption.name, ToyOption)
    axes = parse_grid(["sg:surrogate=triangle,arctan", "lr=0.001,0.01",
                       "surrogate_param+toy_option:x=(0.5,7),(2,9)"])
    jobs = plan_jobs(["sg", "toy_option"], axes, [0, 1, 2], tmp_path, common(subset))
    sg = [j for j in jobs if j.method == "sg"]
    toy = [j for j in jobs if j.method == "toy_option"]
    assert len(sg) == 2 * 2 * 2 * 3 and len(toy) == 2 * 2 * 3
    j = sg[0]
    assert j.point == {"surrogate": "triangle", "lr": "0.001", "surrogate_param": "0.5"} and j.seed == 0
    assert j.config["lr"] == 0.001 and j.config["model"]["surrogate"] == "triangle"
    assert j.config["model"]["surrogate_param"] == 0.5 and j.config["method_options"] == {}
    assert j.name == "sg__surrogate=triangle__lr=0.001__surrogate_param=0.5__seed0"
    t = toy[-1]
    assert t.point == {"lr": "0.01", "surrogate_param": "2"} and t.seed == 2
    assert t.config["method_options"] == {"x": 9} and t.config["model"]["surrogate_param"] == 2
    assert t.config["model"]["surrogate"] == "triangle"  # the sg-only axis leaves it at its default
    with pytest.raises(ConfigError, match="no_such_option"):  # a method option sg lacks
        plan_jobs(["sg"], parse_grid(["no_such_option=1,2"]), [0], tmp_path, common(subset))
    with pytest.raises(ConfigError, match="not in --methods"):
        plan_jobs(["sg"], parse_grid(["cpng:k_limit=0.1"]), [0], tmp_path, common(subset))
    with pytest.raises(ConfigError, match="unknown method"):
        plan_jobs(["nope"], [], [0], tmp_path, common(subset))


def test_sweep_rows_statistics_and_skip(tmp_path, subset):
    out = tmp_path / "sw"
    res = snn2hw.api.sweep(["sg"], GRID, SEEDS, out, options=common(subset), workers=1,
                           progress=False, command="snn2hw sweep (test)")
    assert not res.failed
    rows = read_csv(out / "results.csv")
    assert [(r["surrogate_param"], int(r["seed"]), r["status"]) for r in rows] == [
        ("0.3", 0, "ran"), ("0.3", 1, "ran"), ("2", 0, "ran"), ("2", 1, "ran")]
    summaries = {}
    for r in rows:
        s = json.loads((out / r["run"] / "summary.json").read_text())
        assert float(r["test_accuracy"]) == s["test_accuracy"]
        assert s["seed"] == int(r["seed"]) and s["epochs"] == 1
        cfg = json.loads((out / r["run"] / "job.json").read_text())
        assert cfg["model"]["surrogate_param"] == float(r["surrogate_param"])
        summaries.setdefault(r["surrogate_param"], []).append(s["test_accuracy"])
    # Different seeds train different networks.
    w = [snn2hw.load(out / r["run"])[0].layers[1].weight for r in rows[:2]]
    assert not np.allclose(w[0].detach().numpy(), w[1].detach().numpy())

    md = (out / "results.md").read_text()
    assert "snn2hw sweep (test)" in md and (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    table = {r[1]: r for r in markdown_table_rows(md, "method | surrogate_param")}
    for point, acc in summaries.items():
        cells = table[point]
        assert int(cells[2]) == 2
        assert float(cells[3]) == round(float(np.mean(acc)), 4)
        assert float(cells[4]) == round(float(np.std(acc, ddof=1)), 4)
        assert float(cells[5]) == round(min(acc), 4) and float(cells[6]) == round(max(acc), 4)
    means = {p: np.mean(a) for p, a in summaries.items()}
    robust = markdown_table_rows(md, "method | points")[0]
    assert float(robust[6]) == round(100 * (max(means.values()) - min(means.values())), 1)

    stamps = {r["run"]: (out / r["run"] / "summary.json").stat().st_mtime_ns for r in rows}
    again = snn2hw.api.sweep(["sg"], GRID, SEEDS, out, options=common(subset), workers=1, progress=False)
    assert [r["status"] for r in again.rows] == ["skipped"] * 4
    assert all((out / n / "summary.json").stat().st_mtime_ns == t for n, t in stamps.items())
    assert [r["test_accuracy"] for r in again.rows] == [float(r["test_accuracy"]) for r in rows]
    # The same directory with another config is refused, not silently mixed.
    (out / rows[0]["run"] / "summary.json").unlink()
    other = snn2hw.api.sweep(["sg"], GRID, SEEDS, out, options=common(subset) | {"lr": 0.01},
                             workers=1, progress=False)
    assert other.rows[0]["status"] == "failed" and "job.json differs" in other.rows[0]["error"]


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, subset, monkeypatch):
    grid = ["surrogate_param=1"]
    ref = snn2hw.api.sweep(["sg"], grid, [0], tmp_path / "ref", options=common(subset, 2),
                           workers=1, progress=False)
    calls = {"n": 0}
    real = run_model.evaluate_model

    def stop_in_epoch_two(*a, **k):  # dies after epoch 1's checkpoint, before epoch 2's
        calls["n"] += 1
        if calls["n"] == 3:   # per epoch: validation, then test
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_model, "evaluate_model", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        snn2hw.api.sweep(["sg"], grid, [0], tmp_path / "cut", options=common(subset, 2),
                         workers=1, progress=False)
    monkeypatch.setattr(run_model, "evaluate_model", real)
    run = tmp_path / "cut" / ref.rows[0]["run"]
    assert (run / "last.pt").exists() and not (run / "summary.json").exists()
    res = snn2hw.api.sweep(["sg"], grid, [0], tmp_path / "cut", options=common(subset, 2),
                           workers=1, progress=False)
    assert res.rows[0]["status"] == "resumed"
    assert res.rows[0]["test_accuracy"] == ref.rows[0]["test_accuracy"]
    assert res.rows[0]["train_loss"] == pytest.approx(ref.rows[0]["train_loss"], rel=1e-6)


def test_cli_parallel_workers_match_in_process(tmp_path, subset, capsys):
    """Two worker processes give the same numbers as the in-process runs."""
    args = ["sweep", "--methods", "sg", "--param-grid", *GRID, "--seeds", "0", "--dataset", subset,
            "--hidden", "24", "--timesteps", "2", "--epochs", "1", "--batch-size", "50",
            "--threads", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "par"), "--workers", "2"]) == 0
    assert "2 runs, 0 failed" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "seq"), "--workers", "1"]) == 0
    par, seq = read_csv(tmp_path / "par" / "results.csv"), read_csv(tmp_path / "seq" / "results.csv")
    assert [r["test_accuracy"] for r in par] == [r["test_accuracy"] for r in seq]
    assert [r["train_loss"] for r in par] == [r["train_loss"] for r in seq]
    md = (tmp_path / "par" / "results.md").read_text()
    assert "snn2hw sweep --methods sg --param-grid surrogate_param=0.3,2 --seeds 0" in md
    assert main(["sweep", "--methods", "sg", "--param-grid", "seed=1,2", "--out", str(tmp_path / "x")]) == 2
