"""The robustness and energy verbs end to end on a tiny trained digits model."""

from __future__ import annotations

import hashlib
import json

import pytest

from snn2hw.cli.main import main
from snn2hw.hwsim import energy, robustness
from snn2hw.train.config import build_config
from snn2hw.train.trainer import train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(build_config({"dataset": "digits", "epochs": 2, "hidden": [32], "seed": 0}), out, progress=False)
    return out


def test_robustness_cli_writes_reports(ckpt, tmp_path, capsys):
    out = tmp_path / "rob"
    rc = main(["robustness", str(ckpt), str(ckpt), "--mismatch", "0,0.3", "--thermal", "0,0.5",
               "--dead", "0,0.5", "--chips", "3", "--samples", "120", "--out", str(out), "--no-progress"])
    assert rc == 0
    for name in ("report.json", "report.md", "mismatch.png", "thermal.png", "dead.png"):
        assert (out / name).stat().st_size > 0
    rep = json.loads((out / "report.json").read_text())
    sha = hashlib.sha256((ckpt / "best.pt").read_bytes()).hexdigest()
    assert [m["sha256"] for m in rep["models"]] == [sha, sha]
    assert rep["command"].startswith("snn2hw robustness") and rep["versions"]["torch"]
    m = rep["models"][0]
    assert len({mm["label"] for mm in rep["models"]}) == 2
    for axis in ("mismatch", "thermal", "dead"):
        level0 = m["sweeps"][axis][0]
        assert level0["chips"] == [m["float_accuracy"]] * 3  # noise-free chips = the model
        assert len(m["sweeps"][axis][1]["chips"]) == 3
    # half the neurons dead must cost accuracy on every chip
    assert m["sweeps"]["dead"][1]["max"] < m["float_accuracy"]
    assert sha[:16] in (out / "report.md").read_text()
    assert "report in" in capsys.readouterr().out


def test_robustness_quantisation_and_bad_input(ckpt):
    rep = robustness([ckpt], mismatch=(0,), thermal=(), chips=2, quant="loihi", samples=60, progress=False)
    assert rep["settings"]["quantisation"]["weight_bits"] == 8
    acc = rep["models"][0]["sweeps"]["mismatch"][0]
    assert abs(acc["mean"] - rep["models"][0]["float_accuracy"]) < 0.1
    assert main(["robustness", str(ckpt), "--quant", "loihi", "--weight-bits", "1", "--out", "x"]) == 2


def test_energy_cli_json_and_table(ckpt, capsys):
    assert main(["energy", str(ckpt), "--json", "--samples", "50"]) == 0
    rep = json.loads(capsys.readouterr().out)
    tot = rep["total"]
    assert tot["ratio"] == pytest.approx(tot["snn_pj"] / tot["ann_pj"])
    assert tot["ann_mac"] == 64 * 32 + 32 * 10 and rep["samples"] == 50
    assert rep["sha256"] == hashlib.sha256((ckpt / "best.pt").read_bytes()).hexdigest()
    assert main(["energy", str(ckpt), "--profile", "loihi", "--samples", "50"]) == 0
    text = capsys.readouterr().out
    assert "23.6 pJ/AC" in text and "SNN / ANN energy" in text
    assert main(["energy", str(ckpt), "--profile", "speck"]) == 2
    py = energy(ckpt, samples=50)
    assert py["total"]["ac"] == pytest.approx(tot["ac"])
