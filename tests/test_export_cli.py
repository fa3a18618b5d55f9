"""``snn2hw export`` end to end: train tiny -> export --check -> verification.json values."""

from __future__ import annotations

import json
import subprocess
import sys

import nir
import numpy as np
import pytest

import snn2hw
from snn2hw.cli.main import main
from snn2hw.data.datasets import load_dataset


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "snn2hw", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_train_export_nir_check_then_onnx_from_the_nir_file(tmp_path):
    run = tmp_path / "run"
    cli("train", "--dataset", "digits", "--hidden", "32", "--epochs", "2", "--timesteps", "3",
        "--lam", "0.8", "--no-progress", "--out", str(run))
    out = tmp_path / "nir"
    proc = cli("export", str(run), "--target", "nir", "--out", str(out), "--check", "--samples", "150")
    assert "checked on 150 test-split samples" in proc.stdout
    v = json.loads((out / "verification.json").read_text())
    assert v["target"] == "nir" and v["samples"] == 150 and v["files"] == ["model.nir"]
    assert v["spike_agreement"] == {"layers_2": 1.0}
    assert v["output_agreement"] == 1.0
    assert v["details"]["spike_counts"]["layers_2"]["mismatches"] == 0
    assert v["details"]["spike_counts"]["layers_2"]["reference"] > 0
    # the reference accuracy is the checkpoint's on the first 150 test samples, computed here anew
    model, _ = snn2hw.load(run)
    data = load_dataset("digits")
    acc = float((model(data.x_test[:150]).argmax(1) == data.y_test[:150]).float().mean())
    assert v["accuracy_reference"] == pytest.approx(acc) and v["accuracy_target"] == pytest.approx(acc)
    graph = nir.read(out / "model.nir")
    assert graph.metadata["timesteps"] == 3 and graph.metadata["lam"] == pytest.approx(0.8)
    readme = (out / "README.md").read_text()
    assert "model.nir" in readme and "Verification on 150 samples of the test split" in readme

    onnx_out = tmp_path / "onnx"
    cli("export", "--from-nir", str(out / "model.nir"), "--target", "onnx", "--out", str(onnx_out),
        "--check", "--dataset", "digits", "--samples", "150")
    w = json.loads((onnx_out / "verification.json").read_text())
    assert w["target"] == "onnx" and w["spike_agreement"] == {"layers_2": 1.0}
    assert w["accuracy_target"] == pytest.approx(acc)


def test_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path):
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([3])}),
        "delay": nir.Delay(delay=np.ones(3)),
        "out": nir.Output(output_type={"output": np.array([3])})},
        edges=[("in", "delay"), ("delay", "out")], metadata={"dt": 1e-4, "timesteps": 2})
    nir.write(tmp_path / "g.nir", graph)
    proc = cli("export", "--from-nir", str(tmp_path / "g.nir"), "--target", "onnx",
               "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("snn2hw export: error: onnx: NIR node 'delay' is a Delay, which snn2hw "
                                   "cannot run: supported are LIF, IF, Affine, Linear, Scale, Conv1d, Conv2d, "
                                   "SumPool2d, AvgPool2d, Flatten")
    assert not (tmp_path / "out").exists()


def test_cli_argument_errors(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["export", "--target", "nir", "--out", out]) == 2
    assert "either a checkpoint or --from-nir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "x.pt", "--target", "nope", "--out", out])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["export", "--from-nir", str(tmp_path / "missing.nir"), "--target", "nir", "--out", out]) == 2
    assert "missing.nir: no such NIR file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), "--target", "nir", "--out", out]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
