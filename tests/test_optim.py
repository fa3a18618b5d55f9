"""Our Adam and SGD against torch.optim step by step, and the shape-parameter group."""

import pytest
import torch
import torch.nn.functional as F

from snn2hw.models import ModelConfig, build_model
from snn2hw.train.config import build_config
from snn2hw.methods import make_method
from snn2hw.train.optim import SGD, Adam, CosineSchedule
from snn2hw.train.trainer import param_groups


def test_adam_matches_torch_adam_step_by_step():
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = Adam(a.parameters(), lr=1e-2, weight_decay=1e-3)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    for step in range(20):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-6), step


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.5, 1e-2)])
def test_sgd_matches_torch_sgd_step_by_step(momentum, weight_decay):
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = SGD(a.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step in range(20):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=f"step {step}")
        if step == 9:  # a checkpoint half way: the momentum buffers round-trip
            fresh = SGD(a.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
            fresh.load_state_dict(ours.state_dict())
            ours = fresh


def test_weight_decay_never_reaches_the_shape_parameters():
    """SGD with weight decay and a zero gradient: weights shrink by lr * wd, gamma stays."""
    model = build_model(ModelConfig(input_shape=(64,), hidden=(16,)))
    make_method("psg", {"gamma_init": 3.0}).setup(model)
    shape = [p for n, p in model.named_parameters() if n.endswith("shape_param")]
    opt = SGD(param_groups(model, shape, None), lr=0.1, momentum=0.9, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] if n.endswith("shape_param") else before[n] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-7, msg=n)


def test_cosine_schedule_values():
    opt = Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = CosineSchedule(opt, 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([0.4, 0.4 * (1 + 2 ** -0.5) / 2, 0.2, 0.4 * (1 - 2 ** -0.5) / 2])


@pytest.mark.parametrize("method", ["psg", "asgl"])
def test_shape_lr_sets_the_step_of_learnable_surrogate_parameters(method):
    torch.manual_seed(1)
    config = build_config({"method": method, "lr": 1e-3, "shape_lr": 0.1, "hidden": [16]})
    model = build_model(ModelConfig(input_shape=(64,), hidden=(16,)))
    make_method(method).setup(model)
    model.train()
    shape = [p for n, p in model.named_parameters() if n.endswith("shape_param")]
    opt = Adam(param_groups(model, shape, config.shape_lr), lr=config.lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(torch.rand(32, 64) * 2), torch.randint(0, 10, (32,))).backward()
    opt.step()
    for n, p in model.named_parameters():
        step = (p.detach() - before[n]).abs().max().item()
        if p.grad is None or p.grad.abs().max() == 0:
            continue
        # Adam's first step moves every coordinate by its group's lr (|m / sqrt(v)| = 1)
        assert step == pytest.approx(0.1 if n.endswith("shape_param") else 1e-3, rel=1e-3), n


def test_learnable_shape_parameters_stay_positive_through_training():
    from snn2hw.core.layers import LIF
    from snn2hw.train.trainer import train

    # a huge shape learning rate would drive ASGL's width below zero within a few steps
    result = train(build_config({"method": "asgl", "epochs": 1, "hidden": [16], "shape_lr": 5.0,
                                 "method_options": {"alpha_init": 20.0}}), None, progress=False)
    alphas = [float(m.shape_param.detach()) for m in result.model.modules() if isinstance(m, LIF)]
    assert alphas and min(alphas) >= 1e-3
