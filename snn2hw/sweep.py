"""Grids of training runs: plan, run (in parallel, resumable), collect.

Grid syntax, one axis per item: ``KEY=V1,V2,...`` (values split on commas
outside brackets, each parsed as YAML like ``--set``). KEY is any config key
(``surrogate_param``, ``lr``, ``model``, ``hidden``), a dotted key
(``method_options.k_limit``), or a bare method option (``k_limit`` is read as
``method_options.k_limit`` because it is no config key). ``METHOD:KEY=...``
makes an axis that only that method's runs vary along (other methods ignore it),
for options only one method has: ``cpng:k_limit=0.1,0.2``. Runs = methods x
the cartesian product of the axes that apply x seeds.

Linked keys move together along one axis: ``K1+K2=(a1,a2),(b1,b2)`` sets K1=a1
and K2=a2 in one run, K1=b1 and K2=b2 in another. Each key may be scoped, so one
axis can give every method its own start from "the same" shape:
``surrogate_param+asgl:alpha_init=(0.1,10),(1,1)``. The first key names the axis
and its values label the grid points (results columns, directory names).

Each run lives in ``OUT/<method>__<key>=<value>...__seed<s>/`` with a
``job.json`` (its full config). Re-running the same sweep skips runs that have a
``summary.json``, resumes those with only a ``last.pt`` and starts the rest.

Parallelism: ``distributed.run_jobs`` decides where jobs run, as for every
other set of independent jobs: under torchrun each rank trains its shard of the
grid, on each rank in up to ``workers`` local processes; the statuses come back
to every rank, and rank 0 calls ``collect_rows`` + ``write_results``: everything
else is read back from the run directories (on a file system every node sees).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ConfigError
from .train.config import MODEL_FIELDS, RUN_FIELDS, RunConfig
from .runs.files import atomic_write_text

RESERVED = {"method": "--methods", "seed": "--seeds"}


@dataclass(frozen=True)
class GridAxis:
    """One axis of the grid: one or more linked config keys and their values as written
    (parsed as YAML when applied)."""

    keys: tuple[tuple[str, str | None], ...]   # (full config key, method scope or None)
    values: tuple[tuple[str, ...], ...]        # per grid value, one entry per key

    @property
    def label(self) -> str:
        """Column name: the first key without the ``method_options.`` prefix."""
        return self.keys[0][0].removeprefix("method_options.")

    def applies(self, method: str) -> bool:
        return any(scope in (None, method) for _, scope in self.keys)

    def settings(self, method: str, i: int) -> list[str]:
        """``KEY=VALUE`` overrides of grid value ``i`` for a run of ``method``."""
        return [f"{k}={v}" for (k, scope), v in zip(self.keys, self.values[i]) if scope in (None, method)]

    @property
    def methods(self) -> set[str]:
        return {scope for _, scope in self.keys if scope}


def split_values(text: str) -> list[str]:
    """``0.5,1,[8,16]`` -> ``["0.5", "1", "[8,16]"]``: commas inside brackets stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def canonical_key(key: str) -> str:
    """A config key as ``merge_options`` takes it; a bare unknown name is a method option."""
    key = key.strip().replace("-", "_")
    if "." in key or key in RUN_FIELDS or key in MODEL_FIELDS or key == "model":
        return key
    return f"method_options.{key}"


def _strip_parens(text: str) -> str | None:
    text = text.strip()
    return text[1:-1] if text.startswith("(") and text.endswith(")") else None


def parse_grid(items: Sequence[str]) -> list[GridAxis]:
    """Parse ``[METHOD:]KEY[+[METHOD:]KEY...]=V1,V2,...`` items (see the module docstring)."""
    axes: list[GridAxis] = []
    for item in items:
        lhs, sep, rhs = item.partition("=")
        if not sep or not lhs.strip() or not rhs.strip():
            raise ConfigError(f"--param-grid expects KEY=V1,V2,... (or METHOD:KEY=...), got {item!r}")
        keys = []
        for part in lhs.split("+"):
            method, _, key = part.rpartition(":")
            key = canonical_key(key)
            if key in RESERVED:
                raise ConfigError(f"--param-grid: sweep {key!r} with {RESERVED[key]}, not the grid")
            keys.append((key, method.strip() or None))
        raw = split_values(rhs)
        if len(keys) == 1:
            values = [(v,) for v in raw]
        else:
            inner = [_strip_parens(v) for v in raw]
            values = [tuple(split_values(v)) for v in inner if v is not None]
            if len(values) != len(raw) or any(len(v) != len(keys) for v in values):
                raise ConfigError(f"--param-grid {item!r}: with {len(keys)} linked keys every value "
                                  f"is a tuple of {len(keys)}, e.g. ({','.join(['1'] * len(keys))})")
        if any(not v for t in values for v in t):
            raise ConfigError(f"--param-grid {item!r}: empty value (stray comma?)")
        if len({v[0] for v in values}) != len(values):
            raise ConfigError(f"--param-grid {item!r}: repeated value")
        for key, scope in keys:
            if any(k == key and (s is None or scope is None or s == scope) for a in axes for k, s in a.keys):
                raise ConfigError(f"--param-grid: {key!r} given twice; list all its values in one item "
                                  "(METHOD:KEY items may repeat a key only for different methods)")
        axes.append(GridAxis(tuple(keys), tuple(values)))
    return axes


def grid_from_dict(grid: dict[str, Sequence[Any]]) -> list[str]:
    """``{"surrogate_param": [0.5, 1]}`` -> ``["surrogate_param=0.5,1"]`` (API convenience)."""
    return [f"{k}=" + ",".join(json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in vals)
            for k, vals in grid.items()]


@dataclass
class SweepJob:
    """One training run of the grid."""

    method: str
    seed: int
    point: dict[str, str]        # axis label -> value as written
    config: dict[str, Any]       # the full RunConfig as a dict
    run_dir: str

    @property
    def name(self) -> str:
        return Path(self.run_dir).name


def _dir_name(method: str, point: dict[str, str], seed: int) -> str:
    parts = [method] + [f"{k}={v}" for k, v in point.items()] + [f"seed{seed}"]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "__".join(parts))


def plan_jobs(methods: Sequence[str], axes: Sequence[GridAxis], seeds: Sequence[int],
              out: str | Path, options: dict[str, Any] | None = None,
              config_file: str | None = None, overrides: Sequence[str] = ()) -> list[SweepJob]:
    """Every (method, grid point, seed) as a validated job; config errors surface here,
    before anything runs. ``options``/``config_file``/``overrides`` are common to all runs."""
    from .train.config import merge_options
    from .methods import make_method

    if not methods or not seeds:
        raise ConfigError("a sweep needs at least one method (--methods) and one seed (--seeds)")
    for item in overrides:
        key = canonical_key(item.partition("=")[0])
        if key in RESERVED:
            raise ConfigError(f"--set {item!r}: give {key} with {RESERVED[key]}")
    unknown = set().union(*(a.methods for a in axes)) - set(methods)
    if unknown:
        raise ConfigError(f"--param-grid names method(s) {sorted(unknown)} not in --methods {list(methods)}")
    jobs = []
    for method in methods:
        own = [a for a in axes if a.applies(method)]
        for combo in itertools.product(*(range(len(a.values)) for a in own)):
            point = {a.label: a.values[i][0] for a, i in zip(own, combo)}
            sets = list(overrides) + [kv for a, i in zip(own, combo) for kv in a.settings(method, i)]
            for seed in seeds:
                base = dict(options or {}, method=method, seed=int(seed))
                try:
                    cfg = merge_options(base, config_file, sets)
                    make_method(cfg.method, cfg.method_options)
                except ConfigError as exc:
                    raise ConfigError(f"sweep run {method} {point} seed {seed}: {exc}") from None
                run_dir = Path(out) / _dir_name(method, point, int(seed))
                jobs.append(SweepJob(method, int(seed), point, cfg.to_dict(), str(run_dir)))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points map to the same run directory; make the values distinct")
    return jobs


def is_finished(job: SweepJob) -> bool:
    return (Path(job.run_dir) / "summary.json").exists()


_DATA_CACHE: dict[str, Any] = {}


def run_job(job: SweepJob) -> tuple[str, str]:
    """Train one job in this process: ``(status, error)``, status in skipped/ran/resumed/failed."""
    from .data.datasets import load_dataset
    from .distributed import local_only
    from .train.trainer import train

    d = Path(job.run_dir)
    if is_finished(job):
        return "skipped", ""
    config = json.loads(json.dumps(job.config))
    stored = d / "job.json"
    if stored.exists() and json.loads(stored.read_text()) != config:
        return "failed", (f"{d} holds a run with another config (job.json differs); "
                          "remove that directory or sweep into another --out")
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stored, json.dumps(config, indent=2) + "\n")  # a kill must not leave half a file
    resume = (d / "last.pt").exists()
    # the splits do not depend on the run seed: load once per worker
    key = (config["dataset"], float(config.get("val_fraction", 0.1)))
    try:
        if key not in _DATA_CACHE:
            _DATA_CACHE[key] = load_dataset(key[0], val_fraction=key[1])
        with local_only():  # under torchrun each rank trains its own jobs, alone
            train(RunConfig.from_dict(config), d, resume=resume, progress=False, data=_DATA_CACHE[key])
    except Exception as exc:  # one failed run must not stop the grid; results.csv names it
        return "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return ("resumed" if resume else "ran"), ""


def _report_failure(progress: bool) -> Callable[[SweepJob, tuple[str, str]], None]:
    """An ``on_done`` that names a failed run as soon as it fails (the grid goes on)."""
    def on_done(job: SweepJob, result: tuple[str, str]) -> None:
        if progress and result[0] == "failed":
            from tqdm import tqdm

            tqdm.write(f"{job.name}: FAILED: {result[1]}")
    return on_done


def run_jobs(jobs: Sequence[SweepJob], workers: int | None = None, threads: int | None = None,
             progress: bool = True) -> dict[str, tuple[str, str]]:
    """Train ``jobs`` with ``distributed.run_jobs`` (torchrun ranks x local processes;
    default one worker per core, threads = cores // workers); finished runs are skipped
    without taking a worker. Returns name -> (status, error) on every rank."""
    from . import distributed as dist

    results = dist.run_jobs(run_job, jobs, workers=workers, threads=threads, progress=progress,
                            desc="sweep", unit="run",
                            skip=lambda job: ("skipped", "") if is_finished(job) else None,
                            on_done=_report_failure(progress and dist.is_main_process()))
    return {job.name: result for job, result in zip(jobs, results)}


def collect_rows(jobs: Sequence[SweepJob], status: dict[str, tuple[str, str]] | None = None
                 ) -> list[dict[str, Any]]:
    """One row per job, read from its run directory (summary.json, history.csv)."""
    from .runs.history import read_history

    rows = []
    for job in jobs:
        d = Path(job.run_dir)
        st, err = (status or {}).get(job.name, ("done" if is_finished(job) else "missing", ""))
        row: dict[str, Any] = {"run": job.name, "method": job.method, **job.point, "seed": job.seed,
                               "status": st}
        if is_finished(job):
            s = json.loads((d / "summary.json").read_text())
            hist = read_history(d / "history.csv") if (d / "history.csv").exists() else []
            row.update(test_accuracy=s["test_accuracy"], test_accuracy_at_best=s.get("test_accuracy_at_best"),
                       train_loss=hist[-1]["train_loss"] if hist else None,
                       epochs=s["epochs"], wall_time_s=s["wall_time_s"])
        row["error"] = err
        rows.append(row)
    return rows


def common_settings(jobs: Sequence[SweepJob]) -> dict[str, Any]:
    """The main settings of the runs, for the results page (``varies`` if the grid sets them)."""
    keys = {"dataset": ("dataset",), "model": ("model", "arch"), "epochs": ("epochs",),
            "timesteps": ("model", "timesteps"), "batch_size": ("batch_size",), "lr": ("lr",),
            "surrogate": ("model", "surrogate"), "surrogate_param": ("model", "surrogate_param")}
    out = {}
    for name, path in keys.items():
        values = set()
        for job in jobs:
            v: Any = job.config
            for p in path:
                v = v[p]
            values.add(json.dumps(v))
        out[name] = json.loads(values.pop()) if len(values) == 1 else "varies"
    return out


@dataclass
class SweepResult:
    out: Path
    jobs: list[SweepJob]
    rows: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] in ("failed", "missing")]


def sweep(methods: Sequence[str], grid: Sequence[str] | dict[str, Sequence[Any]], seeds: Sequence[int],
          out: str | Path, options: dict[str, Any] | None = None, config_file: str | None = None,
          overrides: Sequence[str] = (), workers: int | None = None, threads: int | None = None,
          progress: bool = True, command: str | None = None) -> SweepResult:
    """Plan, run and summarise a grid: ``OUT/results.csv`` (one row per run),
    ``OUT/results.md`` (mean and spread over seeds per grid point) and ``OUT/results.png``."""
    from .reports.sweep_report import write_results
    from . import distributed as dist

    axes = parse_grid(grid_from_dict(grid) if isinstance(grid, dict) else list(grid))
    jobs = plan_jobs(methods, axes, seeds, out, options, config_file, overrides)
    dist.init_from_env()  # torchrun: every rank runs its shard of the grid
    status = run_jobs(jobs, workers, threads, progress)
    rows = collect_rows(jobs, status)
    if not dist.is_main_process():
        return SweepResult(Path(out), jobs, rows)
    files = write_results(rows, list(dict.fromkeys(a.label for a in axes)), Path(out),
                          command=command, settings=common_settings(jobs))
    return SweepResult(Path(out), jobs, rows, files)
