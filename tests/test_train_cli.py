"""Training through the CLI: outputs, resume after SIGKILL, clear errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import snn2hw
from snn2hw.runs.checkpoint import load_checkpoint

TINY = ["--dataset", "digits", "--hidden", "32", "--epochs", "3", "--no-progress"]


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "snn2hw", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_train_writes_history_summary_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    cli("train", *TINY, "--out", str(out))
    rows = list(csv.DictReader(open(out / "history.csv")))
    summary = json.loads((out / "summary.json").read_text())
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in ("test_accuracy", "epochs", "wall_time_s", "timesteps", "method"):
        assert key in summary
    assert summary["test_accuracy"] == pytest.approx(float(rows[-1]["test_accuracy"]))
    assert summary["epochs"] == 3 and summary["timesteps"] == 4 and summary["method"] == "sg"
    ckpt = load_checkpoint(out / "last.pt")
    for key in ("run_config", "model_state", "optimizer_state", "scheduler_state", "rng_state", "history"):
        assert key in ckpt
    # evaluate agrees with the accuracy the run recorded for its best checkpoint
    best = load_checkpoint(out / "best.pt")
    ev = json.loads(cli("evaluate", str(out / "best.pt"), "--json").stdout)
    assert ev["test_accuracy"] == pytest.approx(best["history"][-1]["test_accuracy"])
    assert set(ev["spike_rates"]) == {"layers.2"} and 0 <= ev["spike_rates"]["layers.2"] <= 1


def test_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: digits\nepochs: 1\nmodel:\n  hidden: [16]\n  timesteps: 2\n")
    out = tmp_path / "run"
    cli("train", "--config", str(cfg), "--timesteps", "3", "--set", "lam=0.9", "--no-progress",
        "--out", str(out))
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["model_config"]["hidden"] == [16]
    assert ckpt["model_config"]["timesteps"] == 3       # the flag beats the file
    assert ckpt["model_config"]["lam"] == 0.9
    bad = cli("train", "--config", str(cfg), "--set", "bogus_key=1", "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "unknown config key 'bogus_key'" in bad.stderr


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model_state"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    args = ["train", "--dataset", "digits", "--hidden", "64", "--epochs", "5", "--batch-size", "8",
            "--seed", "3", "--no-progress"]
    ref = tmp_path / "ref"
    cli(*args, "--out", str(ref))

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "snn2hw", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = run / "history.csv"
        if hist.exists() and len(hist.read_text().splitlines()) >= 3:  # header + 2 epochs done
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(run / "last.pt")["epoch"] + 1
    assert 2 <= done < 5, "the kill should land while epochs remain"

    cli("train", "--resume", str(run), "--no-progress")
    a, b = final_weights(ref), final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]


def test_corrupt_and_truncated_checkpoints_give_one_line_errors(tmp_path):
    out = tmp_path / "run"
    cli("train", *TINY, "--epochs", "1", "--out", str(out))
    good = (out / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.pt").write_bytes(os.urandom(2048))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for name in ("trunc.pt", "junk.pt"):
        proc = cli("evaluate", str(tmp_path / name), check=False)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and "corrupt or truncated checkpoint" in proc.stderr
        assert name in proc.stderr
    proc = cli("train", "--resume", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after  # nothing was touched


def test_wrong_shape_data_file_is_a_clear_error_and_writes_nothing(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 4)), y=np.zeros(9, dtype=int))
    out = tmp_path / "run"
    proc = cli("train", "--dataset", f"npz:{tmp_path / 'bad.npz'}", "--out", str(out), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.npz" in proc.stderr and "expected (10,)" in proc.stderr
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_rejects_arbitrary_pickles(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "snn2hw-checkpoint", "x": Evil()}, f)
    with pytest.raises(snn2hw.errors.CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "evil.pt")


def test_python_api_mirrors_cli(tmp_path):
    result = snn2hw.train({"dataset": "digits", "epochs": 2, "hidden": [32], "seed": 1}, out=tmp_path / "r")
    model, ckpt = snn2hw.load(tmp_path / "r" / "last.pt")
    ev = snn2hw.evaluate(tmp_path / "r" / "last.pt")
    assert ev["test_accuracy"] == pytest.approx(result.history[-1]["test_accuracy"])
    assert ckpt["model_config"]["hidden"] == [32]


def test_env_reports_backends():
    out = cli("env", "--json").stdout
    report = json.loads(out)
    assert report["torch"].startswith("2.")
    assert "loihi env" in report and "samna" in report
    assert report["samna"] != "real"  # the stub must never count as the SDK


@pytest.mark.slow
def test_default_digits_run_reaches_95_percent(tmp_path):
    start = time.perf_counter()
    cli("train", "--dataset", "digits", "--no-progress", "--out", str(tmp_path / "d"))
    wall = time.perf_counter() - start
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.95
    assert wall < 180
