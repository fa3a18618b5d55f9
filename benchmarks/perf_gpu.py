"""GPU training-step time and peak memory: snn2hw against snnTorch and SpikingJelly,
on CIFAR-10 shapes (3x32x32, 10 classes), in one run.

    bash benchmarks/setup                                   # once: .venv-bench
    .venv-bench/bin/python benchmarks/perf_gpu.py           # on a CUDA machine
    .venv-bench/bin/python benchmarks/perf_gpu.py --cpu-smoke   # anywhere: tiny shapes, checks the script

Networks (snn2hw's builders, tdBN, direct-encoded input): ``conv`` (3 blocks of
64, 128, 256 channels, average pooling) and ``resnet19`` (128-256-512, FC 256:
the tdBN paper's ResNet-19), batch 64 and 128, T = 4. As in perf_compare.py
only the spiking neuron differs between candidates (lam = 0.5, V_th = 1, hard
reset, arctan surrogate):

  snn2hw        the fused LIF (core/fused.py; on a GPU its torch loop)
  snn2hw-plain  the plain autograd loop (lif_sequence)
  snntorch      snntorch.Leaky stepped over T
  spikingjelly  LIFNode(step_mode="m"). SpikingJelly 2.0 picks its implementation
                itself on a GPU (its compiled CUDA kernel, else Triton, else the
                torch reference; SJ_LIF_CUDA_IMPLEMENTATION overrides) and the
                torch reference on a CPU: the row names what ran

A step is forward + cross-entropy + backward + an Adam step (``--precision bf16``
puts every candidate's forward under the same autocast). Time: CUDA events around
``--reps`` steps after warm-up, the fastest of ``--rounds`` interleaved rounds.
Peak memory: ``torch.cuda.max_memory_allocated`` during one step above what was
allocated before it (CUDA only; perf_compare.py measures the CPU's).

``--cpu-smoke`` runs the same code on the CPU with tiny shapes (8x8 images,
batch 4, T = 2, narrow layers, one round): it tests the script, not the speed.
Candidates whose library is missing are reported as such, not failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from perf_compare import LAM, V_TH, _plain, _SnnTorchLIF, _SpikingJellyLIF, _swap_lif  # noqa: E402
from snn2hw.devices import autocast, describe, resolve_device, synchronize, use_device  # noqa: E402
from snn2hw.errors import ConfigError  # noqa: E402
from snn2hw.models.config import ModelConfig  # noqa: E402
from snn2hw.models.network import build_model  # noqa: E402

CANDIDATES = ("snn2hw", "snn2hw-plain", "snntorch", "spikingjelly")
FULL = {"input": (3, 32, 32), "batches": (64, 128), "T": 4, "rounds": 5, "reps": 5,
        "nets": {"conv": dict(arch="conv", channels=(64, 128, 256), pool="avg"),
                 "resnet19": dict(arch="resnet19", width=64)}}
SMOKE = {"input": (3, 8, 8), "batches": (4,), "T": 2, "rounds": 1, "reps": 1,
         "nets": {"conv": dict(arch="conv", channels=(4, 8), pool="avg"),
                  "resnet19": dict(arch="resnet19", width=2)}}


def spikingjelly_backend(device: torch.device) -> str | None:
    """The LIF implementation SpikingJelly runs on ``device`` (after one step with it), or
    None if SpikingJelly is missing."""
    try:
        from spikingjelly.activation_based import functional
    except ImportError:
        return None
    node = _SpikingJellyLIF().to(device)
    node(torch.randn(2, 3, 5, device=device, requires_grad=True)).sum().backward()
    return str(functional.neuron_implementation("lif", device)["implementation"])


def available(candidate: str, sj_backend: str | None) -> str | None:
    """Why ``candidate`` cannot run here, or None."""
    if candidate == "snntorch":
        try:
            import snntorch  # noqa: F401
        except ImportError:
            return "snntorch not installed (bash benchmarks/setup)"
    if candidate == "spikingjelly" and sj_backend is None:
        return "spikingjelly not installed (bash benchmarks/setup)"
    return None


def make_model(candidate: str, net: dict, shape: tuple, T: int) -> nn.Module:
    cfg = ModelConfig(input_shape=shape, num_classes=10, timesteps=T, lam=LAM, v_th=V_TH, reset="hard",
                      surrogate="arctan", surrogate_param=1.0, **net)
    torch.manual_seed(0)
    snn = build_model(cfg)
    return {"snn2hw": lambda: snn, "snn2hw-plain": lambda: _plain(snn),
            "snntorch": lambda: _swap_lif(snn, _SnnTorchLIF),
            "spikingjelly": lambda: _swap_lif(snn, _SpikingJellyLIF)}[candidate]()


def make_step(model: nn.Module, device: torch.device, precision: str):
    """One training step: forward (under autocast for bf16/fp16), CE, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            seq = model.forward_sequence(x)
        F.cross_entropy(seq.float().mean(0), y).backward()
        opt.step()
    return step


def time_steps(step, x, y, device: torch.device, reps: int) -> float:
    """Seconds per step over ``reps`` steps (CUDA events on a GPU, the wall clock on a CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            step(x, y)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        step(x, y)
    return (time.perf_counter() - t0) / reps


def peak_memory(step, x, y, device: torch.device) -> float | None:
    """MiB allocated at the peak of one step above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(x, y)
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def run(settings: dict, device: torch.device, precision: str, candidates: list[str], nets: list[str]) -> dict:
    """{"rows": [...], "skipped": {candidate: reason}} for every (net, batch, candidate)."""
    sj = spikingjelly_backend(device)
    skipped = {c: why for c in candidates if (why := available(c, sj)) is not None}
    live = [c for c in candidates if c not in skipped]
    T, shape = settings["T"], settings["input"]
    rows = []
    for net in nets:
        for batch in settings["batches"]:
            g = torch.Generator().manual_seed(0)
            x = (torch.rand(batch, *shape, generator=g) * 2.0).to(device)
            y = torch.randint(0, 10, (batch,), generator=g).to(device)
            built = {}
            for c in live:
                model = make_model(c, settings["nets"][net], shape, T).to(device).train()
                step = make_step(model, device, precision)
                for _ in range(2):  # warm-up: allocator, cuDNN/oneDNN algorithm choice, kernels
                    step(x, y)
                built[c] = (model, step)
            times: dict[str, list[float]] = {c: [] for c in live}
            for _ in range(settings["rounds"]):  # interleaved: a burst of load hits every candidate
                for c, (_, step) in built.items():
                    times[c].append(time_steps(step, x, y, device, settings["reps"]))
            for c, (_, step) in built.items():
                rows.append({"net": net, "batch": batch, "T": T, "candidate": c,
                             "backend": sj if c == "spikingjelly" else None,
                             "step_ms": 1e3 * min(times[c]), "step_ms_median": 1e3 * statistics.median(times[c]),
                             "peak_mib": peak_memory(step, x, y, device)})
            del built
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"rows": rows, "skipped": skipped, "spikingjelly_backend": sj}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script only")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--nets", nargs="+", default=list(FULL["nets"]), choices=list(FULL["nets"]))
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--batches", nargs="+", type=int, help="batch sizes (default 64 128)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    settings = dict(SMOKE if args.cpu_smoke else FULL)
    for key in ("batches", "rounds", "reps"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    try:
        device = resolve_device(args.device or ("cpu" if args.cpu_smoke else "cuda"))
    except ConfigError as exc:
        print(f"perf_gpu: {exc}; or pass --cpu-smoke to check the script on the CPU", file=sys.stderr)
        return 2
    use_device(device, args.precision)
    header = (f"device {describe(device)}, torch {torch.__version__}, Python {platform.python_version()}; "
              f"{settings['input']} images, T = {settings['T']}, {args.precision}; "
              f"best of {settings['rounds']} rounds x {settings['reps']} steps"
              + ("; CPU SMOKE RUN (tiny shapes: not a measurement)" if args.cpu_smoke else ""))
    print(header)
    result = run(settings, device, args.precision, args.candidates, args.nets)
    for c, why in result["skipped"].items():
        print(f"  {c}: skipped, {why}")
    print(f"{'net':9} {'batch':>5} {'candidate':30} {'step ms':>9} {'(median)':>9} {'peak MiB':>9}  vs snn2hw")
    best = {(r["net"], r["batch"]): r["step_ms"] for r in result["rows"] if r["candidate"] == "snn2hw"}
    for r in result["rows"]:
        mem = f"{r['peak_mib']:9.1f}" if r["peak_mib"] is not None else f"{'n/a':>9}"
        name = r["candidate"] + (f" ({r['backend']})" if r["backend"] else "")
        ratio = r["step_ms"] / best[(r["net"], r["batch"])] if (r["net"], r["batch"]) in best else float("nan")
        print(f"{r['net']:9} {r['batch']:>5} {name:30} {r['step_ms']:9.2f} {r['step_ms_median']:9.2f} {mem}  "
              f"{ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
