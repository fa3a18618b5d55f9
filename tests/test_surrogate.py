"""Every registered surrogate shape against its formula, its integral, and autograd."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from snn2hw.core.surrogate import SURROGATES, make_surrogate, spike

# The formulas of methods.md, written independently of the implementation.
FORMULAS = {
    "triangle": lambda x, b: b * (1 - b * abs(x)) if abs(x) < 1 / b else 0.0,
    "rectangular": lambda x, b: b if abs(x) < 1 / (2 * b) else 0.0,
    "arctan": lambda x, b: b / (1 + (math.pi * b * x) ** 2),
    "sigmoid": lambda x, k: k * math.exp(-k * x) / (1 + math.exp(-k * x)) ** 2,
    # window +-V_th (default 1) around the threshold, z = x / (2 V_th) (methods.md)
    "dspike": lambda x, b: (b * (1 - math.tanh(b * x / 2) ** 2) / (2 * math.tanh(b / 2)) / 2
                            if abs(x) <= 1.0 else 0.0),
}
PARAMS = [0.5, 1.0, 3.0]


def test_every_registered_shape_has_a_reference_formula():
    assert set(FORMULAS) <= set(SURROGATES)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("p", PARAMS)
def test_values_match_formula(name, p):
    shape = make_surrogate(name, p)
    xs = np.linspace(-3, 3, 601)
    got = shape.grad(torch.tensor(xs, dtype=torch.float64), torch.tensor(p, dtype=torch.float64))
    want = np.array([FORMULAS[name](x, p) for x in xs])
    assert np.allclose(got.numpy(), want, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("p", PARAMS)
def test_integrates_to_one(name, p):
    # the fixed surrogates integrate to 1; the methods' own shapes (PSG rescaled to
    # peak 1, GSG's a * tanh') do not by design and are pinned in their method tests
    shape = make_surrogate(name, p)
    f = lambda x: float(shape.grad(torch.tensor(x, dtype=torch.float64), torch.tensor(p, dtype=torch.float64)))
    # integrate piecewise around the kinks of the compact shapes
    pts = sorted({-1 / p, -0.5 / p, -0.5, 0.0, 0.5, 0.5 / p, 1 / p})
    total = integrate.quad(f, -np.inf, np.inf, points=None, limit=400)[0] if name in ("arctan", "sigmoid") \
        else integrate.quad(f, -10, 10, points=pts, limit=400)[0]
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_grad_and_grad_param_equal_autograd_of_primitive(name):
    shape = make_surrogate(name, 1.7)
    x = torch.linspace(-2, 2, 403, dtype=torch.float64).requires_grad_(True)
    p = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    prim = shape.primitive(x, p)
    gx, gp = torch.autograd.grad(prim.sum(), (x, p), create_graph=False)
    assert torch.allclose(shape.grad(x.detach(), p.detach()), gx, atol=1e-10)
    # d primitive / d p summed over x equals the summed pointwise grad_param
    if getattr(shape, "grad_param_from_primitive", True):
        assert torch.allclose(shape.grad_param(x.detach(), p.detach()).sum(), gp, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_spike_forward_is_strict_step_and_backward_uses_shape(name):
    shape = make_surrogate(name, 2.0)
    x = torch.tensor([-1.0, -1e-9, 0.0, 1e-9, 0.3], dtype=torch.float64, requires_grad=True)
    s = spike(x, shape)
    assert s.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    s.sum().backward()
    assert torch.allclose(x.grad, shape.grad(x.detach(), torch.tensor(2.0, dtype=torch.float64)))


def test_learnable_parameter_receives_summed_gradient():
    shape = make_surrogate("arctan", 1.0)
    x = torch.randn(50, dtype=torch.float64)
    p = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, dtype=torch.float64)
    (spike(x, shape, p) * w).sum().backward()
    assert p.grad == pytest.approx(float((w * shape.grad_param(x, p.detach())).sum()))


def test_unknown_surrogate_names_the_choices():
    with pytest.raises(ValueError, match="triangle"):
        make_surrogate("nope")


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grads_pair_is_bit_for_bit_the_two_calls(name, dtype):
    """``grads`` (what the kernel's backward calls; PSG's arctan shares ``1 + (p x)^2``)
    gives exactly ``grad`` and ``grad_param``, every shape and both of PSG's dgamma."""
    from dataclasses import replace

    from snn2hw.core.surrogate import grads
    x = torch.linspace(-3, 3, 1001, dtype=dtype) * 1.37
    p = torch.tensor(1.7, dtype=dtype)
    shape = make_surrogate(name)
    variants = [shape] + ([replace(shape, dgamma="printed")] if hasattr(shape, "dgamma") else [])
    for sh in variants:
        g, dp = grads(sh, x, p)
        assert torch.equal(g, sh.grad(x, p)) and torch.equal(dp, sh.grad_param(x, p)), sh


# The former expressions of the shapes whose grad now runs in place on one or two tensors.
EXPRESSIONS = {
    "triangle": lambda x, p: (p * (1.0 - p * x.abs())).clamp_min(0.0),
    "rectangular": lambda x, p: p * (x.abs() < 0.5 / p).to(x.dtype),
    "sigmoid": lambda x, p: p * torch.sigmoid(p * x) * (1.0 - torch.sigmoid(p * x)),
    "asgl_rect": lambda x, p: (x.abs() < 0.5 * p).to(x.dtype) / p,
}


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_grads_are_the_expressions_bit_for_bit(name, dtype):
    """The in-place forms give exactly the plain expressions' numbers (so a training run is
    what it was): random values, zeros of both signs, each window's edges and one ulp either
    side, several p, a per-channel p; and the input is left as it was."""
    gen = torch.Generator().manual_seed(0)
    for pv in (0.3, 1.0, 1.7, 4.0):
        p = torch.tensor(pv, dtype=dtype)
        edges = torch.tensor([1 / pv, 0.5 / pv, 0.5 * pv], dtype=dtype)
        near = torch.cat([edges, torch.nextafter(edges, edges * 2), torch.nextafter(edges, edges * 0)])
        x = torch.cat([torch.randn(2000, generator=gen, dtype=dtype) * 2, near, -near,
                       torch.tensor([0.0, -0.0], dtype=dtype)])
        before = x.clone()
        shape = make_surrogate(name, pv)
        assert torch.equal(shape.grad(x, p), EXPRESSIONS[name](x, p)), (name, pv)
        assert torch.equal(x, before)
    x = torch.randn(3, 4, 5, generator=gen, dtype=dtype)
    p = torch.rand(4, 1, generator=gen, dtype=dtype) + 0.2
    assert torch.equal(make_surrogate(name).grad(x, p), EXPRESSIONS[name](x, p))
