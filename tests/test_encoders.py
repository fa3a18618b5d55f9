"""Spike encoders for static data against hand-computed spike trains, and the
network applying the configured encoding."""

from __future__ import annotations

import pytest
import torch

from snn2hw.core.encoders import encode, latency_encode, rate_encode
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model


def test_latency_spike_times_by_hand():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0, 1.5, -1.0]])
    s = latency_encode(x, 5)  # step = round((1 - x) * 4): -, 3, 2, 0, 0 (clipped), - (clipped to 0)
    assert s.shape == (5, 1, 6)
    expected = torch.zeros(5, 1, 6)
    expected[3, 0, 1] = expected[2, 0, 2] = expected[0, 0, 3] = expected[0, 0, 4] = 1
    assert torch.equal(s, expected)
    # ties round half to even: (1 - 0.5) * 1 = 0.5 -> step 0; (1 - 0.5) * 3 = 1.5 -> step 2
    assert latency_encode(torch.tensor([0.5]), 2)[:, 0].tolist() == [1.0, 0.0]
    assert latency_encode(torch.tensor([0.5]), 4)[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_rate_encoding_probabilities_and_seed():
    x = torch.tensor([0.0, 0.2, 0.7, 1.0, 3.0, -2.0])
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    s = rate_encode(x.expand(4000, 6), 50, g())
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    freq = s.mean((0, 1))
    assert freq[0] == 0 and freq[5] == 0 and freq[3] == 1 and freq[4] == 1
    # 200,000 draws per value: the frequency is within 5 standard errors of p
    for k, p in ((1, 0.2), (2, 0.7)):
        assert abs(float(freq[k]) - p) < 5 * (p * (1 - p) / 200_000) ** 0.5
    a, b = rate_encode(x, 8, g()), rate_encode(x, 8, g())
    assert torch.equal(a, b)  # the same seed, the same spikes
    assert torch.equal(a, (torch.rand(8, 6, generator=g()) < x.clamp(0, 1)).float())


def test_direct_encoding_is_the_frame_at_every_step():
    x = torch.randn(3, 4)
    s = encode("direct", x, 5)
    assert s.shape == (5, 3, 4) and all(torch.equal(s[t], x) for t in range(5))
    with pytest.raises(ValueError, match="encoding"):
        encode("phase", x, 5)


@pytest.mark.parametrize("encoding", ["rate", "latency"])
def test_network_applies_the_encoding(encoding):
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(6,), hidden=(5,), timesteps=6, encoding=encoding)).eval()
    x = torch.rand(4, 6)
    first = model.layers[1]  # Linear after Flatten: it sees the encoded spikes
    seen = []
    h = first.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    out1, out2 = model(x), model(x)
    h.remove()
    assert torch.equal(out1, out2)  # eval: the encoding draws from a fixed seed
    gen = torch.Generator().manual_seed(model.EVAL_ENCODING_SEED)
    expected = encode(encoding, x, 6, gen).flatten(0, 1)
    assert torch.equal(seen[0], expected)
    with pytest.raises(ValueError, match="encoding"):
        ModelConfig(encoding="phase")
