"""Method flags on the command line: generated from the methods' dataclass fields."""

from __future__ import annotations

from dataclasses import fields

import pytest

from snn2hw.cli.main import main
from snn2hw.runs.checkpoint import load_checkpoint
from snn2hw.methods import METHODS, option_flags


TINY = ["--epochs", "1", "--hidden", "16", "--timesteps", "2", "--no-progress"]


def test_every_method_option_has_a_flag():
    flags = option_flags()
    for cls in METHODS.values():
        for f in fields(cls):
            assert f.name in flags
    assert flags["p"][0] == "--asgl-p" and flags["k_limit"][0] == "--k-limit"


@pytest.mark.parametrize("argv,expected", [
    (["--method", "cpng", "--k-limit", "0.3"], {"k_limit": 0.3}),
    (["--method", "psg", "--pda", "--gamma-init", "2"], {"pda": True, "gamma_init": 2.0}),
    (["--method", "asgl", "--asgl-p", "0.6", "--milestones", "1", "3", "--zeta", "0.5"],
     {"p": 0.6, "milestones": [1, 3], "zeta": 0.5}),
    (["--method", "gsg", "--beta-min", "0.3", "--set", "method_options.beta_max=7"], {"beta_min": 0.3, "beta_max": 7}),
    (["--method", "dspike", "--fdg-eps", "0.05", "--db", "0.1", "--fdg-max-coords", "32"],
     {"fdg_eps": 0.05, "db": 0.1, "fdg_max_coords": 32}),
])
def test_flags_reach_the_method(argv, expected, tmp_path):
    assert main(["train", *argv, *TINY, "--out", str(tmp_path)]) == 0
    run = load_checkpoint(tmp_path / "last.pt")["run_config"]
    assert run["method_options"] == expected


def test_set_wins_over_a_flag_and_a_foreign_option_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--method", "cpng", "--k-limit", "0.3", "--set", "method_options.k_limit=0.4",
                 *TINY, "--out", str(tmp_path)]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["run_config"]["method_options"] == {"k_limit": 0.4}
    assert main(["train", "--method", "cpng", "--zeta", "0.5", *TINY]) == 2
    err = capsys.readouterr().err
    assert "cpng" in err and "zeta" in err and "k_limit" in err
