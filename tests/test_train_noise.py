"""Noise-aware training: the training forward runs the robustness simulator's chip.

The reference is ``hwsim.graph.run`` on ``sample_chips(lower(model), ...)``: the
simulator the robustness sweep measures with. Training must compute the same
numbers for the same key, and nothing in eval mode.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from snn2hw.cli import train as train_cli
from snn2hw.errors import ConfigError
from snn2hw.hwsim import NoiseSpec, QuantSpec, lower, run, sample_chips
from snn2hw.hwsim.graph import RunNoise
from snn2hw.hwsim.noise import QUANT_PRESETS, noise_spec, parse_noise_options
from snn2hw.hwsim.training_noise import batch_key, training_noise
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.train.config import merge_options

MLP = ModelConfig(arch="mlp", input_shape=(1, 6, 6), hidden=(24, 12), num_classes=5, timesteps=4,
                  v_th=0.7, lam=0.6)  # V_th != 1: thermal noise is relative to it
SPECS = {
    "mismatch+thermal": NoiseSpec(mismatch=0.2, thermal=0.5),
    "all": NoiseSpec(mismatch=0.3, thermal=0.3, spike_loss=0.2, dead=0.1),
    "quant+mismatch": NoiseSpec(mismatch=0.1, thermal=0.2, quant=QuantSpec("q", weight_bits=4, decay_bits=3)),
    "thresholds only": NoiseSpec(mismatch=0.4, mismatch_params=("thresholds",)),
}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(MLP)


def _x(n: int = 32):
    return 2.0 * torch.rand(n, *MLP.input_shape, generator=torch.Generator().manual_seed(5))


def _simulated(model, spec: NoiseSpec, key: int, x: torch.Tensor) -> torch.Tensor:
    """The robustness simulator's readout (T, B, K) on the chip of ``key``."""
    net = lower(model)
    chip = sample_chips(net, spec, 1, torch.Generator().manual_seed(key))
    with torch.no_grad():
        out = run(net, x, chip, RunNoise(spec.thermal, spec.spike_loss, torch.Generator().manual_seed(key + 1)))
    return out[:, :, 0]


@pytest.mark.parametrize("name", list(SPECS))
def test_training_forward_is_the_simulators_chip_for_the_same_key(name):
    spec, model, x = SPECS[name], _model(), _x()
    noise = training_noise(model.train(), spec)
    with noise.batch(1234):
        seq = model.forward_sequence(x)
    ref = _simulated(model, spec, 1234, x)
    clean = model.forward_sequence(x)
    assert not torch.allclose(seq, clean, atol=1e-3)          # the noise did something ...
    torch.testing.assert_close(seq.detach(), ref, atol=1e-5, rtol=1e-5)  # ... the simulator's noise


# CUBA feed-forward, recurrent LIF, recurrent CUBA: per-step noise inside the recurrent loop
STATEFUL = {
    "cuba mlp": ModelConfig(arch="mlp", input_shape=(1, 6, 6), hidden=(24, 12), num_classes=5, timesteps=6,
                            v_th=0.7, lam=0.6, neuron="cuba", alpha=0.4),
    "lif srnn": ModelConfig(arch="srnn", input_shape=(8,), hidden=(16, 12), num_classes=5, timesteps=6,
                            v_th=0.7, lam=0.6, reset="hard"),
    "cuba srnn": ModelConfig(arch="srnn", input_shape=(8,), hidden=(16, 12), num_classes=5, timesteps=6,
                             v_th=0.7, lam=0.6, reset="soft", neuron="cuba", alpha=0.4),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("arch", list(STATEFUL))
def test_cuba_and_recurrent_training_forward_is_the_simulators_chip(arch, name):
    spec, cfg = SPECS[name], STATEFUL[arch]
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # enough drive that spikes recur and thresholds matter
        for p in model.parameters():
            p.mul_(3.0)
    x = 2.0 * torch.rand(16, *cfg.input_shape, generator=torch.Generator().manual_seed(5))
    noise = training_noise(model.train(), spec)
    with noise.batch(1234):
        seq = model.forward_sequence(x)
    clean = model.forward_sequence(x)
    ref = _simulated(model, spec, 1234, x)
    assert not torch.allclose(seq, clean, atol=1e-3)
    torch.testing.assert_close(seq.detach(), ref, atol=1e-5, rtol=1e-5)


def test_chip_draws_equal_the_robustness_samplers():
    spec, model = SPECS["all"], _model()
    drawn = training_noise(model.train(), spec).draw(77)
    ref = sample_chips(lower(model), spec, 1, torch.Generator().manual_seed(77))
    assert set(drawn.weights) == set(ref.weights) and set(drawn.v_th) == set(ref.v_th)
    for name, (w, b) in ref.weights.items():
        torch.testing.assert_close(drawn.weights[name][0].detach(), w)
        torch.testing.assert_close(drawn.weights[name][1].detach(), b)
    for d, r in ((drawn.lam, ref.lam), (drawn.v_th, ref.v_th), (drawn.alive, ref.alive)):
        for name in r:
            assert torch.equal(d[name], r[name])


def test_noise_is_fresh_per_batch_differentiable_and_leaves_the_model_clean():
    spec, model, x = SPECS["quant+mismatch"], _model(), _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noise = training_noise(model.train(), spec)
    outs = []
    for key in (batch_key(0, 0, 0), batch_key(0, 0, 1)):
        with noise.batch(key):
            seq = model.forward_sequence(x)
        outs.append(seq)
    assert not torch.allclose(outs[0], outs[1])
    outs[0].pow(2).mean().backward()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    w = first.weight
    assert w.grad is not None and w.grad.abs().sum() > 0     # through mismatch, STE and surrogate
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(isinstance(m.v_th, float) and isinstance(m.lam, float) for m in model.lif_layers())
    assert isinstance(first.weight, torch.nn.Parameter)


def test_eval_mode_forward_is_clean_inside_the_block():
    spec, model, x = SPECS["all"], _model(), _x()
    noise = training_noise(model, spec)
    model.eval()
    clean = model.forward_sequence(x)
    with noise.batch(3):
        inside = model.forward_sequence(x)
    assert torch.equal(inside, clean)


def test_noise_free_spec_does_not_lower_or_touch_the_model():
    noise = training_noise(_model(), {})
    assert not noise.active


def test_batch_keys_differ_per_batch_epoch_and_seed_and_leave_key_plus_one_free():
    keys = {batch_key(s, e, b) for s in range(3) for e in range(3) for b in range(50)}
    assert len(keys) == 450 and not keys & {k + 1 for k in keys}


def _train_options(argv: list[str]) -> dict:
    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    return train_cli.options_from_args(p.parse_args(argv), train_cli.FLAGS)


def test_cli_flag_parses_into_the_run_config_as_noise_spec_fields():
    options = _train_options(["--train-noise", "mismatch=0.2,thermal=0.5,quant=xylo,mismatch_params=weights+decays"])
    config = merge_options(options)
    assert config.train_noise == {"mismatch": 0.2, "thermal": 0.5, "quant": "xylo",
                                  "mismatch_params": ["weights", "decays"]}
    assert noise_spec(config.train_noise) == NoiseSpec(mismatch=0.2, thermal=0.5, quant=QUANT_PRESETS["xylo"],
                                                       mismatch_params=("weights", "decays"))
    assert config.to_dict()["train_noise"] == config.train_noise  # stored in the checkpoint
    assert merge_options({}).train_noise == {}


@pytest.mark.parametrize("text, says", [
    ("mismatch=0.2,bogus=1", "bogus"),
    ("mismatch", "KEY=VALUE"),
    ("thermal=lots", "number"),
    ("spike_loss=1.5", "probability"),
    ("quant=truenorth", "truenorth"),
    ("mismatch_params=weights+gains", "gains"),
])
def test_bad_noise_options_are_one_line_config_errors(text, says):
    with pytest.raises(ConfigError, match=says) as err:
        merge_options(_train_options(["--train-noise", text]))
    assert "\n" not in str(err.value)


def test_parse_noise_options_reads_each_field_type():
    assert parse_noise_options("dead=0.1, spike-loss=0.05") == {"dead": 0.1, "spike_loss": 0.05}
