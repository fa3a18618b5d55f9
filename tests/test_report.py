"""`snn2hw report`: the markdown and plots of a run directory show the run's own numbers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import snn2hw
from snn2hw.cli.main import main
from snn2hw.core.layers import LIF
from snn2hw.data.datasets import load_dataset
from snn2hw.reports.run_report import adaptive_series
from snn2hw.runs.history import read_history
from snn2hw.methods import METHODS
from snn2hw.methods.base import layer_params
from markdown_tables import markdown_table_rows

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class ToyAdaptive:
    """A method that moves every layer's shape parameter on a known schedule and logs it:
    beta = 1 + epoch * (i + 1) for LIF layer i, and a global ``b = 0.5 * epoch``."""

    name: ClassVar[str] = "toy_adaptive"

    def setup(self, model):
        self.lifs = model.lif_layers()

    def on_epoch_start(self, ctx):
        return {"b": 0.5 * ctx.epoch}

    def extra_loss(self, model):
        return None

    def on_epoch_end(self, ctx):
        for i, m in enumerate(self.lifs):
            m.shape_param.fill_(1.0 + ctx.epoch * (i + 1))
        return layer_params(ctx.model, "beta")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setitem(METHODS, ToyAdaptive.name, ToyAdaptive)
    out = tmp_path_factory.mktemp("report") / "run"
    snn2hw.train({"dataset": "digits", "hidden": [32, 16], "timesteps": 2, "epochs": 3,
                  "method": ToyAdaptive.name}, out=out)
    yield out
    mp.undo()



def test_report_files_and_numbers(run_dir, monkeypatch):
    monkeypatch.setitem(METHODS, ToyAdaptive.name, ToyAdaptive)
    rep = snn2hw.api.report(run_dir)
    for name in ("report.md", "curves.png", "params.png", "spike_rates.png"):
        assert (run_dir / name).exists(), name
    for p in rep.plots:
        assert p.read_bytes()[:8] == PNG
    md = (run_dir / "report.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    history = read_history(run_dir / "history.csv")

    final, chosen, at_best, epochs = markdown_table_rows(md, "final test accuracy")[0][:4]
    assert float(final) == round(summary["final_test_accuracy"], 4)
    assert chosen == f"{summary['best_epoch']} (validation)"
    assert float(at_best) == round(summary["test_accuracy_at_best"], 4)
    assert int(epochs) == 3

    per_epoch = markdown_table_rows(md, "epoch |")
    assert [int(r[0]) for r in per_epoch] == [1, 2, 3]
    for cells, row in zip(per_epoch, history):
        assert float(cells[2]) == round(row["train_loss"], 4)
        assert float(cells[4]) == round(row["val_accuracy"], 4)
        assert float(cells[6]) == round(row["test_accuracy"], 4)

    # Adaptive parameters: first/last per layer equal the schedule the toy method applied.
    params = {(r[0], r[1]): r for r in markdown_table_rows(md, "quantity")}
    assert params[("b", "(global)")][2:4] == ["0.0000", "1.0000"]
    lif_names = ["layers.2", "layers.4"]
    for i, name in enumerate(lif_names):
        first, last = float(params[("beta", name)][2]), float(params[("beta", name)][3])
        assert (first, last) == (1.0, 1.0 + 2 * (i + 1))

    # Spike rates: a second computation with hooks of our own on the best checkpoint.
    model, _ = snn2hw.load(run_dir / "best.pt")
    x = load_dataset("digits").x_test[:512]
    counts = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: counts.__setitem__(n, o.float().mean().item()))
             for n, m in model.named_modules() if isinstance(m, LIF)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    shown = {r[0]: float(r[1]) for r in markdown_table_rows(md, "layer |")}
    assert set(shown) == set(counts) == set(lif_names)
    for name, rate in counts.items():
        assert shown[name] == pytest.approx(rate, abs=5e-5)
        assert rep.spike_rates[name] == pytest.approx(rate, abs=1e-6)
    m = re.search(r"test accuracy of this checkpoint: ([0-9.]+)", md)
    assert float(m.group(1)) == round(summary["test_accuracy_at_best"], 4)


def test_adaptive_series_groups_by_quantity_and_layer():
    history = [{"epoch": 1, "test_accuracy": 0.5, "beta/layers.2": 1.0, "b": 2.0, "k/layers.2": None},
               {"epoch": 2, "test_accuracy": 0.6, "beta/layers.2": 1.5, "b": 2.2, "k/layers.2": 0.3}]
    g = adaptive_series(history)
    assert g["beta"]["layers.2"] == ([1, 2], [1.0, 1.5])
    assert g["b"][""] == ([1, 2], [2.0, 2.2])
    assert g["k"]["layers.2"] == ([2], [0.3])  # an epoch that did not log it is skipped
    assert "test_accuracy" not in g


def test_report_cli_and_errors(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, ToyAdaptive.name, ToyAdaptive)
    assert main(["report", str(run_dir), "--no-spike-rates"]) == 0
    assert "report.md" in capsys.readouterr().out
    assert "## Spike rates" not in (run_dir / "report.md").read_text()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no history.csv" in err and str(tmp_path) in err


def test_fdg_agreement_matches_a_loop_of_single_perturbations(tmp_path):
    """The Fig. 2b measurement against a second FDG: one weight perturbed at a time."""
    from snn2hw.reports.fdg_agreement import fdg_agreement, render_fdg_agreement
    from snn2hw.methods.dspike import coordinate_subset
    from snn2hw.train.trainer import make_loss

    run = tmp_path / "run"
    snn2hw.train({"dataset": "digits", "hidden": [16], "timesteps": 2, "epochs": 1}, out=run)
    rows = fdg_agreement(run / "last.pt", eps_values=(0.1, 0.001), temperatures=(1.0,), batches=1,
                         batch_size=32, max_coords=48)
    assert [(r.state, r.gradient, r.eps) for r in rows] == [
        (s, g, e) for s in ("init", "trained") for g in ("own: triangle 1", "dspike b=1") for e in (0.1, 0.001)]

    model, _ = snn2hw.load(run / "last.pt")
    model.train()
    data = load_dataset("digits")
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(1234))[:32]
    x, y = data.x_train[idx], data.y_train[idx]
    loss_fn = make_loss("ce")
    w = model.layers[1].weight
    coords = coordinate_subset(w.numel(), 48)
    loss = loss_fn(model.forward_sequence(x), y)
    (g,) = torch.autograd.grad(loss, [w])
    for eps, row in zip((0.1, 0.001), rows[4:6]):
        fdg = []
        with torch.no_grad():
            for i in coords.tolist():
                w.view(-1)[i] += eps
                up = float(loss_fn(model.forward_sequence(x), y))
                w.view(-1)[i] -= 2 * eps
                down = float(loss_fn(model.forward_sequence(x), y))
                w.view(-1)[i] += eps
                fdg.append((up - down) / (2 * eps))
        fdg_t = torch.tensor(fdg, dtype=torch.float64)
        sg = g.view(-1)[coords].double()
        norm = float(sg.norm() * fdg_t.norm())
        expected = float(sg @ fdg_t) / norm if norm > 0 else 0.0  # no spike flipped: FDG = 0
        if eps == 0.1:
            assert norm > 0  # the comparison is not vacuous
        assert row.cosines[0] == pytest.approx(expected, abs=1e-5)
        assert row.fdg_zero_fraction == pytest.approx(float((fdg_t == 0).double().mean()))
    files = render_fdg_agreement(rows, tmp_path / "fdg")
    assert files[1].read_bytes()[:8] == PNG
    assert f"{rows[4].mean:.4f}" in files[0].read_text()
