"""The CUBA neuron: hand-computed trajectories, alpha = 0 is LIF exactly, and the
feed-forward CUBA layer (synaptic filter + fused LIF) against a plain per-step
loop of ``cuba_step`` with a surrogate spike (spikes bit for bit, gradients)."""

from __future__ import annotations

import itertools

import pytest
import torch

from snn2hw.core import _kernel
from snn2hw.core.layers import CUBA
from snn2hw.core.neuron import (CUBAParams, LIFParams, cuba_initial_state, cuba_step, lif_sequence,
                                synaptic_current)
from snn2hw.core.surrogate import SURROGATES, heaviside, spike


def cuba_loop(c, p: CUBAParams, spike_fn=heaviside):
    """The reference: ``cuba_step`` once per step; returns spikes, currents, membranes."""
    state = cuba_initial_state(c[0])
    spikes, currents, membranes = [], [], []
    for ct in c:
        s, state = cuba_step(ct, state, p, spike_fn)
        spikes.append(s), currents.append(state.i), membranes.append(state.u)
    return torch.stack(spikes), torch.stack(currents), torch.stack(membranes)


def run(currents, **kw):
    c = torch.tensor(currents, dtype=torch.float64)[:, None]
    s, i, u = cuba_loop(c, CUBAParams(**kw))
    return s[:, 0].tolist(), i[:, 0].tolist(), u[:, 0].tolist()


def test_hard_reset_trajectory():
    # alpha 0.5: i = 0.8, 0.4+0.8=1.2, 0.6, 0.3; lam 0.5: u = 0.8, 0.4+1.2=1.6 > 1 -> spike,
    # hard reset: 0+0.6, 0.3+0.3
    s, i, u = run([0.8, 0.8, 0.0, 0.0], alpha=0.5, lam=0.5, v_th=1.0, reset="hard")
    assert i == pytest.approx([0.8, 1.2, 0.6, 0.3])
    assert u == pytest.approx([0.8, 1.6, 0.6, 0.6])
    assert s == [0, 1, 0, 0]


def test_soft_reset_trajectory():
    # soft: u3 = 0.5*(1.6-1) + 0.6 = 0.9, u4 = 0.45 + 0.3 = 0.75
    s, i, u = run([0.8, 0.8, 0.0, 0.0], alpha=0.5, lam=0.5, v_th=1.0, reset="soft")
    assert u == pytest.approx([0.8, 1.6, 0.9, 0.75])
    assert s == [0, 1, 0, 0]


def test_current_keeps_driving_after_the_input_stops():
    # IAF (lam 1) with alpha 0.9: one input of 0.6, then i = 0.6*0.9^t keeps adding:
    # u = 0.6, 1.14 -> spike; hard reset, then 0.486, 0.486+0.4374=0.9234, +0.39366=1.31706 -> spike
    s, i, u = run([0.6, 0, 0, 0, 0], alpha=0.9, lam=1.0, v_th=1.0)
    assert i == pytest.approx([0.6, 0.54, 0.486, 0.4374, 0.39366])
    assert u == pytest.approx([0.6, 1.14, 0.486, 0.9234, 1.31706])
    assert s == [0, 1, 0, 0, 1]


@pytest.mark.parametrize("reset,lam", list(itertools.product(["hard", "soft"], [0.5, 1.0])))
def test_alpha_zero_is_lif_exactly(reset, lam):
    c = torch.randn(12, 4, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    s, i, u = cuba_loop(c, CUBAParams(0.0, lam, 1.0, reset))
    s_ref, u_ref = lif_sequence(c, LIFParams(lam, 1.0, reset), record_membrane=True)
    assert torch.equal(i, c) and torch.equal(s, s_ref) and torch.equal(u, u_ref)
    assert s.sum() > 0


def test_synaptic_current_is_the_step_filter_bit_for_bit():
    c = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    _, i, _ = cuba_loop(c, CUBAParams(0.7, 0.5, 1.0))
    assert torch.equal(synaptic_current(c, 0.7), i)


@pytest.fixture(params=["kernel", "torch"])
def backend(request, monkeypatch):
    """The fused LIF once with the compiled kernel (if built) and once with its torch loop."""
    lib = _kernel.load()
    if request.param == "kernel" and lib is None:
        pytest.skip("the compiled LIF kernel is not built here")
    monkeypatch.setattr(_kernel, "_lib", lib if request.param == "kernel" else None)
    monkeypatch.setattr(_kernel, "_tried", True)
    return request.param


CASES = list(itertools.product(["triangle", "arctan"], ["hard", "soft"], [0.5, 1.0], [0.0, 0.6, 0.95]))


@pytest.mark.parametrize("name,reset,lam,alpha", CASES)
def test_cuba_layer_equals_the_step_loop(backend, name, reset, lam, alpha):
    shape = SURROGATES[name]()
    layer = CUBA(alpha, lam, 1.0, reset, shape).double()
    assert layer.lif._fused_args() is not None  # the layer really runs the fused loop
    g = torch.Generator().manual_seed(1)
    c = (torch.randn(10, 3, 6, generator=g, dtype=torch.float64) * 0.8 + 0.3).requires_grad_()
    go = torch.randn(c.shape, generator=g, dtype=torch.float64)
    p = layer.lif.shape_param.requires_grad_()

    s_ref, _, _ = cuba_loop(c, layer.params, lambda x: spike(x, shape, p))
    g_ref = torch.autograd.grad(s_ref, (c, p), go)
    s = layer(c)
    grads = torch.autograd.grad(s, (c, p), go)
    assert torch.equal(s, s_ref) and s.sum() > 0
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert g_ref[0].abs().sum() > 0 and g_ref[1].abs() > 0


def test_cuba_layer_keeps_the_lif_interface_for_methods():
    layer = CUBA(0.5)
    layer.lif.record_membrane = True
    c = torch.randn(5, 2, 3)
    layer.train()(c)
    _, _, u = cuba_loop(c, layer.params)
    assert torch.equal(layer.lif.last_membrane, u)
