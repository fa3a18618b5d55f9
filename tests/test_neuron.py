"""The LIF step against hand-computed trajectories, and BPTT against a manual reference."""

import numpy as np
import pytest
import torch

from snn2hw.core.neuron import LIFParams, lif_sequence
from snn2hw.core.surrogate import Triangle, spike


def run(currents, **kw):
    c = torch.tensor(currents, dtype=torch.float64)[:, None]
    s, u = lif_sequence(c, LIFParams(**kw), record_membrane=True)
    return s[:, 0].tolist(), u[:, 0].tolist()


def test_hard_reset_trajectory():
    # lam 0.5, V_th 1: u = 0.6, 0.3+0.6=0.9, 0.45+0.9=1.35 -> spike, reset: 0+0.6, 0.3+0.6
    s, u = run([0.6, 0.6, 0.9, 0.6, 0.6], lam=0.5, v_th=1.0, reset="hard")
    assert u == pytest.approx([0.6, 0.9, 1.35, 0.6, 0.9])
    assert s == [0, 0, 1, 0, 0]


def test_soft_reset_trajectory():
    # soft: u = lam * (u - V_th s) + c ; after the spike at u=1.35: 0.5*(0.35)+0.6 = 0.775
    s, u = run([0.6, 0.6, 0.9, 0.6, 0.6], lam=0.5, v_th=1.0, reset="soft")
    assert u == pytest.approx([0.6, 0.9, 1.35, 0.775, 0.9875])
    assert s == [0, 0, 1, 0, 0]


def test_iaf_trajectory():
    # lam = 1: pure integration, hard reset to 0
    s, u = run([0.4, 0.4, 0.4, 0.4, 0.4, 0.4], lam=1.0, v_th=1.0, reset="hard")
    assert u == pytest.approx([0.4, 0.8, 1.2, 0.4, 0.8, 1.2])
    assert s == [0, 0, 1, 0, 0, 1]


def test_tie_at_threshold_gives_no_spike():
    # u == V_th exactly (0.5 + 0.5 in binary floating point) is not a spike: strict u > V_th
    s, u = run([0.5, 0.5, 0.5, 0.5], lam=1.0, v_th=1.0)
    assert u[1] == 1.0
    assert s == [0, 0, 1, 0]
    s, _ = run([1.0, 1.0], lam=0.5, v_th=1.0)
    assert s == [0, 1]


def test_forward_is_exactly_binary_under_surrogate():
    c = torch.randn(6, 32, 10, requires_grad=True)
    shape = Triangle(2.0)
    s, _ = lif_sequence(c, LIFParams(0.7, 0.5, "hard"), lambda x: spike(x, shape))
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s, s.round())


def manual_bptt(c, lam, v_th, beta, g_out):
    """Hand-derived BPTT for one neuron, hard reset, triangle surrogate (numpy).

    u_t = lam u_{t-1} (1 - s_{t-1}) + c_t,  s_t = H(u_t - v_th),  L = sum_t g_t s_t.
    dL/du_t = g_t sg'(u_t) + dL/du_{t+1} lam (1 - s_t)
            + [dL/du_{t+1} (-lam u_t)] sg'(u_t)       (through the reset term)
    dL/dc_t = dL/du_t.
    """
    T = len(c)
    u, s = np.zeros(T), np.zeros(T)
    prev_u = prev_s = 0.0
    for t in range(T):
        u[t] = lam * prev_u * (1 - prev_s) + c[t]
        s[t] = float(u[t] > v_th)
        prev_u, prev_s = u[t], s[t]
    sg = np.maximum(beta * (1 - beta * np.abs(u - v_th)), 0.0)
    du = np.zeros(T)
    nxt = 0.0
    for t in reversed(range(T)):
        ds = g_out[t] + nxt * (-lam * u[t])
        du[t] = ds * sg[t] + nxt * lam * (1 - s[t])
        nxt = du[t]
    return du


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_through_time_matches_manual_bptt(seed):
    rng = np.random.default_rng(seed)
    c_np = rng.uniform(0.0, 1.2, size=7)
    g_np = rng.normal(size=7)
    c = torch.tensor(c_np, requires_grad=True)
    shape = Triangle(1.5)
    s, _ = lif_sequence(c[:, None], LIFParams(0.8, 1.0, "hard"), lambda x: spike(x, shape))
    (s[:, 0] * torch.tensor(g_np)).sum().backward()
    expected = manual_bptt(c_np, 0.8, 1.0, 1.5, g_np)
    assert np.allclose(c.grad.numpy(), expected, atol=1e-12)
    assert np.abs(expected).sum() > 0  # the case exercises the surrogate at all


def test_tensor_params_broadcast_per_neuron():
    # mismatch: per-neuron thresholds and decays as tensors
    c = torch.full((3, 2), 0.6)
    p = LIFParams(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.5]), "hard")
    s, _ = lif_sequence(c, p)
    assert s[:, 0].tolist() == [0, 1, 0]   # IAF, V_th 1: 0.6, 1.2 -> spike, 0.6
    assert s[:, 1].tolist() == [1, 1, 1]   # V_th 0.5: 0.6 > 0.5 every step after reset


def test_unknown_reset_is_an_error():
    with pytest.raises(ValueError, match="reset"):
        lif_sequence(torch.ones(2, 1), LIFParams(0.5, 1.0, "bogus"))


def test_reset_names_are_one_table_with_nir_spellings():
    from snn2hw.core.neuron import NIR_RESET_NAMES, RESET_BY_NAME, RESET_FROM_NIR, RESETS

    assert NIR_RESET_NAMES == {"hard": "zero", "soft": "subtract"}  # NIR's names for our two resets
    assert RESETS == ("hard", "soft")
    for ours in RESETS:
        assert RESET_FROM_NIR[NIR_RESET_NAMES[ours]] == ours
        assert RESET_BY_NAME[ours] == RESET_BY_NAME[NIR_RESET_NAMES[ours]] == ours
        run([0.6, 0.6], reset=ours)  # every name in the table is a reset lif_step runs
    assert set(RESET_FROM_NIR) == {"zero", "subtract"}
