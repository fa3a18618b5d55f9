"""--device and --precision (snn2hw/devices.py): resolution and its one-line refusals,
the neuron kept in fp32 under autocast, device-portable checkpoints, and the
trainer's on-device sums giving the numbers the per-step Python floats gave.
Tests marked ``cuda`` run where a GPU is (scripts/gpu-check)."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import pytest
import torch

from snn2hw import devices
from snn2hw.cli.main import main
from snn2hw.core.layers import LIF
from snn2hw.core.neuron import LIFParams, lif_sequence
from snn2hw.errors import ConfigError, Notice
from snn2hw.models.config import ModelConfig
from snn2hw.models.network import build_model
from snn2hw.runs.checkpoint import load_checkpoint, on_cpu
from snn2hw.runs.model import load_model
from snn2hw.train import trainer as trainer_mod
from snn2hw.train.config import build_config
from snn2hw.train.trainer import train

TINY = dict(dataset="digits", epochs=2, hidden=[16], timesteps=2, batch_size=256, val_fraction=0.1)


def _fake_gpus(monkeypatch, count: int) -> None:
    """Pretend ``count`` GPUs exist (resolution only: nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cpu_and_auto_without_cuda(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default on a CPU-only torch says nothing
        assert devices.resolve_device(None) == torch.device("cpu")
    with pytest.warns(Notice, match=r"--device auto: no CUDA device .*running on the CPU"):
        assert devices.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build that finds no GPU: say so
    with pytest.warns(Notice, match="is_available"):
        assert devices.resolve_device(None) == torch.device("cpu")


@pytest.mark.parametrize("spec,words", [
    ("cuda", ["--device cuda", "no CUDA device", "--device cpu"]),
    ("cuda:1", ["--device cuda:1", "no CUDA device"]),
    ("gpu", ["--device gpu", "unknown device", "auto, cpu, cuda, cuda:N"]),
    ("cuda:x", ["unknown device"]),
])
def test_refusals_without_cuda(monkeypatch, spec, words):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError) as exc:
        devices.resolve_device(spec)
    for w in words:
        assert w in str(exc.value)


def test_cuda_choices_with_gpus(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert devices.resolve_device(None) == devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"2 CUDA device\(s\), cuda:0 to cuda:1"):
        devices.resolve_device("cuda:2")
    # torchrun: one process per GPU, GPU LOCAL_RANK (modulo the count)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert devices.resolve_device("auto") == devices.resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="each process takes GPU LOCAL_RANK"):
        devices.resolve_device("cuda:0")


def test_cli_refuses_a_missing_gpu_in_one_line(monkeypatch, capsys, tmp_path):
    _fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(trainer_mod, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("snn2hw train: error: --device cuda: no CUDA device")
    assert not (tmp_path / "r").exists()


def test_precision_names_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="precision 'fp64' is unknown; choose one of fp32, bf16, fp16"):
        build_config({"precision": "fp64"})
    assert devices.grad_scaler(torch.device("cpu"), "bf16") is None
    assert devices.grad_scaler(torch.device("cpu"), "fp16") is not None


def test_neuron_stays_fp32_under_bf16_autocast():
    """bf16 currents (what a convolution under autocast hands over) give the spikes and
    the fp32 membrane of lif_sequence on the same currents in fp32; done in bf16, the
    recurrence would round differently and fire elsewhere (so the test can fail)."""
    g = torch.Generator().manual_seed(0)
    c = (torch.randn(16, 64, 64, generator=g) * 0.45 + 0.35).bfloat16()
    ref_s, ref_u = lif_sequence(c.float(), LIFParams(0.9, 1.0, "hard"), record_membrane=True)
    in_bf16, _ = lif_sequence(c, LIFParams(0.9, 1.0, "hard"))
    assert not torch.equal(in_bf16.float(), ref_s)
    for fused in (True, False):
        lif = LIF(0.9, 1.0, "hard")
        lif.use_fused, lif.record_membrane = fused, True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = lif(c)
            s32 = lif(c.float())  # fp32 currents: autocast changes nothing in the neuron
        assert torch.equal(s, ref_s) and torch.equal(s32, ref_s)
        assert lif.last_membrane.dtype == torch.float32 and torch.equal(lif.last_membrane, ref_u)


def test_conv_net_under_autocast_runs_its_synapses_in_bf16():
    """Without tdBN (whose fp32 affine promotes) the convolution's bf16 output reaches the
    LIF, which keeps its membrane in fp32."""
    cfg = ModelConfig(arch="conv", input_shape=(1, 8, 8), num_classes=10, timesteps=3, channels=(4,),
                      tdbn=False)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    currents = []
    lif = model.lif_layers()[0]
    lif.register_forward_pre_hook(lambda m, args: currents.append(args[0].dtype))
    lif.record_membrane = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.forward_sequence(torch.rand(2, 1, 8, 8))
    assert currents == [torch.bfloat16] and lif.last_membrane.dtype == torch.float32


class _Pair(NamedTuple):
    a: torch.Tensor
    b: int


def test_on_cpu_keeps_the_structure_and_detaches():
    w = torch.ones(2, requires_grad=True)
    tree = {"w": w * 2, "list": [w, (3, "x")], "pair": _Pair(w, 4), "none": None}
    out = on_cpu(tree)
    assert isinstance(out["pair"], _Pair) and out["pair"].b == 4 and out["list"][1] == (3, "x")
    for t in (out["w"], out["list"][0], out["pair"].a):
        assert t.device.type == "cpu" and not t.requires_grad
    assert torch.equal(out["w"], torch.full((2,), 2.0))


def _all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _all_tensors(v)


def _portable_checkpoint(tmp_path, device: str):
    """Train on ``device``; the checkpoint must load with plain torch.load (no map_location)
    as CPU tensors, and rebuild on the CPU with the trained weights."""
    res = train(build_config({**TINY, "epochs": 1}), tmp_path / "run", progress=False, device=device)
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in _all_tensors(raw))
    model, _ = load_model(tmp_path / "run", "cpu")
    for k, v in res.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v.cpu()), k
    return res


def test_checkpoint_of_a_device_resolved_run_loads_on_the_cpu(tmp_path):
    res = _portable_checkpoint(tmp_path, "cpu")
    assert res.summary["device"] == "cpu" and res.summary["precision"] == "fp32"


def test_on_device_sums_equal_the_per_step_floats(tmp_path, monkeypatch):
    """train_loss is the float64 sum of float(loss) * n over the steps, as when each step
    read its loss (the device sums change when the host waits, not the numbers)."""
    steps: list[tuple[float, int]] = []
    make = trainer_mod.make_loss

    def recording(kind, *tet):
        fn = make(kind, *tet)

        def loss(seq, y):
            out = fn(seq, y)
            steps.append((float(out.detach()), len(y)))
            return out
        return loss

    monkeypatch.setattr(trainer_mod, "make_loss", recording)
    res = train(build_config({**TINY, "epochs": 1, "batch_size": 97}), None, progress=False, device="cpu")
    total = 0.0
    for value, n in steps:
        total += value * n
    seen = sum(n for _, n in steps)
    assert len(steps) > 10 and res.history[0]["train_loss"] == total / seen


def test_fp16_with_loss_scaling_resumes_bit_identically(tmp_path, monkeypatch):
    """fp16 on the CPU (autocast + GradScaler): 2 epochs straight equal 1 epoch and a
    resume, because the loss scale is in the checkpoint. The scale starts high enough
    (2^20) that fp16 gradients overflow and it must come down during epoch 1."""
    monkeypatch.setattr(trainer_mod, "grad_scaler", lambda device, precision: (
        torch.amp.GradScaler(device.type, init_scale=2.0 ** 20) if precision == "fp16" else None))
    cfg = {**TINY, "model": "conv", "channels": [4], "precision": "fp16", "lr": 0.05}
    straight = train(build_config(cfg), tmp_path / "a", progress=False, device="cpu")
    train(build_config({**cfg, "epochs": 1}), tmp_path / "b", progress=False, device="cpu")
    resumed = train(None, tmp_path / "b", resume=True, epochs=2, progress=False, device="cpu")
    scale = load_checkpoint(tmp_path / "b" / "last.pt")["scaler_state"]["scale"]
    assert scale < 2.0 ** 20  # the scale moved (overflowing steps were skipped): resume must restore it
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.cuda
def test_cuda_checkpoint_is_portable_and_training_matches_the_cpu(tmp_path):
    """On a GPU: the model, batches and method state live on CUDA; the checkpoint holds CPU
    tensors; in fp32 (TF32 off) one epoch's loss is the CPU's up to summation order."""
    gpu = _portable_checkpoint(tmp_path / "gpu", "cuda")
    cpu = train(build_config({**TINY, "epochs": 1}), None, progress=False, device="cpu")
    assert gpu.summary["device"].startswith("cuda:")
    assert abs(gpu.history[0]["train_loss"] - cpu.history[0]["train_loss"]) < 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["sg", "cpng", "psg", "asgl", "gsg", "dspike"])
def test_cuda_every_method_trains_and_resumes(tmp_path, method):
    """Each method's state on the GPU (CPNG probes and stats, Dspike's FDG, PDA histograms,
    ASGL masks from the CUDA generator): 2 epochs equal 1 + resume, bit for bit."""
    cfg = {**TINY, "model": "conv", "channels": [4], "method": method, "surrogate": None}
    if method == "psg":
        cfg["method_options"] = {"pda": True}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    straight = train(build_config(cfg), tmp_path / "a", progress=False, device="cuda")
    train(build_config({**cfg, "epochs": 1}), tmp_path / "b", progress=False, device="cuda")
    resumed = train(None, tmp_path / "b", resume=True, epochs=2, progress=False, device="cuda")
    for k, v in straight.model.state_dict().items():
        assert v.device.type == "cuda"
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.cuda
def test_cuda_robustness_and_energy_match_the_cpu(tmp_path):
    """The chips and the per-step noise are drawn on the CPU, so a seed names the same
    chips on the GPU; accuracies and counts agree up to spikes flipped by summation order."""
    from snn2hw.hwsim.energy import energy
    from snn2hw.hwsim.robustness import robustness

    train(build_config({**TINY, "model": "conv", "channels": [4], "epochs": 1}), tmp_path / "r",
          progress=False, device="cpu")
    kw = dict(mismatch=(0, 0.1), thermal=(0.1,), spike_loss=(0.1,), dead=(0.1,), chips=3, samples=200,
              progress=False)
    rows = [robustness([str(tmp_path / "r")], device=d, **kw)["models"][0] for d in ("cpu", "cuda")]
    for axis in rows[0]["sweeps"]:
        for a, b in zip(rows[0]["sweeps"][axis], rows[1]["sweeps"][axis]):
            assert max(abs(x - y) for x, y in zip(a["chips"], b["chips"])) <= 2 / 200, axis
    e = [energy(tmp_path / "r", samples=200, device=d)["total"] for d in ("cpu", "cuda")]
    assert abs(e[0]["spikes"] - e[1]["spikes"]) <= 1e-3 * e[0]["spikes"]


@pytest.mark.parametrize("device,cuda,env,expected", [
    ("cpu", True, None, "gloo"),                       # a CPU run never needs NCCL
    ("cuda", True, None, "cpu:gloo,cuda:nccl"),        # GPU tensors over NCCL, CPU ones over gloo
    ("cuda", False, None, "gloo"),
    ("cpu", True, "nccl", "nccl"),                     # the override wins
])
def test_ddp_backend_follows_the_run_device(monkeypatch, device, cuda, env, expected):
    from snn2hw import distributed as dist
    from snn2hw.train.ddp import DataParallel

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if env:
        monkeypatch.setenv("SNN2HW_DIST_BACKEND", env)
    else:
        monkeypatch.delenv("SNN2HW_DIST_BACKEND", raising=False)
    monkeypatch.setattr(dist, "init_from_env", lambda backend=None: chosen.append(backend or dist.default_backend()))
    DataParallel.from_env(0, device=torch.device(device))
    assert chosen == [expected]


def test_bf16_run_computes_its_loss_on_an_fp32_readout(monkeypatch):
    """Under bf16 the readout layer answers in bf16 (autocast is on), and the loss is
    taken on its fp32 copy."""
    seen, readout = set(), set()
    make = trainer_mod.make_loss

    def recording(kind, *tet):
        fn = make(kind, *tet)
        return lambda seq, y: (seen.add(seq.dtype), fn(seq, y))[1]

    build = trainer_mod.build_model

    def hooked(cfg):
        model = build(cfg)
        model.layers[-1].register_forward_hook(lambda m, i, out: readout.add(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(trainer_mod, "make_loss", recording)
    monkeypatch.setattr(trainer_mod, "build_model", hooked)
    train(build_config({**TINY, "epochs": 1, "model": "conv", "channels": [4], "precision": "bf16"}), None,
          progress=False, device="cpu")
    assert readout == {torch.bfloat16} and seen == {torch.float32}
