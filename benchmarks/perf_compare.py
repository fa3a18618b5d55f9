"""Training-step time and memory: snn2hw against its floor, snnTorch and SpikingJelly.

    bash benchmarks/setup                          # once: .venv-bench with snntorch, spikingjelly
    .venv-bench/bin/python benchmarks/perf_compare.py [--rounds 7] [--threads 2]

One run, one machine. Every candidate trains the same network, built by
snn2hw's model builder (same synaptic layers, tdBN, pooling, direct-encoded
first layer computed once); only the spiking neuron differs:

  snn2hw           LIF module: the fused loop (core/fused.py, compiled kernel if built)
  snn2hw-plain     LIF module forced onto the plain autograd loop (lif_sequence)
  snntorch         snntorch.Leaky(beta=lam, reset "zero", atan) stepped over T
                   inside the same T-batched network
  snntorch-steps   snnTorch tutorial style: the whole network stepped over T
                   (synaptic layers on B, not T x B; BN statistics per step)
  spikingjelly     LIFNode(tau=2, decay_input=False, v_reset=0, ATan, step_mode="m"),
                   its multi-step op (CPU implementation registered by SpikingJelly)
  ann              the same layers with ReLU for LIF, on one step's batch; the
                   floor is T times its step

Same constants everywhere: lam = 0.5 (tau = 2), V_th = 1, hard reset, the
arctan surrogate 1/(1 + (pi x)^2) (snn2hw arctan beta=1 = snnTorch atan(2) =
SpikingJelly ATan(2)). A train step is forward + cross-entropy + backward.
Times are the fastest of ``--rounds`` interleaved rounds (each round runs every
candidate once in turn, so a burst of load on a shared machine hits all
alike); medians are printed too. By default torch runs one thread and the
clock is the process's CPU time, which on a busy shared machine measures the
work done rather than the other jobs (``--threads 2 --clock wall`` for the
elapsed time of a quiet machine). Peak memory is the growth of the resident set
during one training step, in a fresh subprocess per measurement (see
``peak_memory``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from snn2hw.core import _kernel  # noqa: E402
from snn2hw.core.layers import LIF  # noqa: E402
from snn2hw.models.config import ModelConfig  # noqa: E402
from snn2hw.models.network import build_model  # noqa: E402

LAM, V_TH, BATCH, INPUT, CLASSES = 0.5, 1.0, 64, (1, 28, 28), 10
NETS = {
    "mlp": dict(arch="mlp", hidden=(256, 256)),
    "conv": dict(arch="conv", channels=(16, 32), pool="avg"),
}
CANDIDATES = ("snn2hw", "snn2hw-plain", "snntorch", "snntorch-steps", "spikingjelly", "ann")


def make_snn(net: str, T: int) -> nn.Module:
    cfg = ModelConfig(input_shape=INPUT, num_classes=CLASSES, timesteps=T, lam=LAM, v_th=V_TH,
                      reset="hard", surrogate="arctan", surrogate_param=1.0, **NETS[net])
    torch.manual_seed(0)
    return build_model(cfg)


class _SnnTorchLIF(nn.Module):
    """snntorch.Leaky stepped over the time axis of (T, B, ...) currents."""

    temporal = True

    def __init__(self) -> None:
        super().__init__()
        import snntorch
        from snntorch import surrogate

        self.leaky = snntorch.Leaky(beta=LAM, threshold=V_TH, spike_grad=surrogate.atan(alpha=2.0),
                                    reset_mechanism="zero")

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros_like(c[0])
        out = []
        for ct in c:
            spk, mem = self.leaky(ct, mem)
            out.append(spk)
        return torch.stack(out)


class _SpikingJellyLIF(nn.Module):
    """SpikingJelly's multi-step LIFNode on (T, B, ...) currents."""

    temporal = True

    def __init__(self) -> None:
        super().__init__()
        from spikingjelly.activation_based import functional, neuron, surrogate

        self.node = neuron.LIFNode(tau=1.0 / (1.0 - LAM), decay_input=False, v_threshold=V_TH,
                                   v_reset=0.0, surrogate_function=surrogate.ATan(alpha=2.0),
                                   detach_reset=False, step_mode="m")
        self._reset = functional.reset_net

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        self._reset(self.node)
        return self.node(c)


def _swap_lif(model: nn.Module, make) -> nn.Module:
    """A copy of ``model`` whose LIF modules are replaced by ``make()``."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, LIF):
                setattr(m, child_name, make())
    return model


def _plain(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, LIF):
            m.use_fused = False
    return model


def _ann(model: nn.Module) -> nn.Module:
    """The same layers, ReLU for each LIF, run on one step's batch."""
    layers = [nn.ReLU() if isinstance(m, LIF) else m for m in copy.deepcopy(model).layers]
    return nn.Sequential(*layers)


class _StepLoop(nn.Module):
    """snnTorch tutorial style: every layer per step, the neurons keep state."""

    def __init__(self, model: nn.Module, T: int) -> None:
        super().__init__()
        self.layers = _swap_lif(model, _SnnTorchLIF).layers
        self.T = T

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        mems: dict[int, torch.Tensor] = {}
        out = []
        for _ in range(self.T):
            h = x
            for i, layer in enumerate(self.layers):
                if isinstance(layer, _SnnTorchLIF):
                    h, mems[i] = layer.leaky(h, mems.get(i, torch.zeros_like(h)))
                else:
                    h = layer(h)
            out.append(h)
        return torch.stack(out)


def build(candidate: str, net: str, T: int):
    """(module, step function) for one candidate; the step is forward + loss + backward."""
    snn = make_snn(net, T)
    if candidate == "ann":
        model = _ann(snn)

        def step(x, y):
            for _ in range(T):  # the floor: T separate ANN steps on the same batch
                F.cross_entropy(model(x), y).backward()
        return model, step
    model = {"snn2hw": lambda: snn, "snn2hw-plain": lambda: _plain(snn),
             "snntorch": lambda: _swap_lif(snn, _SnnTorchLIF),
             "snntorch-steps": lambda: _StepLoop(snn, T),
             "spikingjelly": lambda: _swap_lif(snn, _SpikingJellyLIF)}[candidate]()

    def step(x, y):
        F.cross_entropy(model.forward_sequence(x).mean(0), y).backward()
    return model, step


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, *INPUT, generator=g) * 2.0, torch.randint(0, CLASSES, (BATCH,), generator=g)


def time_all(nets, Ts, candidates, rounds: int, reps: int, clock=time.process_time) -> dict:
    """{(net, T, candidate): [seconds per step, one entry per round]} (interleaved)."""
    x, y = data()
    built = {(n, T, c): build(c, n, T) for n in nets for T in Ts for c in candidates}
    for model, step in built.values():  # warm-up: allocator, oneDNN primitives
        model.train()
        for _ in range(2):
            step(x, y)
    times: dict = {k: [] for k in built}
    for _ in range(rounds):
        for k, (model, step) in built.items():
            best = float("inf")
            for _ in range(reps):
                model.zero_grad(set_to_none=True)
                t0 = clock()
                step(x, y)
                best = min(best, clock() - t0)
            times[k].append(best)
    return times


def peak_memory(candidate: str, net: str, T: int) -> float:
    """MiB of peak resident memory above the start of one training step, in a fresh process,
    after one warm-up step (the same for every candidate: one-off pages are not the step's).

    glibc is told to map every block of 64 KiB or more separately, so a freed
    tensor leaves the resident set at once and the high-water mark (VmHWM,
    reset just before the step) is the step's true peak.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-probe", candidate, net, str(T)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {candidate} {net} T={T} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_probe(candidate: str, net: str, T: str) -> None:
    import gc

    x, y = data()
    model, step = build(candidate, net, int(T))
    model.train()
    # warm-up: one whole step (forward, loss, backward), so first-touch code and library
    # pages, the autograd engine's start-up and other one-off allocations are not counted
    step(x, y)
    model.zero_grad(set_to_none=True)  # the measured step allocates its gradients again
    gc.collect()
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    step(x, y)
    print((_status_kib("VmHWM") - base) / 1024.0)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
            f"compiled LIF kernel: {'yes' if _kernel.available(torch.zeros(1)) else 'no (torch loop)'}; "
            f"load average before the run: {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS))
    ap.add_argument("--timesteps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3, help="steps per candidate per round (fastest kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: the process's CPU time (default; with one thread it is the work done, "
                         "whatever else the machine runs), wall: elapsed time")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--memory-probe", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        _memory_probe(*args.memory_probe)
        return
    print(f"machine: {machine()}")
    print(f"batch {BATCH}, input {INPUT}, {args.rounds} interleaved rounds x {args.reps} steps, "
          f"{args.clock} clock, {args.threads} thread(s)\n")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = time_all(args.nets, args.timesteps, args.candidates, args.rounds, args.reps, clock)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    results: dict = {"machine": machine(), "rows": []}
    print(f"{'net':5} {'T':>2} {'candidate':15} {'step ms (best)':>14} {'(median)':>9}")
    for (n, T, c), v in best.items():
        print(f"{n:5} {T:>2} {c:15} {v * 1e3:14.2f} {med[(n, T, c)] * 1e3:9.2f}")
    print()
    header = (f"{'net':5} {'T':>2} {'snn2hw/(T*ANN)':>14} {'snnTorch/snn2hw':>15} {'steps/snn2hw':>12} "
              f"{'SJ/snn2hw':>9} {'plain/fused':>11}")
    print("ratios from the best times (goals: <= 1.3, >= 2, -, >= 1.2, -)")
    print(header)
    for n in args.nets:
        for T in args.timesteps:
            def r(a, b, src=best):
                return src[(n, T, a)] / src[(n, T, b)] if (n, T, a) in src and (n, T, b) in src else float("nan")
            row = dict(net=n, T=T, floor=r("snn2hw", "ann"), snntorch=r("snntorch", "snn2hw"),
                       snntorch_steps=r("snntorch-steps", "snn2hw"), spikingjelly=r("spikingjelly", "snn2hw"),
                       plain=r("snn2hw-plain", "snn2hw"),
                       median_floor=r("snn2hw", "ann", med), median_snntorch=r("snntorch", "snn2hw", med),
                       median_spikingjelly=r("spikingjelly", "snn2hw", med))
            results["rows"].append(row)
            print(f"{n:5} {T:>2} {row['floor']:14.2f} {row['snntorch']:15.2f} {row['snntorch_steps']:12.2f} "
                  f"{row['spikingjelly']:9.2f} {row['plain']:11.2f}")
    print("same ratios from the medians: " + "; ".join(
        f"{r['net']} T={r['T']}: {r['median_floor']:.2f}, {r['median_snntorch']:.2f}, {r['median_spikingjelly']:.2f}"
        for r in results["rows"]))
    if not args.no_memory:
        print("\npeak memory of one training step (MiB above the start, fresh process each; goal snn2hw/snnTorch <= 0.7)")
        print(f"{'net':5} {'T':>2} {'snn2hw MiB':>10} {'plain MiB':>9} {'snnTorch MiB':>12} {'SJ MiB':>7} "
              f"{'snn2hw/snnTorch':>15}")
        for n in args.nets:
            for T in args.timesteps:
                mem = {c: peak_memory(c, n, T) for c in ("snn2hw", "snn2hw-plain", "snntorch", "spikingjelly")}
                ratio = mem["snn2hw"] / mem["snntorch"]
                results["rows"].append(dict(net=n, T=T, memory_mib=mem, memory_ratio=ratio))
                print(f"{n:5} {T:>2} {mem['snn2hw']:10.1f} {mem['snn2hw-plain']:9.1f} {mem['snntorch']:12.1f} "
                      f"{mem['spikingjelly']:7.1f} {ratio:15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
