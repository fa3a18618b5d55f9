"""Model builders, tdBN statistics, direct encoding and the readout."""

import pytest
import torch

from snn2hw.core.layers import LIF, TDBatchNorm, run_layers
from snn2hw.models import ModelConfig, build_model
from snn2hw.models.network import spike_rates


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("conv", (1, 8, 8)), ("conv", (1, 40)),
                                        ("resnet18", (3, 8, 8)), ("resnet19", (3, 8, 8)),
                                        ("resnet_small", (3, 8, 8))])
def test_builders_produce_logits(arch, shape):
    cfg = ModelConfig(arch=arch, input_shape=shape, num_classes=7, timesteps=2, width=4)
    model = build_model(cfg)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 7)
    assert len(model.lif_layers()) >= 1


def test_resnet_small_is_a_stem_and_identity_blocks():
    """Stem conv + ``blocks`` identity BasicBlocks (no shortcut layers) + 2x2 pool + linear:
    1 + 2 x blocks neuron layers (Speck's 9 cores hold up to 4 blocks)."""
    from snn2hw.core.layers import ResidualBlock

    model = build_model(ModelConfig(arch="resnet_small", input_shape=(1, 8, 8), width=6, blocks=3))
    blocks = [m for m in model.layers if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3 and all(len(b.shortcut) == 0 for b in blocks)
    assert len(model.lif_layers()) == 1 + 2 * 3
    assert model.layers[-1].in_features == 6 * 4 * 4
    x = torch.rand(2, 1, 8, 8)
    block = blocks[0]
    with torch.no_grad():   # the block adds its input unchanged to the body's current
        seq = torch.rand(3, 2, 6, 8, 8).round()
        body = run_layers(block.body, seq)
        assert torch.equal(block(seq), block.out(body + seq))
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        ModelConfig(arch="resnet_small", input_shape=(1, 8, 8), blocks=0)


def test_direct_encoding_shortcut_equals_repeating_the_input():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), timesteps=3, channels=(4, 6)))
    model.eval()
    x = torch.rand(5, 1, 8, 8)
    fast = model.forward_sequence(x)
    naive = run_layers(model.layers, x.unsqueeze(0).repeat(3, 1, 1, 1, 1))
    assert torch.allclose(fast, naive, atol=1e-6)


def test_readout_is_mean_current_over_time():
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="mlp", input_shape=(64,), timesteps=4, hidden=(16,)))
    x = torch.rand(2, 64)
    assert torch.allclose(model(x), model.forward_sequence(x).mean(0))


def test_tdbn_statistics_over_time_and_batch_scaled_by_alpha_vth():
    torch.manual_seed(2)
    bn = TDBatchNorm(3, v_th=0.7, alpha=2.0)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
    x = torch.randn(4, 6, 3, 5, 5)  # (T, B, C, H, W)
    y = bn(x.flatten(0, 1)).unflatten(0, (4, 6))
    mean = x.mean(dim=(0, 1, 3, 4), keepdim=True)
    var = x.var(dim=(0, 1, 3, 4), unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * (2.0 * 0.7) * bn.weight.view(1, 1, 3, 1, 1) \
        + bn.bias.view(1, 1, 3, 1, 1)
    assert torch.allclose(y, want, atol=1e-5)


def test_tdbn_fold_factors_reproduce_eval_output():
    bn = TDBatchNorm(4, v_th=1.0, alpha=1.0)
    bn.train()
    for _ in range(3):
        bn(torch.randn(32, 4, 3, 3) * 2 + 1)
    bn.eval()
    z = torch.randn(8, 4, 3, 3)
    gain, offset = bn.fold_factors()
    assert torch.allclose(bn(z), z * gain.view(1, 4, 1, 1) + offset.view(1, 4, 1, 1), atol=1e-5)


def test_isnm_current_carrier_pools_before_the_neuron():
    spike_first = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), carrier="spike"))
    current = build_model(ModelConfig(arch="conv", input_shape=(1, 8, 8), carrier="current"))
    kinds = lambda m: [type(layer).__name__ for layer in m.layers]
    assert kinds(spike_first)[:4] == ["Conv2d", "TDBatchNorm", "LIF", "Pool"]
    assert kinds(current)[:4] == ["Conv2d", "TDBatchNorm", "Pool", "LIF"]


def test_spike_rates_are_fractions_of_neuron_steps():
    torch.manual_seed(3)
    model = build_model(ModelConfig(arch="mlp", input_shape=(64,), hidden=(32,), timesteps=5))
    x = torch.rand(10, 64) * 3
    rates = spike_rates(model, x)
    lif = model.lif_layers()[0]
    with torch.no_grad():
        c = model.layers[1](model.layers[0](x))
    from snn2hw.core.neuron import lif_sequence
    s, _ = lif_sequence(c.unsqueeze(0).expand(5, *c.shape), lif.params)
    assert rates["layers.2"] == pytest.approx(float(s.mean()))


def test_invalid_config_values_are_rejected():
    with pytest.raises(ValueError, match="lam"):
        ModelConfig(lam=1.5)
    with pytest.raises(ValueError, match="reset"):
        ModelConfig(reset="none")


def test_lif_layer_repr_names_its_surrogate():
    assert "triangle" in repr(LIF())
