"""tdBN -> LIF -> pooling fused (core/fusion.py, chosen by ``layers.run_layers``) against
the same modules run one by one (``layers.fuse_layers = False``), the reference: spikes
and pooled outputs bit for bit in float32, gradients of z, tdBN weight and bias, the
shape parameter and everything downstream to 1e-6 in float64, running statistics equal;
and the conditions under which a run must not be fused (hooks, strategies, sync-BN)."""

from __future__ import annotations

import contextlib
import copy
import itertools

import pytest
import torch
from torch import nn

from snn2hw.core import _kernel, fusion, layers
from snn2hw.core.fused import _forward_torch
from snn2hw.core.layers import LIF, Pool, TDBatchNorm, run_layers
from snn2hw.core.surrogate import Arctan, AsglRect
from snn2hw.data.datasets import load_digits, load_mnist1d
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model, record_spikes

TOL = 1e-6

pytestmark = pytest.mark.skipif(_kernel._library() is None, reason="no compiled kernel: nothing is fused")


@pytest.fixture
def calls(count_calls):
    """How many times run_layers took the fused op."""
    return count_calls(layers, "bn_lif_pool")


@contextlib.contextmanager
def _fusing(flag: bool):
    """``layers.fuse_layers = flag`` inside the block (True again after it)."""
    layers.fuse_layers = flag
    try:
        yield
    finally:
        layers.fuse_layers = True


def _block(channels: int, dims: int, pool: str | None, k: int, reset: str, lam: float, dtype, seed=0,
           bn: bool = True) -> list[nn.Module]:
    torch.manual_seed(seed)
    mods: list[nn.Module] = [TDBatchNorm(channels, v_th=1.0, alpha=0.8)] if bn else []
    mods += [LIF(lam, 1.0, reset, Arctan())]
    if pool is not None:
        mods.append(Pool(pool, k, dims))
    for m in mods:
        m.to(dtype)
    if bn:
        with torch.no_grad():  # away from the identity, so that a dropped term shows
            mods[0].weight.uniform_(0.6, 1.6)
            mods[0].bias.uniform_(-0.3, 0.4)
            mods[0].running_mean.uniform_(-0.5, 0.5)
            mods[0].running_var.uniform_(0.5, 2.0)
    return mods


def _both(mods, z, grad_out_seed=1, seed=None):
    """(outputs, input gradients, parameter gradients, modules, RNG state after the run)
    fused and unfused; ``seed``: the global RNG seeded alike before each run (ASGL's masks)."""
    results = []
    for fuse in (True, False):
        if seed is not None:
            torch.manual_seed(seed)
        ms = copy.deepcopy(mods)
        zi = z.detach().clone().requires_grad_()
        with _fusing(fuse):
            y = run_layers(ms, zi)
        after = torch.get_rng_state()
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=y.dtype)
        params = [p for m in ms for p in m.parameters()]
        grads = torch.autograd.grad(y, [zi, *params], g) if y.requires_grad else None
        results.append((y, grads, ms, after))
    return results


SHAPES = {2: (4, 3, 5, 11, 13), 1: (3, 4, 6, 23)}  # not divisible by 2 or 3: floor


@pytest.mark.parametrize("dims,pool,k,reset,lam,train", [
    c for c in itertools.product((1, 2), ("avg", "sum", None), (2, 3), ("hard", "soft", "soft_nodecay"), (0.5, 1.0),
                                 (True, False))
    if not (c[1] is None and c[2] == 3)])
def test_fused_equals_unfused(dims, pool, k, reset, lam, train, calls, threads):
    shape = SHAPES[dims]
    for dtype in (torch.float32, torch.float64):
        mods = _block(shape[2], dims, pool, k, reset, lam, dtype)
        for m in mods:
            m.train(train)
        z = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype) * 1.5 + 0.4
        (y, g, ms, _), (y_ref, g_ref, ms_ref, _) = _both(mods, z)
        assert torch.equal(y, y_ref), "outputs differ"
        assert y.shape == y_ref.shape
        for name in ("running_mean", "running_var"):
            assert torch.equal(getattr(ms[0], name), getattr(ms_ref[0], name))
        if dtype == torch.float64:
            for a, b in zip(g, g_ref):
                torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
            assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    assert len(calls) == 2


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_kernel_x_is_the_unfused_recurrence_bit_for_bit(reset):
    """x = u - V_th and u at every step from the folded affine equal fused.py's loop on the
    tdBN module's own output, in float32 (the fma and the order of the two roundings show)."""
    T, B, C, H, W = 5, 4, 3, 7, 9
    for train in (True, False):
        bn = _block(C, 2, None, 1, reset, 0.5, torch.float32)[0].train(train)
        z = torch.randn(T, B, C, H, W, generator=torch.Generator().manual_seed(3)) * 2.0
        with torch.no_grad():
            c = copy.deepcopy(bn)(z.flatten(0, 1)).unflatten(0, (T, B))
            coef, _, mode = fusion._bn_coefficients(z, fusion.TDBNArgs(
                bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.scale, bn.eps, bn.momentum, train))
        x_ref, _, u_ref = _forward_torch(c, 0.5, 1.0, reset == "hard", None, keep_u=True)
        lay = _kernel.PlaneLayout(T, B * C, C, H, W, 1, 1)
        spikes, x, u = _kernel.pool_forward(z.flatten(1), coef, mode, lay, 1.0, 0.0, 0.5, 1.0, reset == "hard",
                                            True, keep_u=True)
        assert torch.equal(x.view(x_ref.shape), x_ref)
        assert torch.equal(u.view(u_ref.shape), u_ref)
        assert torch.equal(spikes.view(x_ref.shape), (x_ref > 0).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_every_plane_width_against_the_torch_loop(dtype, threads):
    """Planes of 1..37 neurons (1-D), T = 9: the kernel runs blocks of 4 vectors side by side,
    then single vectors, then a remainder of each size; x, u, the pooled spikes (avg_pool1d
    of the torch loop's spikes, k 1, 2, 3) and hwsim's counts (spikes per unit, membrane
    changes) against fused.py's torch loop on c = z, bit for bit."""
    T, B, C = 9, 2, 3
    g = torch.Generator().manual_seed(5)
    for W, hard, k in itertools.product(range(1, 38), (True, False), (1, 2, 3)):
        if k > W:
            continue
        z = torch.randn(T, B, C, W, generator=g, dtype=dtype) * 1.5 + 0.4
        x_ref, _, u_ref = _forward_torch(z, 0.75, 1.0, hard, None, keep_u=True)
        s_ref = (x_ref > 0).to(dtype)
        pooled_ref = torch.nn.functional.avg_pool1d(s_ref.flatten(0, 2), k).view(T, B * C, 1, W // k)
        lay = _kernel.PlaneLayout(T, B * C, C, 1, W, 1, k)
        pooled, x, u = _kernel.pool_forward(z.flatten(1), None, 0, lay, float(k), 0.0, 0.75, 1.0, int(hard), True,
                                            keep_u=True)
        assert torch.equal(pooled, pooled_ref), (W, hard, k)
        assert torch.equal(x.view(x_ref.shape), x_ref) and torch.equal(u.view(u_ref.shape), u_ref), (W, hard, k)
        pooled_c, nspk, nchg = _kernel.pool_forward_counted(z.flatten(1), lay, float(k), 0.0, 0.75, 1.0, hard)
        assert torch.equal(pooled_c, pooled_ref), (W, hard, k)
        assert torch.equal(nspk, s_ref.sum((0, 1)).flatten()), (W, hard, k)
        assert int(nchg) == int((u_ref[1:] != u_ref[:-1]).sum()), (W, hard, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_short_rows_grouped_are_the_planes_run_one_by_one(dtype, monkeypatch, threads):
    """Short 1-D planes run GROUP_NEURONS neurons side by side (``plane_group`` planes as one,
    the affine applied into a buffer first): x, u and the pooled spikes are those of the planes
    run one by one, bit for bit, for every affine mode (none, tdBN's with and without fma),
    reset, window, a frame broadcast over T, and a last group of fewer planes."""
    g = torch.Generator().manual_seed(8)
    T, B, C = 3, 5, 7  # 35 planes: a group of 25 (W = 10) leaves 10
    lib, sent = _kernel._library(), []

    class Recording:  # the library, noting the planes per group each lif_pool_forward call got
        def __getattr__(self, name):
            fn = getattr(lib, name)
            if not name.startswith("lif_pool_forward_"):
                return fn
            return lambda *a: sent.append(a[22]) or fn(*a)

    monkeypatch.setattr(_kernel, "_library", lambda: Recording())
    grouped = []
    for W, k, mode, reset, broadcast in itertools.product((2, 6, 10, 30), (1, 2, 3), (0, 1, 2), (0, 1, 2),
                                                          (False, True)):
        if W % k:
            continue
        lay = _kernel.PlaneLayout(T, B * C, C, 1, W, 1, k)
        z = torch.randn(T, B * C * W, generator=g, dtype=dtype) * 1.5 + 0.4
        if broadcast:
            z = z[:1].expand(T, -1)
        coef = torch.randn(C, 4, generator=g, dtype=dtype) * 0.5 + 1.0 if mode else None
        args = (z, coef, mode, lay, float(k), 0.0, 0.75, 1.0, reset, True)
        assert _kernel.plane_group(lay) == min(_kernel.GROUP_NEURONS // W, B * C) > 1
        got = _kernel.pool_forward(*args, keep_u=True)
        with monkeypatch.context() as m:
            m.setattr(_kernel, "plane_group", lambda lay: 1)
            want = _kernel.pool_forward(*args, keep_u=True)
        assert sent[-2:] == [_kernel.plane_group(lay), 1]  # the kernel ran the planes grouped, then one by one
        for a, b in zip(got, want):
            assert torch.equal(a, b), (W, k, mode, reset, broadcast)
        grouped.append((got[0] > 0).float().mean())
    assert 0.05 < float(torch.stack(grouped).mean()) < 0.95  # spikes and silences both


@pytest.mark.parametrize("scale", [1.0, 0.35, 2.0 / 3.0])
def test_compiled_coefficients_are_the_torch_expressions_bit_for_bit(scale):
    """``_kernel.bn_coefficients`` (the FDG's tdBN rows, no running buffers) against
    ``_bn_coefficients``' torch expressions on the same statistics: invstd in double then
    float, ``0 - mean invstd``, ``scale * weight`` (a Python scalar times a float tensor),
    bias, bit for bit; and ``_bn_coefficients`` takes it for such a tdBN."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(64, 37, 20, generator=g) * 2 + 0.3
    weight, bias = torch.rand(37, generator=g) + 0.5, torch.randn(37, generator=g)
    eps = 1e-5
    mean, var = torch.batch_norm_update_stats(z, None, None, 0.0)
    invstd = (1.0 / torch.sqrt(var.double() + eps)).to(z.dtype)
    want = torch.stack([invstd, 0.0 - mean * invstd, scale * weight, bias]).t().contiguous()
    coef, inv = _kernel.bn_coefficients(z, weight, bias, scale, eps)
    assert torch.equal(inv, invstd) and torch.equal(coef, want)
    bn = fusion.TDBNArgs(weight, bias, None, None, scale, eps, 0.0, True)
    got, got_inv, _ = fusion._bn_coefficients(z.view(4, 16, 37, 20), bn)
    assert torch.equal(got, want) and torch.equal(got_inv, invstd)


def test_the_wide_passes_are_offered_where_the_cpu_has_them():
    """``wide_available`` (the kernel's CPU check for its 16-lane passes) against the flags
    Linux lists for the CPU: AVX-512 F, VL, DQ, BW and FMA all there <=> the library offers
    the wide passes (a GCC build on x86-64; elsewhere the kernel has none to offer)."""
    import platform
    import shutil
    import subprocess
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    cc = shutil.which("cc") or shutil.which("gcc")
    if platform.machine() != "x86_64" or not cpuinfo.exists() or cc is None:
        pytest.skip("an x86-64 Linux machine with a C compiler decides this")
    macros = subprocess.run([cc, "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True, text=True).stdout
    if "__GNUC__" not in macros or "__clang__" in macros:
        pytest.skip("the wide passes are compiled by GCC only")
    line = next(l for l in cpuinfo.read_text().splitlines() if l.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    assert _kernel._library().pool_wide == ({"avx512f", "avx512vl", "avx512dq", "avx512bw", "fma"} <= flags)


def test_the_wide_float_pass_is_the_narrow_one_bit_for_bit(monkeypatch, threads):
    """Where the CPU has AVX-512, float32's pooled forward runs 16-lane vectors
    (``lif_pool_forward_f32w``: blocks of 64 neurons, then 16, then fours, then 1-3): x, u,
    pooled spikes and hwsim's counts equal the 4-lane pass's bit for bit, planes of 1..70
    neurons (every remainder), 1-D and 2-D windows, each affine mode and reset, grouped rows."""
    lib, names = _kernel._library(), []
    if not lib.pool_wide:
        pytest.skip("no AVX-512 here: the 4-lane pass is the only one")

    class Recording:  # the library, noting which forward each call took
        def __getattr__(self, name):
            fn = getattr(lib, name)
            return (lambda *a: names.append(name) or fn(*a)) if name.startswith("lif_pool_forward_") else fn

    monkeypatch.setattr(_kernel, "_library", lambda: Recording())
    g = torch.Generator().manual_seed(9)
    T, B, C = 3, 2, 3
    cases = [(1, W, 1, k) for W in range(1, 71) for k in (1, 2) if W % k == 0 or W > 20]
    cases += [(H, W, kh, kw) for H, W, kh, kw in [(4, 6, 2, 2), (5, 7, 2, 2), (9, 9, 3, 3), (3, 17, 1, 1)]]
    for (H, W, kh, kw), mode, reset in itertools.product(cases, (0, 1, 2), (0, 1, 2)):
        lay = _kernel.PlaneLayout(T, B * C, C, H, W, kh, kw)
        z = torch.randn(T, B * C * H * W, generator=g) * 1.5 + 0.4
        coef = torch.randn(C, 4, generator=g) * 0.5 + 1.0 if mode else None
        outs = []
        for wide in (True, False):
            monkeypatch.setattr(_kernel, "WIDE_POOL", wide)
            got = _kernel.pool_forward(z, coef, mode, lay, float(kh * kw), 0.0, 0.75, 1.0, reset, True, keep_u=True)
            counted = _kernel.pool_forward_counted(z, lay, float(kh * kw), 0.0, 0.75, 1.0, reset == 1) \
                if mode == 0 and reset < 2 else ()
            outs.append((*got, *counted))
        for a, b in zip(*outs):
            assert torch.equal(a, b), (H, W, kh, kw, mode, reset)
    assert names.count("lif_pool_forward_f32w") == names.count("lif_pool_forward_f32") > 0


def test_pooled_values_by_hand():
    """One plane, one step, c = z (no tdBN): spikes where z > 1; windows 3 x 3 of a 7 x 8
    plane (two by two windows, the last row and two last columns dropped)."""
    z = torch.zeros(1, 1, 1, 7, 8)
    z[0, 0, 0, 0, 0] = z[0, 0, 0, 2, 2] = z[0, 0, 0, 4, 5] = z[0, 0, 0, 6, 0] = z[0, 0, 0, 0, 7] = 2.0
    want = {"avg": torch.tensor([[2 / 9, 0.0], [0.0, 1 / 9]]), "sum": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}
    for mode in ("avg", "sum"):
        out = fusion.bn_lif_pool(z, None, fusion.LIFArgs(torch.zeros(()), 0.5, 1.0, True, Arctan()),
                                 fusion.PoolArgs(mode, 3, 2))
        assert torch.equal(out[0, 0, 0], want[mode])


@pytest.mark.parametrize("reset", ["hard", "soft_nodecay"])
def test_broadcast_frame_lif_pool_and_learnable_shape(reset, calls, threads):
    """The direct-encoded first layer: one frame broadcast over T, [LIF, Pool] fused; the
    frame's gradient sums over T; a learnable surrogate parameter gets its gradient."""
    T = 4
    mods = _block(3, 2, "avg", 2, reset, 0.5, torch.float64, bn=False)
    mods[0].shape_param = nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
    frame = torch.randn(5, 3, 9, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1.5 + 0.5
    out = []
    for fuse in (True, False):
        ms = copy.deepcopy(mods)
        f = frame.clone().requires_grad_()
        with _fusing(fuse):
            y = run_layers(ms, f.unsqueeze(0).expand(T, *f.shape))
        out.append((y, torch.autograd.grad((y * y.detach().cos()).sum(), [f, ms[0].shape_param])))
    (y, g), (y_ref, g_ref) = out
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    assert len(calls) == 1


def _conv_model(input_shape, dtype, pool="avg", reset="hard"):
    cfg = ModelConfig(arch="conv", input_shape=input_shape, num_classes=10, timesteps=4, channels=(6, 8),
                      pool=pool, reset=reset, surrogate="arctan", fc_hidden=12)
    torch.manual_seed(0)
    return build_model(cfg).to(dtype)


def _loss_and_grads(model, x, y, fuse: bool, extra_loss=None):
    """(loss, gradients of every parameter) of a copy of ``model`` with ``layers.fuse_layers = fuse``;
    ``extra_loss(model)`` (a method's term) added to the cross-entropy."""
    m = copy.deepcopy(model)
    with _fusing(fuse):
        loss = nn.functional.cross_entropy(m(x), y)
        if extra_loss is not None:
            loss = loss + extra_loss(m)
    return loss, torch.autograd.grad(loss, list(m.parameters()))


def _assert_same_training_step(dtype, loss, g, loss_ref, g_ref) -> None:
    """float32: the loss bit for bit; float64: every gradient to TOL."""
    if dtype == torch.float32:
        assert torch.equal(loss, loss_ref)
    else:
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("dataset", ["mnist1d", "digits"])
def test_whole_conv_model_loss_and_gradients(dataset, calls):
    d = load_mnist1d() if dataset == "mnist1d" else load_digits()
    x, y = torch.as_tensor(d.x_train[:48]), torch.as_tensor(d.y_train[:48]).long()
    for dtype in (torch.float32, torch.float64):
        model = _conv_model(tuple(x.shape[1:]), dtype)
        (loss, g), (loss_ref, g_ref) = (_loss_and_grads(model, x.to(dtype), y, fuse) for fuse in (True, False))
        if dtype == torch.float32:
            assert torch.equal(loss, loss_ref)
        else:
            torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-12)
            for a, b in zip(g, g_ref):
                torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    # per model and dtype: the first block [LIF, Pool] and the second [tdBN, LIF, Pool]
    assert len(calls) == 4


def test_hooks_and_strategies_keep_the_unfused_path(calls):
    """A hooked module (hwsim, probes, record_spikes, CPNG), a strategy without the fused
    interface or sync-BN: that run is not fused, and the hooks fire (a recorded membrane,
    PDA's, is fused: ``test_recorded_membrane_and_its_gradient``)."""
    mods = _block(3, 2, "avg", 2, "hard", 0.5, torch.float32)
    z = torch.randn(3, 2, 3, 6, 6, generator=torch.Generator().manual_seed(5)) + 0.5
    reference = run_layers(copy.deepcopy(mods), z)
    assert len(calls) == 1
    fired = []
    # (install, fused runs left: the modules around a hooked one may still fuse)
    cases = {
        "forward hook": (lambda ms: ms[1].register_forward_hook(lambda m, a, o: fired.append(o)), 0),
        "pre hook": (lambda ms: ms[0].register_forward_pre_hook(lambda m, a: fired.append(a[0])), 1),
        "pool hook": (lambda ms: ms[2].register_forward_hook(lambda m, a, o: fired.append(o)), 1),
        "membrane": (lambda ms: setattr(ms[1], "record_membrane", True), 1),  # PDA: fused, u recorded
        "strategy": (lambda ms: setattr(ms[1], "spike_strategy", lambda x: (x > 0).float()), 0),
        "sync-BN": (lambda ms: setattr(ms[0], "norm_strategy", lambda x, bn: torch.nn.functional.batch_norm(
            x, None, None, None, None, True, 0.0, bn.eps)), 1),
    }
    for name, (install, fused_runs) in cases.items():
        ms = copy.deepcopy(mods)
        install(ms)
        fired.clear()
        calls.clear()
        out = run_layers(ms, z)
        assert len(calls) == fused_runs, name
        if "hook" in name:
            assert len(fired) == 1, name
        assert torch.equal(out, reference), name
    calls.clear()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: fired.append(1))
    try:
        fired.clear()
        run_layers(copy.deepcopy(mods), z)
    finally:
        handle.remove()
    assert len(calls) == 0 and len(fired) == 3


def test_record_spikes_sees_every_lif(calls):
    model = _conv_model((1, 8, 8), torch.float32)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad(), record_spikes(model) as rec:
        model(x)
    assert len(calls) == 0 and len(rec) == 3
    with torch.no_grad():
        model(x)
    assert len(calls) == 2


def test_max_pool_fuses_only_tdbn_and_lif(calls):
    mods = _block(3, 2, "max", 2, "soft", 0.5, torch.float64)
    z = torch.randn(3, 2, 3, 7, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (y, g, _, _), (y_ref, g_ref, _, _) = _both(mods, z)
    assert torch.equal(y, y_ref) and len(calls) == 1
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("dims,pool,reset,bn", [(2, "avg", "hard", True), (1, "sum", "soft", True),
                                                (2, None, "soft", True), (2, "avg", "hard", False),
                                                (2, "avg", "soft_nodecay", True), (1, None, "soft_nodecay", True)])
def test_recorded_membrane_and_its_gradient(dims, pool, reset, bn, calls, threads):
    """PSG's PDA: with ``record_membrane`` in training the fused run sets ``last_membrane``
    to the unfused LIF's u bit for bit (float32), and a loss on both the pooled output and
    u gives the unfused gradients of z, the tdBN's weight and bias and the learnable shape
    parameter (float64, 1e-6), u's own gradient reaching z through the BPTT."""
    shape = SHAPES[dims]
    for dtype in (torch.float32, torch.float64):
        mods = _block(shape[2], dims, pool, 2, reset, 0.5, dtype, bn=bn)
        lif = mods[1] if bn else mods[0]
        lif.shape_param = nn.Parameter(torch.tensor(1.3, dtype=dtype))
        lif.record_membrane = True
        z = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype) * 1.5 + 0.4
        results = []
        for fuse in (True, False):
            ms = copy.deepcopy(mods)
            zi = z.clone().requires_grad_()
            with _fusing(fuse):
                y = run_layers(ms, zi)
            u = (ms[1] if bn else ms[0]).last_membrane
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(8), dtype=dtype)
            gu = torch.randn(u.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
            params = [p for m in ms for p in m.parameters()]
            # u's gradient dominates: a gext dropped or misplaced in time shows well above 1e-6
            grads = torch.autograd.grad((y * gy).sum() + (u * gu).sum(), [zi, *params])
            results.append((y, u, grads))
        (y, u, g), (y_ref, u_ref, g_ref) = results
        assert u.shape == z.shape
        assert torch.equal(y, y_ref) and torch.equal(u, u_ref)
        if dtype == torch.float64:
            for a, b in zip(g, g_ref):
                torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
        for m in mods:
            m.eval()
        with torch.no_grad():  # eval: no membrane kept, as LIF.forward
            run_layers(mods, z)
        assert lif.last_membrane is None
    assert len(calls) == 4


def test_soft_nodecay_by_hand():
    """GSG's reset on one neuron, c = z, lam 0.5, V_th 1: u = 1.5 (spike), then
    0.75 + 0.5 - 1 = 0.25 (the threshold subtracted undecayed; soft would give 0.75)."""
    z = torch.tensor([1.5, 0.5]).view(2, 1, 1, 1, 1).expand(2, 1, 1, 2, 2).contiguous()
    lif = fusion.LIFArgs(torch.zeros(()), 0.5, 1.0, False, Arctan(), nodecay=True)
    pooled, u = fusion.bn_lif_pool(z, None, lif, fusion.PoolArgs("sum", 2, 2), membrane=True)
    assert torch.equal(u[:, 0, 0, 0, 0], torch.tensor([1.5, 0.25]))
    assert torch.equal(pooled.flatten(), torch.tensor([4.0, 0.0]))


def test_recorded_membrane_without_grad_and_by_hand():
    """Inference with ``membrane``: u as well; one neuron, c = z, hard reset, lam 0.5,
    V_th 1: u = 0.6, 0.3 + 0.9 = 1.2 (spike), reset then 0.5: u = 0.5."""
    z = torch.tensor([0.6, 0.9, 0.5]).view(3, 1, 1, 1, 1).expand(3, 1, 1, 2, 2).contiguous()
    lif = fusion.LIFArgs(torch.zeros(()), 0.5, 1.0, True, Arctan())
    pooled, u = fusion.bn_lif_pool(z, None, lif, fusion.PoolArgs("sum", 2, 2), membrane=True)
    assert torch.equal(u[:, 0, 0, 0, 0], torch.tensor([0.6, 0.3 + 0.9, 0.5]))
    assert torch.equal(pooled.flatten(), torch.tensor([0.0, 4.0, 0.0]))


def test_psg_pda_whole_model_loss_and_gradients(calls):
    """PSG with PDA on the conv model: the loss with PDA's term on every LIF's recorded u
    and the gradients of all parameters (learnable gammas included), fused against unfused:
    the loss bit for bit in float32, gradients to 1e-6 in float64."""
    from snn2hw.methods.psg import PSG
    d = load_mnist1d()
    x, y = torch.as_tensor(d.x_train[:48]), torch.as_tensor(d.y_train[:48]).long()
    for dtype in (torch.float32, torch.float64):
        model = _conv_model(tuple(x.shape[1:]), dtype)
        method = PSG(pda=True)
        method.setup(model)
        model.to(dtype).train()
        (loss, g), (loss_ref, g_ref) = (_loss_and_grads(model, x.to(dtype), y, fuse, method.extra_loss)
                                        for fuse in (True, False))
        _assert_same_training_step(dtype, loss, g, loss_ref, g_ref)
    assert len(calls) == 4


def _asgl(mods: list[nn.Module], p: float, width: float = 0.9) -> LIF:
    """Install ASGL's learnable width and dual-mode strategy (noise probability p) on the
    block's LIF, as ``ASGL.setup`` does on a model's."""
    from snn2hw.methods._util import install_shape
    from snn2hw.methods.asgl import ASGL, DualModeStrategy
    lif = next(m for m in mods if isinstance(m, LIF))
    dtype = lif.shape_param.dtype
    install_shape(lif, AsglRect(width), width, learnable=True)
    lif.shape_param.data = lif.shape_param.data.to(dtype)
    lif.spike_strategy = DualModeStrategy(lif, ASGL(alpha_init=width, p=p))
    return lif


def _both_seeded(mods, z, seed=11):
    """``_both`` with the global RNG seeded alike: (outputs, gradients, RNG state after)."""
    return [(y, g, after) for y, g, _, after in _both(mods, z, seed=seed)]


@pytest.mark.parametrize("dims,pool,k,reset,p", [
    c for c in itertools.product((1, 2), ("avg", "sum", None), (2, 3), ("hard", "soft"), (0.6, 0.0, 1.0))
    if not (c[1] is None and c[2] == 3) and (c[4] == 0.6 or c[1] == "avg")])
def test_asgl_dual_mode_fused_equals_unfused(dims, pool, k, reset, p, calls):
    """ASGL's dual-mode value (p in (0, 1): random masks; 0: H_alpha; 1: H) through the fused
    tdBN/LIF/pool run: the pooled values bit for bit (non-binary values summed and divided
    as torch's avg_pool), the same draws from the global RNG, gradients of z, tdBN weight
    and bias and the width alpha to 1e-6 in float64; shapes with dropped borders."""
    shape = SHAPES[dims]
    for dtype in (torch.float32, torch.float64):
        mods = _block(shape[2], dims, pool, k, reset, 0.5, dtype)
        _asgl(mods, p)
        z = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype) * 1.5 + 0.4
        (y, g, rng), (y_ref, g_ref, rng_ref) = _both_seeded(mods, z)
        assert torch.equal(y, y_ref), "outputs differ"
        assert torch.equal(rng, rng_ref), "a different number of draws"
        if 0.0 < p < 1.0:  # non-binary values reached the pooling
            assert not torch.equal(y * k ** dims if pool == "avg" else y, (y * k ** dims if pool == "avg" else y).round())
        if dtype == torch.float64:
            for a, b in zip(g, g_ref):
                torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
            assert g[-1].abs() > 0, "no gradient reached alpha"
    assert len(calls) == 2


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_asgl_threads_and_broadcast_frame(reset, calls, threads):
    """The direct-encoded first layer ([LIF, Pool], one frame broadcast over T) and a
    [tdBN, LIF, Pool] run with ASGL (planes larger than a chunk, with and without autograd),
    on 1 and 2 threads: fused equals unfused."""
    T = 4
    frame = torch.randn(5, 3, 9, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1.5 + 0.5
    mods = _block(3, 2, "avg", 2, reset, 0.5, torch.float64, bn=False)
    _asgl(mods, 0.7)
    (y, g, _), (y_ref, g_ref, _) = _both_seeded(mods, frame.unsqueeze(0).expand(T, *frame.shape))
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    # planes of 26 x 23 > 512 neurons: the kernel's chunks within a plane
    mods = _block(3, 2, "avg", 3, reset, 0.5, torch.float64)
    _asgl(mods, 0.7)
    z = torch.randn(T, 2, 3, 26, 23, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    (y, g, _), (y_ref, g_ref, _) = _both_seeded(mods, z)
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    assert len(calls) == 2
    out = []
    for fuse in (True, False):  # no autograd, training mode (a probe pass): the same values
        torch.manual_seed(6)
        with _fusing(fuse), torch.no_grad():
            out.append(run_layers(copy.deepcopy(mods), z))
    assert torch.equal(out[0], out[1]) and len(calls) == 3


def test_asgl_pooled_values_by_hand():
    """p = 0 (H_alpha only, no draw), alpha 1, c = z, one step: x = z - 1 = (.25, -.25, 1,
    -.5, .1) gives H_alpha = (.75, .25, 1, 0, .6); windows of 2: (.5, .5), the fifth dropped."""
    from snn2hw.core.fused import DualModeValue
    z = torch.tensor([1.25, 0.75, 2.0, 0.5, 1.1], dtype=torch.float64).view(1, 1, 1, 5)
    lif = fusion.LIFArgs(torch.tensor(1.0, dtype=torch.float64), 0.5, 1.0, True, AsglRect(1.0),
                         value=DualModeValue(torch.tensor(1.0, dtype=torch.float64), 0.0))
    state = torch.get_rng_state()
    for mode, want in (("avg", [0.5, 0.5]), ("sum", [1.0, 1.0])):
        out = fusion.bn_lif_pool(z, None, lif, fusion.PoolArgs(mode, 2, 1))
        assert torch.equal(out.flatten(), torch.tensor(want, dtype=torch.float64))
    assert torch.equal(torch.get_rng_state(), state)


def test_asgl_membrane_and_eval_paths(calls):
    """ASGL with a recorded membrane (PDA's) is not fused (FusedLIF's torch loop records u);
    in eval the layer fires the exact step and the run fuses as sg's."""
    mods = _block(3, 2, "avg", 2, "hard", 0.5, torch.float32)
    lif = _asgl(mods, 0.5)
    z = torch.randn(3, 2, 3, 6, 6, generator=torch.Generator().manual_seed(5)) + 0.5
    lif.record_membrane = True
    run_layers(mods, z)
    assert len(calls) == 0 and lif.last_membrane is not None
    lif.record_membrane = False
    for m in mods:
        m.eval()
    with torch.no_grad():
        y = run_layers(mods, z)
    assert len(calls) == 1 and torch.equal(y * 4, (y * 4).round())


def test_asgl_whole_conv_model_loss_and_gradients(calls):
    """ASGL on the conv model (its two conv blocks fused): the loss bit for bit in float32
    from the same masks, every gradient (the widths' included) to 1e-6 in float64."""
    from snn2hw.methods.asgl import ASGL
    d = load_mnist1d()
    x, y = torch.as_tensor(d.x_train[:48]), torch.as_tensor(d.y_train[:48]).long()
    for dtype in (torch.float32, torch.float64):
        model = _conv_model(tuple(x.shape[1:]), dtype)
        ASGL(p=0.7).setup(model)
        model.to(dtype).train()
        out = []
        for fuse in (True, False):
            torch.manual_seed(3)
            out.append(_loss_and_grads(model, x.to(dtype), y, fuse))
        (loss, g), (loss_ref, g_ref) = out
        _assert_same_training_step(dtype, loss, g, loss_ref, g_ref)
    assert len(calls) == 4


@pytest.mark.parametrize("shape", [(256, 128, 20), (256, 128, 10), (5, 6, 3, 3), (64, 32, 33), (1, 4, 5),
                                   (2048, 3, 160)])  # tiles of 51 channels and a short one; one channel a tile
def test_compiled_training_statistics_are_torchs_bit_for_bit_in_float32(shape):
    """``_kernel.bn_stats`` (the FDG's copies' tdBN statistics, no running buffers) against
    ``torch.batch_norm_update_stats``: mean and biased variance equal in float32, on normal
    values and on spikes-like values (a few levels plus small noise), the planes the FDG's
    conv nets give and odd ones; ``_compiled_stats`` refuses what torch sums otherwise."""
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(shape, generator=g) * 3 + 1
        if seed % 2:
            z = (z > 0.5).float() * 0.5 + torch.randn(shape, generator=g) * 0.01
        mean, var = torch.batch_norm_update_stats(z, None, None, 0.0)
        got_mean, got_var = _kernel.bn_stats(z)
        assert torch.equal(got_mean, mean) and torch.equal(got_var, var), (shape, seed)
    assert fusion._compiled_stats(torch.zeros(2, 3, 4, 5))
    assert not fusion._compiled_stats(torch.zeros(2, 3, 4, 1))  # (N, C, 1): torch's channels-last sums
    assert not fusion._compiled_stats(torch.zeros(2, 3, 4, 5, dtype=torch.float64))  # a double sum's order shows
    assert not fusion._compiled_stats(torch.zeros(2, 3, 5, 4).transpose(-1, -2))
