"""Data-parallel training on 2 CPU processes (gloo, loopback), against 1 process.

One spawn of 2 ranks runs every scenario (torch start-up dominates), saves what
each rank ended with, and the tests compare: rank 0 vs rank 1 (bit-identical),
2 ranks with global batch B vs 1 process with batch B (float tolerance).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from snn2hw.data.datasets import DataSplit, load_digits
from snn2hw.train import ddp
from snn2hw import distributed as dist
from snn2hw.train import trainer
from snn2hw.train.config import build_config
from snn2hw.methods import METHODS

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]


def small_digits() -> DataSplit:
    """249 training samples: with B = 32 the last batch (25) splits 13/12, so the
    uneven-share weighting is exercised too."""
    d = load_digits()
    return DataSplit("digits", d.x_train[:249], d.y_train[:249], d.x_test[:101], d.y_test[:101],
                     d.num_classes)


def mlp(**kw) -> dict:
    return dict(dict(epochs=1, batch_size=32, hidden=[24], timesteps=3, lr=5e-3), **kw)


def conv(**kw) -> dict:
    return dict(dict(epochs=2, batch_size=32, model="conv", channels=[4, 8], timesteps=2,
                     lr=5e-3), **kw)


SWEEP_OPTIONS = dict(epochs=1, hidden=[16], timesteps=2)
SCENARIOS: dict[str, dict] = {
    "sg": mlp(),
    # conv blocks have no bias before tdBN (a bias there gets a ~0 gradient that
    # Adam's g/sqrt(v) turns into noise-sized steps: not comparable across runs)
    "sync_bn": conv(epochs=1, sync_bn=True),
    "local_bn": conv(epochs=1),
}


@dataclass
class _Drift:
    """A broken method: its state depends on the rank (the sync check must catch it)."""

    name: ClassVar[str] = "drift"

    def setup(self, model):
        pass

    def on_epoch_start(self, ctx):
        return {}

    def extra_loss(self, model):
        return None

    def on_epoch_end(self, ctx):
        return {}

    def state_dict(self):
        return {"b": 1.0 + dist.rank()}

    def load_state_dict(self, state):
        pass


def _record_epochs(monkeypatch_target, log: list) -> None:
    """Make trainer.make_method wrap on_epoch_end to log (model state, method state)."""
    make = monkeypatch_target.make_method

    def make_logged(name, options=None):
        method = make(name, options)
        end = method.on_epoch_end

        def on_epoch_end(ctx):
            row = end(ctx)
            log.append({"model": {k: v.clone() for k, v in ctx.model.state_dict().items()},
                        "method": method.state_dict()})
            return row

        method.on_epoch_end = on_epoch_end
        return method

    monkeypatch_target.make_method = make_logged


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    data, res = small_digits(), {}
    # RNG: own stream per rank during the batches (ASGL masks), common stream around them
    par, net = ddp.DataParallel(seed=0), torch.nn.Linear(2, 2)
    torch.manual_seed(5)
    par.begin_batches(net, epoch=0)
    during = torch.rand(3)
    par.end_batches(net, 0.0, 0, 0)
    res["rng"] = (during, torch.rand(3))
    for name, cfg in SCENARIOS.items():
        res[name] = trainer.train(build_config(cfg), progress=False, data=data).model.state_dict()
    original = trainer.make_method
    for name in METHODS:
        log: list = []
        _record_epochs(trainer, log)
        try:
            trainer.train(build_config(conv(method=name, sync_bn=True)), progress=False, data=data)
        finally:
            trainer.make_method = original
        res[f"method/{name}"] = log
    # checkpoint written by 2 ranks, resumed by 1 process in the test
    trainer.train(build_config(mlp()), out_dir=Path(out) / "run", progress=False, data=data)
    # robustness: the noise levels are spread over the ranks, every rank gets the report
    from snn2hw.hwsim.robustness import robustness

    res["robustness"] = robustness([str(Path(out) / "run")], progress=False, **robustness_args(out))
    # a method that lets ranks drift is stopped with a clear error
    METHODS["drift"] = _Drift
    try:
        trainer.train(build_config(mlp(method="drift")), progress=False, data=data)
        res["drift"] = None
    except ddp.OutOfSyncError as exc:
        res["drift"] = str(exc)
    finally:
        del METHODS["drift"]
    # independent jobs: round-robin shards, results back in order on every rank
    res["my_jobs"] = dist.shard_jobs(list(range(7)))
    res["jobs"] = dist.run_jobs(_job, list(range(7)))
    # the sweep verb: each rank trains its share of the grid, rank 0 writes the results
    from snn2hw.sweep import sweep

    options = dict(SWEEP_OPTIONS, dataset=f"npz:{Path(out) / 'small.npz'}")
    result = sweep(["sg"], ["lr=0.002,0.005"], [0], Path(out) / "sweep", options=options,
                   workers=1, progress=False)
    res["sweep"] = (result.rows, [str(f) for f in result.files])
    torch.save(res, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def robustness_args(out) -> dict:
    return dict(mismatch=[0.0, 0.1, 0.3], thermal=[0.2], chips=3, samples=60,
                dataset=f"npz:{Path(out) / 'small.npz'}")


def _job(i: int) -> tuple[int, int, bool]:
    return i, i * i, dist.is_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("ddp")
    d = small_digits()
    np.savez(out / "small.npz", x=d.x_train.numpy(), y=d.y_train.numpy(), x_test=d.x_test.numpy(),
             y_test=d.y_test.numpy())
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "rank0.pt", weights_only=False), torch.load(out / "rank1.pt", weights_only=False), out


def single(cfg: dict | None, **kw) -> trainer.RunResult:
    """One process (1 torch thread, like each rank: tiny batches run faster so)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trainer.train(cfg and build_config(cfg), progress=False, data=small_digits(), **kw)
    finally:
        torch.set_num_threads(before)


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_close(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def test_ranks_end_with_identical_weights(ranks):
    r0, r1, _ = ranks
    for name in SCENARIOS:
        assert_identical(r0[name], r1[name])


def test_two_ranks_match_one_process_with_the_global_batch(ranks):
    r0, _, _ = ranks
    ref = single(SCENARIOS["sg"]).model.state_dict()
    assert_close(r0["sg"], ref)
    # and one epoch did move the weights far more than the tolerance
    init = trainer.build_model(trainer.model_config_for(build_config(SCENARIOS["sg"]), small_digits()))
    assert (ref["layers.1.weight"] - init.state_dict()["layers.1.weight"]).abs().max() > 1e-2


def test_sync_bn_matches_one_process_batch_norm(ranks):
    r0, _, _ = ranks
    ref = single(SCENARIOS["local_bn"]).model.state_dict()  # one process: plain F.batch_norm
    assert_close(r0["sync_bn"], ref)
    # without sync each rank normalises its half-batch: measurably different
    diff = max(float((r0["local_bn"][k] - ref[k]).abs().max()) for k in ref)
    assert diff > 1e-3


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_state_equal_on_both_ranks_after_every_epoch(ranks, name):
    r0, r1, _ = ranks
    log0, log1 = r0[f"method/{name}"], r1[f"method/{name}"]
    assert len(log0) == len(log1) == conv()["epochs"]
    for e0, e1 in zip(log0, log1):
        assert_identical(e0["model"], e1["model"])
        assert ddp.fingerprint(torch.nn.Module(), e0["method"]) == ddp.fingerprint(torch.nn.Module(), e1["method"])


# methods without randomness in training: 2 ranks with sync-BN train what 1 process trains
DETERMINISTIC = sorted({"sg", "cpng", "psg", "gsg", "dspike"} & set(METHODS))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_method_on_two_ranks_matches_one_process(ranks, name):
    r0, _, _ = ranks
    log: list = []
    original = trainer.make_method
    _record_epochs(trainer, log)
    try:
        single(conv(method=name))
    finally:
        trainer.make_method = original
    for e2, e1 in zip(r0[f"method/{name}"], log, strict=True):
        assert_close(e2["model"], e1["model"], atol=1e-4)
        assert_close(numeric_leaves(e2["method"]), numeric_leaves(e1["method"]), atol=1e-4)


def numeric_leaves(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """A method's state_dict flattened to name -> float64 tensor (for assert_close)."""
    if isinstance(state, dict):
        return {k: v for key, x in state.items() for k, v in numeric_leaves(x, f"{prefix}{key}.").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, x in enumerate(state) for k, v in numeric_leaves(x, f"{prefix}{i}.").items()}
    if isinstance(state, (int, float, torch.Tensor)):
        return {prefix: torch.as_tensor(state, dtype=torch.float64)}
    return {}


def test_batches_draw_per_rank_streams_hooks_the_common_one(ranks):
    r0, r1, _ = ranks
    assert not torch.equal(r0["rng"][0], r1["rng"][0])  # ASGL masks differ per rank
    torch.manual_seed(5)
    common = torch.rand(3)
    assert torch.equal(r0["rng"][1], common) and torch.equal(r1["rng"][1], common)


def test_drifting_method_is_reported(ranks):
    r0, r1, _ = ranks
    for r in (r0, r1):
        assert r["drift"] is not None and "method.b" in r["drift"] and "epoch 1" in r["drift"]


def test_jobs_are_sharded_round_robin_and_gathered_in_order(ranks):
    r0, r1, _ = ranks
    assert r0["my_jobs"] == [0, 2, 4, 6] and r1["my_jobs"] == [1, 3, 5]
    expected = [(i, i * i, False) for i in range(7)]  # each job ran alone (local_only)
    assert r0["jobs"] == r1["jobs"] == expected


def test_resume_two_process_checkpoint_with_one_process(ranks, tmp_path):
    _, _, out = ranks
    assert sorted(p.name for p in (out / "run").iterdir()) == ["best.pt", "history.csv", "last.pt", "summary.json"]
    run = shutil.copytree(out / "run", tmp_path / "run")  # other tests read the 2-rank run
    resumed = single(None, out_dir=run, resume=True, epochs=2)
    straight = single(mlp(epochs=2))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert_close(resumed.model.state_dict(), straight.model.state_dict())
    assert resumed.history[0]["train_loss"] == pytest.approx(straight.history[0]["train_loss"], rel=1e-5)


def test_sweep_shards_its_grid_over_ranks(ranks):
    r0, r1, out = ranks
    (rows0, files0), (_, files1) = r0["sweep"], r1["sweep"]
    assert files0 and not files1  # rank 0 alone writes results.csv/md/png
    assert all(Path(f).exists() for f in files0)
    assert [r["status"] for r in rows0] == ["ran", "ran"]
    for row in rows0:  # each grid point equals the same run trained alone
        ref = single(dict(SWEEP_OPTIONS, lr=float(row["lr"])))
        assert row["test_accuracy"] == pytest.approx(ref.summary["test_accuracy"], abs=1e-9)


def test_robustness_levels_spread_over_ranks_equal_one_process(ranks):
    r0, r1, out = ranks
    from snn2hw.hwsim.robustness import robustness

    ref = robustness([str(out / "run")], progress=False, **robustness_args(out))
    for r in (r0, r1):
        assert r["robustness"]["models"][0]["sweeps"] == ref["models"][0]["sweeps"]
    assert [row["level"] for row in ref["models"][0]["sweeps"]["mismatch"]] == [0.0, 0.1, 0.3]


@pytest.mark.slow  # two spawned interpreters import torch
def test_run_jobs_in_worker_processes():
    assert dist.run_jobs(_job, [3, 1, 2], workers=2) == [(3, 9, False), (1, 1, False), (2, 4, False)]


def test_shard_keeps_the_global_batch_and_skips_tiny_tails(monkeypatch):
    par = ddp.DataParallel()
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    monkeypatch.setattr(dist, "rank", lambda: 2)
    part, share = par.shard(torch.arange(10))
    assert part.tolist() == [7, 8, 9] and share == pytest.approx(0.3)
    assert par.shard(torch.arange(2)) == (None, 0.0)


@pytest.mark.slow
def test_cli_nproc_launches_torchrun_and_resumes_with_one_process(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = [sys.executable, "-m", "snn2hw", "train", "--no-progress"]
    p = subprocess.run(common + ["--nproc", "2", "--epochs", "1", "--hidden", "16", "--timesteps", "2",
                                 "--out", str(run)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("final test accuracy") == 1  # rank 0 alone reports
    p = subprocess.run(common + ["--resume", str(run), "--epochs", "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]



def test_nproc_relaunch_reproduces_the_command_line():
    from snn2hw.train.config import merge_options
    from snn2hw.cli import train as cli_train
    from snn2hw.cli.main import build_parser

    def config_of(argv):
        args = build_parser().parse_args(argv)
        opts = {f.lstrip("-").replace("-", "_"): getattr(args, f.lstrip("-").replace("-", "_"))
                for f, _ in cli_train.FLAGS}
        opts = {k: v for k, v in opts.items() if v is not None}
        opts["arch"] = opts.pop("model", "mlp")
        return args, merge_options(opts, args.config, cli_train._method_sets(args) + args.set)

    argv = ["train", "--nproc", "2", "--method", "cpng", "--k-limit", "0.3", "--hidden", "16", "8",
            "--sync-bn", "--lr", "0.01", "--set", "tdbn=true", "--out", "runs/x", "--no-progress"]
    args, config = config_of(argv)
    relaunched = cli_train._argv(args)
    assert "--nproc" not in relaunched and relaunched[-1] == "--no-progress" and "runs/x" in relaunched
    args2, config2 = config_of(relaunched)
    assert config2.to_dict() == config.to_dict()
    assert config.sync_bn and config.method_options == {"k_limit": 0.3} and config.model.hidden == (16, 8)


def test_run_jobs_skips_known_results_reports_each_job_and_sets_threads(monkeypatch):
    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    ran, done = [], []
    before = torch.get_num_threads()

    def fn(job: int) -> tuple[int, int]:
        ran.append(job)
        return job * 10, torch.get_num_threads()

    out = dist.run_jobs(fn, [1, 2, 3, 4], skip=lambda j: (j, -1) if j % 2 else None,
                        on_done=lambda job, res: done.append((job, res)))
    assert out == [(1, -1), (20, 6), (3, -1), (40, 6)]  # in job order; odd jobs never ran
    assert ran == [2, 4] and done == [(2, (20, 6)), (4, (40, 6))]
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    assert dist.run_jobs(fn, [5], threads=2) == [(50, 2)]


def test_available_cores_is_the_affinity_shared_by_local_ranks(monkeypatch):
    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: {0, 3, 5, 7, 9}, raising=False)
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 64)
    assert dist.available_cores() == 5  # the affinity mask, not the machine's 64 cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert dist.available_cores() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert dist.available_cores() == 1
