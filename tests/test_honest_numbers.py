"""Model selection on validation, never on the test set; clean notices; --threads."""

import json
import subprocess
import sys

import nir
import numpy as np
import pytest
import torch

import snn2hw
from snn2hw.runs import model as run_model
from snn2hw.runs.checkpoint import load_checkpoint

# (validation accuracy, test accuracy) per epoch: the test set peaks at epoch 3,
# validation at epoch 2; an honest run keeps epoch 2.
SCRIPT = [(0.50, 0.40), (0.90, 0.70), (0.80, 0.95), (0.85, 0.60)]


def test_best_checkpoint_is_the_validation_peak_not_the_test_peak(tmp_path, monkeypatch):
    calls = []
    real = run_model.evaluate_model

    def scripted(model, x, y, temporal=False, batch_size=512):
        real(model, x, y, temporal, batch_size)          # the real pass still runs
        epoch, which = divmod(len(calls), 2)              # per epoch: validation, then test
        calls.append(len(x))
        return SCRIPT[epoch][which], 1.0

    monkeypatch.setattr(run_model, "evaluate_model", scripted)
    result = snn2hw.train({"dataset": "digits", "hidden": [16], "timesteps": 2, "epochs": 4},
                          out=tmp_path)
    n_val, n_test = calls[0], calls[1]
    assert n_val == 144 and n_test == 359                  # validation carved from train: 10% of 1438
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["best_epoch"] == 2 and s["selected_on"] == "validation"
    assert s["val_accuracy_at_best"] == 0.90 and s["test_accuracy_at_best"] == 0.70
    assert s["final_test_accuracy"] == 0.60 == result.summary["test_accuracy"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1       # 0-based: the second epoch
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(header)


def test_without_validation_best_follows_the_last_epoch(tmp_path, monkeypatch):
    result = snn2hw.train({"dataset": "digits", "hidden": [8], "timesteps": 2, "epochs": 2,
                           "val_fraction": 0}, out=tmp_path)
    assert result.summary["best_epoch"] == 2
    assert result.summary["selected_on"].startswith("last epoch")
    assert "val_accuracy" not in result.history[0]


def _graph_without_metadata(path):
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    g = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([4])),
               "fc1": nir.Affine(weight=w1, bias=np.zeros(6, np.float32)),
               "lif1": nir.LIF(tau=np.full(6, 2e-4), r=np.full(6, 2.0), v_leak=np.zeros(6),
                               v_threshold=np.ones(6)),
               "fc2": nir.Affine(weight=w2, bias=np.zeros(3, np.float32)),
               "output": nir.Output(output_type=np.array([3]))},
        edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "output")])
    nir.write(path, g)


def _export(tmp_path, *extra):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).random((40, 4)).astype(np.float32),
             y=np.arange(40) % 3)
    _graph_without_metadata(tmp_path / "g.nir")
    return subprocess.run([sys.executable, "-m", "snn2hw", "export", "--from-nir", str(tmp_path / "g.nir"),
                           "--target", "onnx", "--out", str(tmp_path / "o"), "--timesteps", "3",
                           "--dataset", f"npz:{tmp_path / 'd.npz'}", *extra],
                          capture_output=True, text=True, timeout=300)


def test_notes_are_one_clean_line_without_a_source_line(tmp_path):
    proc = _export(tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [l for l in proc.stderr.splitlines() if l.strip()]
    assert notes == ["snn2hw: note: NIR graph has no metadata 'dt'; assuming dt = 1e-4 s "
                     "(snnTorch's convention)"]                   # once, no warnings.warn source line


def test_quiet_silences_notes_and_verbose_says_where(tmp_path):
    assert _export(tmp_path, "--quiet").stderr.strip() == ""
    verbose = _export(tmp_path, "-v").stderr
    assert "snn2hw: note: NIR graph has no metadata 'dt'" in verbose and "from_nir.py:" in verbose


@pytest.mark.parametrize("verb", ["train", "evaluate", "export", "robustness", "energy", "report", "sweep"])
def test_every_verb_takes_threads(verb):
    from snn2hw.cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[verb]
    flags = {opt: a for a in sub._actions for opt in a.option_strings}
    assert flags["--threads"].type is int and {"--quiet", "-v"} <= set(flags)


def test_threads_are_set_and_recorded(tmp_path):
    before = torch.get_num_threads()
    from snn2hw.cli.main import main

    try:
        assert main(["train", "--threads", "1", "--epochs", "1", "--hidden", "8", "--timesteps", "2",
                     "--no-progress", "--out", str(tmp_path)]) == 0
        assert json.loads((tmp_path / "summary.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)
