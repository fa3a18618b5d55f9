"""The CLI reads the registries: its choices and help come from them, an unknown name is
one line (exit 2) before any data loads, and a method that installs its own surrogate
shape refuses another and records the shape that ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from markdown_tables import markdown_table_rows
from snn2hw.cli.main import build_parser, main
from snn2hw.cli.sweep import COMMON
from snn2hw.cli.train import FLAGS, options_from_args
from snn2hw.core.surrogate import DEFAULT_SURROGATE, SURROGATES
from snn2hw.errors import ConfigError
from snn2hw.methods import METHODS, resolve_surrogate
from snn2hw.models.config import ARCHS
from snn2hw.registry import UnknownNameError, lookup
from snn2hw.runs.checkpoint import load_checkpoint
from snn2hw.train import trainer as trainer_mod
from snn2hw.train.config import build_config
from snn2hw.train.qat import qat_targets

TINY = ["--epochs", "1", "--hidden", "16", "--timesteps", "2", "--batch-size", "128", "--no-progress"]
OWN_SHAPE = sorted(name for name, cls in METHODS.items() if cls.surrogates)


def test_lookup_names_the_choices_and_is_a_config_error():
    registry = {"b": 2, "a": 1}
    assert lookup(registry, "a", "thing") == 1
    with pytest.raises(UnknownNameError, match=r"unknown thing 'c'; choose one of \['a', 'b'\]") as exc:
        lookup(registry, "c", "thing")
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, ValueError)


def _help(verb: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    return text[text.index(" options: "):]  # the flags' help, after the usage and examples


def test_help_lists_every_registered_name(capsys):
    text = _help("train", capsys)
    for names, flag in ((SURROGATES, "--surrogate"), (METHODS, "--method"), (ARCHS, "--model"),
                        (qat_targets(), "--qat")):
        part = text[text.index(f"{flag} "):]
        part = part[:part.index(" --", 3)]
        for name in names:
            assert name in part, f"{flag} help lacks {name!r}: {part}"
    sweep = _help("sweep", capsys)
    assert all(name in sweep for name in SURROGATES) and all(name in sweep for name in ARCHS)


def test_train_and_sweep_turn_flags_into_the_same_options():
    parser = build_parser()
    common = ["--model", "conv", "--surrogate", "arctan", "--lr", "0.01", "--channels", "4", "8"]
    train = options_from_args(parser.parse_args(["train", *common]), FLAGS)
    sweep = options_from_args(parser.parse_args(["sweep", "--methods", "sg", "--out", "x", *common]), COMMON)
    assert train == sweep == {"arch": "conv", "surrogate": "arctan", "lr": 0.01, "channels": [4, 8]}


@pytest.mark.parametrize("argv,words", [
    (["--surrogate", "nope"], ["surrogate 'nope'", "triangle"]),
    (["--method", "nope"], ["method 'nope'", "cpng"]),
    (["--qat", "nope"], ["QAT target 'nope'", *qat_targets()]),
    (["--model", "nope"], ["'nope'", "resnet18"]),
    (["--method", "gsg", "--surrogate", "triangle"], ["gsg", "gsg_tanh", "drop --surrogate"]),
])
def test_unknown_names_are_one_line_before_any_data_loads(argv, words, monkeypatch, capsys, tmp_path):
    def no_data(*a, **k):
        raise AssertionError("the dataset was loaded before the config was checked")

    monkeypatch.setattr(trainer_mod, "load_dataset", no_data)
    assert main(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("snn2hw train: error: "), err
    for word in words:
        assert word in err[0]
    assert not (tmp_path / "run").exists()


def test_module_entry_point_prints_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "snn2hw", "train", "--surrogate", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"snn2hw train: error: unknown surrogate 'nope'; choose one of {sorted(SURROGATES)}"]


def test_methods_declare_registered_shapes():
    for name, cls in METHODS.items():
        assert isinstance(cls.surrogates, tuple) and set(cls.surrogates) <= set(SURROGATES), name
    assert OWN_SHAPE, "no method installs its own shape: the refusal below tests nothing"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_method_refuses_a_surrogate_it_would_ignore(method):
    own = METHODS[method].surrogates
    default = build_config({"method": method})
    assert default.model.surrogate == (own[0] if own else DEFAULT_SURROGATE)
    for shape in sorted(SURROGATES):
        if not own or shape in own:
            assert build_config({"method": method, "surrogate": shape}).model.surrogate == shape
            assert resolve_surrogate(method, shape) == shape
        else:
            with pytest.raises(ConfigError, match=rf"method '{method}'.*{own[0]}.*'{shape}'.*drop --surrogate"):
                build_config({"method": method, "surrogate": shape})


@pytest.mark.parametrize("method,installed", [("gsg", "gsg_tanh"), ("psg", "psg_arctan"), ("sg", "triangle")])
def test_the_checkpoint_and_report_name_the_shape_that_ran(method, installed, tmp_path, capsys):
    """The shape the method installed is recorded (PSG: Case 1 arctan on every spiking layer)."""
    out = tmp_path / "run"
    assert main(["train", "--method", method, *TINY, "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["model_config"]["surrogate"] == ckpt["run_config"]["model"]["surrogate"] == installed
    assert main(["report", str(out), "--no-spike-rates"]) == 0
    rows = dict(markdown_table_rows(Path(out / "report.md").read_text(), "setting"))
    assert rows["surrogate"].split()[0] == installed
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0  # its config reloads


def test_neuron_and_alpha_flags_reach_the_model_config():
    import argparse

    from snn2hw.cli.train import FLAGS, add_arguments, options_from_args
    from snn2hw.train.config import build_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    options = options_from_args(p.parse_args(["--model", "srnn", "--neuron", "cuba", "--alpha", "0.2"]), FLAGS)
    cfg = build_config(options)
    assert (cfg.model.arch, cfg.model.neuron, cfg.model.alpha) == ("srnn", "cuba", 0.2)
