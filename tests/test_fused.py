"""The fused multi-step LIF (core/fused.py) against the plain autograd loop
(``lif_sequence``), its reference: outputs and the gradients of inputs, weights
and shape parameters, over every registered surrogate shape and training method,
both resets, lam < 1 and lam = 1, with the compiled kernel and with the torch loop."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from snn2hw.core import _kernel
from snn2hw.core.fused import _backward_torch, fused_lif
from snn2hw.core.layers import LIF
from snn2hw.core.neuron import LIFParams, lif_sequence
from snn2hw.core.surrogate import SURROGATES, Dspike, GsgTanh, PsgArctan, grads, spike
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.methods import METHODS, make_method

TOL = 1e-6


def _currents(T=6, shape=(3, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # mean 0.6, spread 1.2: many spikes, many resets, x near 0 often
    return (torch.randn(T, *shape, generator=g, dtype=dtype) * 1.2 + 0.6).requires_grad_()


def _assert_matches_reference(fused_fn, ref_fn, inputs, grad_out):
    s_ref = ref_fn()
    g_ref = torch.autograd.grad(s_ref, inputs, grad_out)
    s = fused_fn()
    g = torch.autograd.grad(s, inputs, grad_out)
    assert torch.equal(s, s_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    return g_ref


CASES = list(itertools.product(sorted(SURROGATES), ["hard", "soft"], [0.5, 1.0]))


@pytest.mark.parametrize("name,reset,lam", CASES)
def test_fused_equals_plain_loop(backend, name, reset, lam):
    shape = SURROGATES[name]()
    c = _currents()
    p = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    go = torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_ref = _assert_matches_reference(lambda: fused_lif(c, p, lam, 1.0, reset, shape),
                     lambda: lif_sequence(c, LIFParams(lam, 1.0, reset), lambda x: spike(x, shape, p))[0],
                     (c, p), go)
    assert g_ref[0].abs().sum() > 0 and g_ref[1].abs() > 0  # the comparison is not vacuous


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_reset_gradient_path_is_kept(backend, reset):
    """The plain loop does not detach s in the reset; the fused backward must
    not either: dropping that term changes the input gradient."""
    shape, lam = SURROGATES["arctan"](), 0.9
    c = _currents(T=8)
    p = torch.tensor(1.0, dtype=torch.float64)
    go = torch.ones_like(c)

    def detached(x):  # the same spike, but the reset sees it detached
        return spike(x, shape, p)

    def plain_detached():
        state_u, state_s, out = torch.zeros_like(c[0]), torch.zeros_like(c[0]), []
        for ct in c:
            s_prev = state_s.detach()
            u = lam * state_u * (1 - s_prev) + ct if reset == "hard" else lam * (state_u - s_prev) + ct
            state_u, state_s = u, detached(u - 1.0)
            out.append(state_s)
        return torch.stack(out)

    g_fused, = torch.autograd.grad(fused_lif(c, p, lam, 1.0, reset, shape), c, go)
    g_det, = torch.autograd.grad(plain_detached(), c, go)
    assert (g_fused - g_det).abs().max() > 1e-3


def test_broadcast_input_and_per_neuron_param(backend):
    """A direct-encoded layer's currents are one frame expanded over T (time
    stride 0); a per-neuron shape parameter gets a per-neuron gradient."""
    shape = SURROGATES["sigmoid"]()
    c0 = (torch.randn(4, 7, dtype=torch.float64) + 0.8).requires_grad_()
    p = torch.linspace(1.0, 6.0, 7, dtype=torch.float64).requires_grad_()
    go = torch.randn(5, 4, 7, dtype=torch.float64)
    _assert_matches_reference(lambda: fused_lif(c0.unsqueeze(0).expand(5, 4, 7), p, 0.7, 1.0, "hard", shape),
             lambda: lif_sequence(c0.unsqueeze(0).expand(5, 4, 7), LIFParams(0.7, 1.0, "hard"),
                                  lambda x: spike(x, shape, p))[0],
             (c0, p), go)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_kernel_blocks_and_broadcast_gradient(backend, reset, monkeypatch):
    """Backward in many small blocks (the kernel's cache-sized pieces) and an
    incoming gradient broadcast over T (that of a mean over time)."""
    monkeypatch.setattr(_kernel, "BLOCK", 16)
    shape = SURROGATES["dspike"]()
    c = _currents(T=9, shape=(4, 6))
    p = torch.full((6,), 0.7, dtype=torch.float64, requires_grad=True)
    lam = 0.6
    ref = lif_sequence(c, LIFParams(lam, 1.0, reset), lambda x: spike(x, shape, p))[0].mean(0).sum()
    g_ref = torch.autograd.grad(ref, (c, p))
    g = torch.autograd.grad(fused_lif(c, p, lam, 1.0, reset, shape).mean(0).sum(), (c, p))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_float32_spikes_bit_identical(backend, reset):
    """The forward rounds as lif_step does: the same spikes, bit for bit, over a long run."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(32, 64, 50, generator=g) * 0.8 + 0.5
    p = torch.tensor(1.0)
    ref = lif_sequence(c, LIFParams(0.9, 1.0, reset), lambda x: spike(x, SURROGATES["triangle"](), p))[0]
    with torch.inference_mode():
        out = fused_lif(c, p, 0.9, 1.0, reset, SURROGATES["triangle"]())
    assert torch.equal(out, ref) and 0.05 < float(ref.mean()) < 0.95


@dataclass
class _ToyStrategy:
    """An ASGL-like dual-mode spike with the fused interface: forward
    ``clip(x/alpha + 1/2, 0, 1) + m * (H(x) - that)`` with a random mask m, local
    derivatives those of the clip (the rectangular shape in alpha = 1/beta)."""

    alpha: torch.Tensor
    p_mask: float = 0.5
    name: ClassVar[str] = "toy"

    @property
    def fused_param(self):
        return self.alpha

    @property
    def fused_shape(self):
        return self

    def grad(self, x, a):
        return (x.abs() < a / 2).to(x.dtype) / a

    def grad_param(self, x, a):
        return (x.abs() < a / 2).to(x.dtype) * (-x / (a * a))

    def fused_value(self, x):
        h_a = (x / self.alpha + 0.5).clamp(0, 1)
        m = (torch.rand(x.shape, dtype=x.dtype) < self.p_mask).to(x.dtype)
        return h_a + m * ((x > 0).to(x.dtype) - h_a)

    def __call__(self, x):  # the autograd version the plain loop runs
        h_a = (x / self.alpha + 0.5).clamp(0, 1)
        m = (torch.rand(x.shape, dtype=x.dtype) < self.p_mask).to(x.dtype)
        return h_a + m * ((x > 0).to(x.dtype) - h_a).detach()


@pytest.mark.parametrize("reset,lam", list(itertools.product(["hard", "soft"], [0.5, 1.0])))
def test_strategy_with_non_binary_spikes(backend, reset, lam):
    alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    strat = _ToyStrategy(alpha)
    c = _currents(T=7)
    go = torch.randn(c.shape, dtype=torch.float64)

    def run(fused):
        torch.manual_seed(5)  # the same masks in both runs
        if fused:
            return fused_lif(c, alpha, lam, 1.0, reset, strat, strat.fused_value)
        return lif_sequence(c, LIFParams(lam, 1.0, reset), strat)[0]

    g_ref = _assert_matches_reference(lambda: run(True), lambda: run(False), (c, alpha), go)
    assert g_ref[1].abs() > 0


def _tiny_model(arch: str, reset: str, lam: float, surrogate: str):
    cfg = ModelConfig(arch=arch, input_shape=(1, 8, 8), timesteps=4, hidden=(12, 10), channels=(3, 4),
                      fc_hidden=6, reset=reset, lam=lam, surrogate=surrogate, v_th=0.6)
    torch.manual_seed(0)
    return build_model(cfg).double()


def _grads(model, x, y, fused: bool, method):
    for m in model.modules():
        if isinstance(m, LIF):
            m.use_fused = fused
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # methods with random forwards draw the same numbers
    seq = model.forward_sequence(x)
    loss = torch.nn.functional.cross_entropy(seq.mean(0), y)
    extra = method.extra_loss(model)
    if extra is not None:
        loss = loss + extra
    loss.backward()
    return seq.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# every registered method with its defaults, plus the options that change the LIF's work
METHOD_CASES = [(m, {}) for m in sorted(METHODS)] + [
    (m, opts) for m, opts in [("psg", {"pda": True})] if m in METHODS]


@pytest.mark.parametrize("method_name,options,arch,reset,lam", [
    (m, o, a, r, l) for m, o in METHOD_CASES for a, r, l in
    [("conv", "hard", 0.5), ("mlp", "soft", 1.0), ("mlp", "hard", 1.0)]])
def test_every_method_same_model_gradients(backend, method_name, options, arch, reset, lam):
    """Whole networks after each method's set-up: fused and plain loops give the
    same readout, the same extra loss (PDA reads the membranes) and the same
    gradients of weights and (learnable) shape parameters."""
    model = _tiny_model(arch, reset, lam, "triangle")
    method = make_method(method_name, options)
    method.setup(model)
    model.double().train()
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    assert all(m._fused_args() is not None for m in lifs), "this method's layers would not run fused"
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 10, (6,), generator=g)
    seq_f, gr_f = _grads(model, x, y, True, method)
    seq_p, gr_p = _grads(model, x, y, False, method)
    torch.testing.assert_close(seq_f, seq_p, rtol=0, atol=TOL)
    assert gr_f.keys() == gr_p.keys() and gr_f
    for k in gr_p:
        torch.testing.assert_close(gr_f[k], gr_p[k], rtol=0, atol=TOL, msg=k)
    first = next(iter(gr_p))  # the first synaptic layer: its gradient crossed every LIF layer
    assert float(gr_p[first].abs().sum()) > 0
    model.eval()  # evaluation mode (ASGL: the exact step) under inference_mode
    with torch.inference_mode():
        outs = []
        for fused in (True, False):
            for m in lifs:
                m.use_fused = fused
            outs.append(model.forward_sequence(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=TOL)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_recorded_membrane_and_its_gradient(backend, reset):
    """``membrane=True``: u equals lif_sequence's recorded u bit for bit, and a
    loss on u (like PDA) sends the same gradient to the currents and p."""
    shape = SURROGATES["triangle"]()
    c = _currents(T=6)
    p = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    s_ref, u_ref = lif_sequence(c, LIFParams(0.7, 1.0, reset), lambda x: spike(x, shape, p), True)
    s, u = fused_lif(c, p, 0.7, 1.0, reset, shape, membrane=True)
    assert torch.equal(s, s_ref) and torch.equal(u, u_ref)
    loss_ref = (s_ref * torch.arange(6.0, dtype=torch.float64).view(6, 1, 1)).sum() + (u_ref ** 2).sum()
    loss = (s * torch.arange(6.0, dtype=torch.float64).view(6, 1, 1)).sum() + (u ** 2).sum()
    for a, b in zip(torch.autograd.grad(loss, (c, p)), torch.autograd.grad(loss_ref, (c, p))):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_fallbacks_and_inference(backend):
    """Per-neuron constants take the plain loop; recorded membranes and
    inference (no autograd) run fused and give the plain loop's numbers."""
    lif = LIF(0.5, 1.0, "hard")
    c = _currents(T=5).detach()
    lif.use_fused = False
    lif.record_membrane = True
    s_plain = lif(c)
    u_plain = lif.last_membrane
    lif.use_fused = True
    assert lif._fused_args() is not None
    with torch.inference_mode():
        assert torch.equal(lif(c), s_plain) and torch.equal(lif.last_membrane, u_plain)
        lif.record_membrane = False
        assert torch.equal(lif(c), s_plain) and lif.last_membrane is None
    lif.lam = torch.full((3, 5), 0.5, dtype=torch.float64)  # mismatch: per-neuron leak
    assert lif._fused_args() is None and torch.equal(lif(c), s_plain)


def test_kernel_builds_and_loads(tmp_path):
    """The set-up's build step works on this machine (skipped without a compiler)."""
    try:
        path = _kernel.build(tmp_path / "k.so")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    lib = _kernel.load(path)
    assert lib is not None and hasattr(lib, "lif_forward_f32") and hasattr(lib, "lif_backward_f64")


@pytest.mark.parametrize("broadcast", [False, True])
def test_backward_twice_on_a_retained_graph(backend, broadcast):
    """Backward may overwrite only what it made itself: a second backward of a
    retained graph gives the same gradient."""
    c0 = (torch.randn(4, 7, dtype=torch.float64) + 0.8).requires_grad_()
    c = c0.unsqueeze(0).expand(5, 4, 7) if broadcast else c0.unsqueeze(0) * torch.ones(5, 1, 1, dtype=torch.float64)
    out = fused_lif(c, torch.tensor(1.0, dtype=torch.float64), 0.5, 1.0, "hard", SURROGATES["arctan"]())
    loss = (out * torch.arange(5.0, dtype=torch.float64).view(5, 1, 1)).sum()
    g1, = torch.autograd.grad(loss, c0, retain_graph=True)
    g2, = torch.autograd.grad(loss, c0)
    assert torch.equal(g1, g2) and g1.abs().sum() > 0



SECH2_CASES = [(GsgTanh(), b) for b in (0.3, 0.5, 1.0, 2.2, 10.0, 40.0)] + \
    [(Dspike(v_th=v), b) for v in (1.0, 0.5) for b in (0.2, 1.0, 3.0, 40.0)]


@pytest.mark.parametrize("shape,param", SECH2_CASES)
def test_compiled_sech2_derivatives_are_the_expressions(kernel_lib, monkeypatch, shape, param):
    """``_kernel.shape_grad`` of GsgTanh and Dspike (one compiled pass) against the expression
    in float64 at the argument the kernel rounds, -k |x| in float32: within 4e-7 relative (its
    few float32 roundings, measured 2.7e-7) wherever the derivative is above 1e-30; exactly 0
    where the argument is below -86 (the cut: no subnormal value is made) or |x| is outside
    Dspike's window (its edges and one ulp either side included), and nowhere a subnormal;
    within 8e-6 of torch's own float32 expression (both round the argument); float64 within 1e-13."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(1)
    edge = torch.tensor(getattr(shape, "v_th", 1.0))
    near = torch.stack([edge, torch.nextafter(edge, edge * 2), torch.nextafter(edge, edge * 0)])
    x = torch.cat([torch.randn(20000, generator=gen) * 3, torch.linspace(-50, 50, 4001), near, -near,
                   torch.tensor([0.0, -0.0])])
    p = torch.tensor(param)
    got = _kernel.shape_grad(shape, x, p)
    k, scale, window = shape.sech2(float(p))  # as the kernel is given them
    y = (-torch.tensor(k)) * x.abs()  # float32, as the kernel rounds it
    q = torch.exp(y.double())
    ref = scale * q / (1 + q) ** 2
    out = (y < -86.0) | (x.abs() > torch.tensor(window))
    ref[out] = 0.0
    big = ref > 1e-30
    assert ((got.double() - ref).abs() / ref)[big].max() <= 4e-7
    assert torch.equal(got[out], torch.zeros_like(got[out]))
    assert not ((got > 0) & (got < torch.finfo(torch.float32).tiny)).any()
    torch.testing.assert_close(got, shape.grad(x, p), rtol=8e-6, atol=1e-30)
    edge64 = edge.double()
    x64 = torch.cat([x.double() * 1.0001, edge64.view(1), torch.nextafter(edge64, edge64 * 2).view(1),
                     torch.nextafter(edge64, edge64 * 0).view(1)])
    torch.testing.assert_close(_kernel.shape_grad(shape, x64, p.double()), shape.grad(x64, p.double()),
                               rtol=1e-13, atol=1e-300)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dgamma", ["analytic", "printed"])
def test_compiled_psg_arctan_grads_are_torchs_bit_for_bit(kernel_lib, monkeypatch, dtype, dgamma):
    """``_kernel.shape_grads`` of PsgArctan (one compiled pass): PsgArctan.grads' numbers bit
    for bit (the same IEEE operations in the same order), for Table 2's gammas and others,
    zeros of both signs, huge and tiny x; two separate tensors (the backward writes over g)."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(30000, generator=gen, dtype=dtype) * 3,
                   torch.tensor([0.0, -0.0, 1e30, -1e30, 1e-30, 7.5], dtype=dtype)])
    shape = PsgArctan(dgamma=dgamma)
    for gamma in (1.0, 2.0, 5.0, 0.37, 13.0):
        p = torch.tensor(gamma, dtype=dtype)
        (g, dp), (g_ref, dp_ref) = _kernel.shape_grads(shape, x, p), grads(shape, x, p)
        assert torch.equal(g, g_ref) and torch.equal(dp, dp_ref), gamma
        assert g.data_ptr() != dp.data_ptr()

class _Tiny:
    """A surrogate whose derivative is 1e-30 (a smooth shape's far tail)."""

    name: ClassVar[str] = "tiny"
    param_name: ClassVar[str] = "p"

    def grad(self, x, p):
        return torch.full_like(x, 1e-30)


@pytest.mark.parametrize("hard", [False, True])
def test_backward_kernel_flushes_subnormal_products_and_restores_the_thread(kernel_lib, monkeypatch, hard):
    """gs * g below float32's smallest normal (1e-10 * 1e-30) is 0 in the kernel's backward,
    where torch's loop keeps the subnormal 1e-40; every normal value is torch's; and the
    thread's own arithmetic makes subnormals again afterwards (the kernel restores it)."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 600, generator=gen)
    go = torch.randn(3, 600, generator=gen) * 1e-10
    go[:, 300:] *= 1e20  # these products stay normal
    p = torch.tensor(1.0)
    gu, _ = _kernel.backward(go, x.clone(), p, _Tiny(), 0.5, 1.0, hard, False)
    s = (x > 0).to(x.dtype)
    ref, _ = _backward_torch(go, x, s, _Tiny().grad(x, p), 0.5, 1.0, hard)
    tiny = torch.finfo(torch.float32).tiny
    sub = ref.abs() < tiny
    assert sub[:, :300].all() and (ref[:, :300] != 0).all() and not sub[:, 300:].any()
    assert torch.equal(gu[sub], torch.zeros_like(gu[sub]))
    torch.testing.assert_close(gu[~sub], ref[~sub], rtol=1e-6, atol=0)
    assert float(torch.tensor(1e-20) * torch.tensor(1e-20)) > 0  # the caller's thread is as it was



@pytest.mark.parametrize("with_bn", [False, True])
def test_pooled_backward_flushes_subnormal_products(kernel_lib, monkeypatch, with_bn):
    """The fused tdBN -> LIF -> pool backward (``lif_pool_backward``, ``bn_input_grad``)
    flushes as ``lif_backward`` does: with a 1e-30 derivative and pooled gradients of 1e-10
    (products near 1e-40) the input's gradient holds no subnormal value, while the same
    gradients of 1e10 come through normal and nonzero."""
    from snn2hw.core.fusion import LIFArgs, PoolArgs, TDBNArgs, bn_lif_pool

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gen = torch.Generator().manual_seed(4)
    tiny = torch.finfo(torch.float32).tiny
    for scale, subnormal_expected in ((1e-10, True), (1e10, False)):
        z = (torch.randn(3, 4, 2, 8, generator=gen) + 1.0).requires_grad_()
        bn = TDBNArgs(torch.ones(2), torch.zeros(2), None, None, 1.0, 1e-5, 0.0, True) if with_bn else None
        out = bn_lif_pool(z, bn, LIFArgs(torch.tensor(1.0), 0.5, 1.0, True, _Tiny(), False), PoolArgs("avg", 2, 1))
        gp = torch.randn(out.shape, generator=gen) * scale
        (gz,) = torch.autograd.grad(out, z, gp)
        assert not ((gz != 0) & (gz.abs() < tiny)).any()
        if subnormal_expected:
            assert (gz == 0).float().mean() > 0.9  # the products flushed, not merely small
        else:
            assert (gz.abs() >= tiny).float().mean() > 0.9


def test_bn_input_grad_flushes_subnormal_products(kernel_lib, monkeypatch):
    """``bn_input_grad``: kk0 * gc = 1e-20 * 1e-20 is 0, not the subnormal 1e-40; 1e-20 * 1e10
    is kept as computed."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    gc = torch.tensor([1e-20, 1e10]).repeat(3, 2, 1).contiguous()  # (R, C, S) = (3, 2, 2)
    z, coef = torch.randn(3, 2, 2), torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 2)
    kk = torch.tensor([[1e-20, 0.0, 0.0]] * 2)
    out = _kernel.bn_input_grad(gc, z, coef, kk, 1, 2)
    assert torch.equal(out[..., 0], torch.zeros(3, 2))
    assert torch.equal(out[..., 1], torch.full((3, 2), float(torch.tensor(1e-20) * torch.tensor(1e10))))


def test_asgl_backward_flushes_subnormal_products(kernel_lib, monkeypatch):
    """``asgl_backward``: go * g with g = 1/alpha = 1e-12 and go = 1e-30 is 0, not a
    subnormal; go = 1e-10 gives the normal 1e-22 as computed."""
    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    x, s = torch.full((1, 4), 0.25), torch.zeros(1, 4)  # one step: gu = go * g, |x| < alpha / 2
    go = torch.tensor([[1e-30, 1e-30, 1e-10, 1e-10]])
    gu, _ = _kernel.asgl_backward(go, x.clone(), s, 1e12, 0.5, 1.0, True, False)
    assert torch.equal(gu[0, :2], torch.zeros(2)) and (gu[0, 2:] > torch.finfo(torch.float32).tiny).all()


def test_asgl_pooled_backward_flushes_subnormal_products(kernel_lib, monkeypatch):
    """``asgl_pool_backward`` (ASGL's dual-mode value in the fused LIF -> pool): pooled
    gradients 1e-30 through avg pooling (1/2) and g = 1/alpha = 1e-12 make products near 5e-43,
    0 in the kernel; gradients 1e-10 give the normal 5e-23 as computed (one step, p = 0:
    H_alpha only, no draw; |x| = 0.25 < alpha / 2)."""
    from snn2hw.core.fused import DualModeValue
    from snn2hw.core.fusion import LIFArgs, PoolArgs, bn_lif_pool
    from snn2hw.core.surrogate import AsglRect

    if kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib)
    monkeypatch.setattr(_kernel, "_tried", True)
    alpha = torch.tensor(1e12)
    z = torch.tensor([1.25, 0.75, 1.25, 0.75]).view(1, 1, 1, 4).requires_grad_()
    lif = LIFArgs(alpha, 0.5, 1.0, True, AsglRect(1e12), value=DualModeValue(alpha, 0.0))
    out = bn_lif_pool(z, None, lif, PoolArgs("avg", 2, 1))
    (gz,) = torch.autograd.grad(out, z, torch.tensor([1e-30, 1e-10]).view(out.shape))
    want = float(torch.tensor(1e-10) / 2 * (1 / alpha))  # the normal products, as float32 makes them
    assert torch.equal(gz.flatten(), torch.tensor([0.0, 0.0, want, want]))
    assert float(torch.tensor(1e-20) * torch.tensor(1e-20)) > 0  # the caller's thread is as it was

# ---------------------------------------------------------------- CUDA (scripts/gpu-check)
# The torch loop is the fused LIF's only path on a GPU (the C kernel takes CPU tensors);
# these run it on CUDA against the plain loop there and against the CPU's numbers.
# Skipped where there is no CUDA device (tests/conftest.py).

CUDA = torch.device("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name,reset,lam", CASES)
def test_cuda_fused_equals_plain_loop(name, reset, lam):
    shape = SURROGATES[name]()
    c = _currents().detach().to(CUDA).requires_grad_()
    p = torch.tensor(1.3, dtype=torch.float64, device=CUDA, requires_grad=True)
    go = torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(CUDA)
    g_ref = _assert_matches_reference(lambda: fused_lif(c, p, lam, 1.0, reset, shape),
                     lambda: lif_sequence(c, LIFParams(lam, 1.0, reset), lambda x: spike(x, shape, p))[0],
                     (c, p), go)
    c_cpu, p_cpu = c.detach().cpu().requires_grad_(), p.detach().cpu().requires_grad_()
    s_cpu = lif_sequence(c_cpu, LIFParams(lam, 1.0, reset), lambda x: spike(x, shape, p_cpu))[0]
    g_cpu = torch.autograd.grad(s_cpu, (c_cpu, p_cpu), go.cpu())
    assert torch.equal(fused_lif(c, p, lam, 1.0, reset, shape).detach().cpu(), s_cpu)  # same spikes as the CPU
    for a, b in zip(g_ref, g_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=TOL)


@pytest.mark.cuda
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_cuda_float32_spikes_bit_identical_to_cpu(reset):
    """A long float32 run: the same spikes on CUDA as the plain loop on the CPU, bit for bit."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(32, 64, 50, generator=g) * 0.8 + 0.5
    p = torch.tensor(1.0)
    ref = lif_sequence(c, LIFParams(0.9, 1.0, reset), lambda x: spike(x, SURROGATES["triangle"](), p))[0]
    with torch.inference_mode():
        out = fused_lif(c.to(CUDA), p.to(CUDA), 0.9, 1.0, reset, SURROGATES["triangle"]())
    assert out.device.type == "cuda" and torch.equal(out.cpu(), ref)


@pytest.mark.cuda
@pytest.mark.parametrize("method_name,options", METHOD_CASES)
def test_cuda_every_method_same_model_gradients(method_name, options):
    """Each method's conv network on CUDA: fused and plain loops agree there (the
    random masks of ASGL are drawn on the GPU, the same draws in both loops)."""
    model = _tiny_model("conv", "hard", 0.5, "triangle")
    method = make_method(method_name, options)
    method.setup(model)
    model.double().to(CUDA).train()
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) * 2).to(CUDA)
    y = torch.randint(0, 10, (6,), generator=g).to(CUDA)
    seq_f, gr_f = _grads(model, x, y, True, method)
    seq_p, gr_p = _grads(model, x, y, False, method)
    torch.testing.assert_close(seq_f, seq_p, rtol=0, atol=TOL)
    assert gr_f.keys() == gr_p.keys() and gr_f
    for k in gr_p:
        assert gr_f[k].device.type == "cuda"
        torch.testing.assert_close(gr_f[k], gr_p[k], rtol=0, atol=TOL, msg=k)


@pytest.mark.cuda
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_cuda_recorded_membrane_and_broadcast_input(reset):
    """membrane=True and a direct-encoded (stride-0) input on CUDA: lif_sequence's numbers."""
    shape = SURROGATES["sigmoid"]()
    c0 = (torch.randn(4, 7, dtype=torch.float64) + 0.8).to(CUDA).requires_grad_()
    p = torch.linspace(1.0, 6.0, 7, dtype=torch.float64, device=CUDA).requires_grad_()
    c = c0.unsqueeze(0).expand(5, 4, 7)
    s_ref, u_ref = lif_sequence(c, LIFParams(0.7, 1.0, reset), lambda x: spike(x, shape, p), True)
    s, u = fused_lif(c, p, 0.7, 1.0, reset, shape, membrane=True)
    assert torch.equal(s, s_ref) and torch.equal(u, u_ref)
    w = torch.arange(5.0, dtype=torch.float64, device=CUDA).view(5, 1, 1)
    for a, b in zip(torch.autograd.grad((s * w).sum() + (u ** 2).sum(), (c0, p)),
                    torch.autograd.grad((s_ref * w).sum() + (u_ref ** 2).sum(), (c0, p))):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    spikes_only = fused_lif(c, p, 0.7, 1.0, reset, shape)  # the broadcast fast path keeps c only
    g1, = torch.autograd.grad((spikes_only * w).sum(), c0)
    s_ref2 = lif_sequence(c, LIFParams(0.7, 1.0, reset), lambda x: spike(x, shape, p))[0]
    g2, = torch.autograd.grad((s_ref2 * w).sum(), c0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=TOL)
