"""Tables of the papers'-regime reproduction (paper_regime.md) from its run directories.

Usage: python docs/results/paper_regime.py RUNS_DIR OUT_DIR
Reads RUNS_DIR/<dataset>/<block>/<run>/{summary.json,history.csv} (paper_regime.sh),
writes OUT_DIR/tables.md (mean ± std over seeds of the final test accuracy, and of the
adapted parameter's final value) and OUT_DIR/runs.csv (one row per run).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def parse_run(name: str) -> tuple[str, dict[str, str], int]:
    method, *parts = name.split("__")
    keys = dict(p.split("=", 1) for p in parts if "=" in p)
    return method, keys, int(parts[-1].removeprefix("seed"))


def load(runs: Path) -> list[dict]:
    rows = []
    for summary in sorted(runs.glob("*/*/*/summary.json")):
        d = summary.parent
        method, keys, seed = parse_run(d.name)
        s = json.loads(summary.read_text())
        with open(d / "history.csv") as f:
            last = list(csv.DictReader(f))[-1]
        params = {k: float(v) for k, v in last.items() if v and k.split("/")[0] in ("beta", "gamma", "alpha", "b")}
        rows.append(dict(dataset=d.parent.parent.name, block=d.parent.name, method=method, seed=seed,
                         final=s["final_test_accuracy"], at_best=s["test_accuracy_at_best"],
                         epochs=s["epochs"], params=params, **keys))
    return rows


def cell(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    n = "" if len(values) == 3 else f" (n={len(values)})"
    return f"{m:.{digits}f} ± {sd:.{digits}f}{n}" if len(values) > 1 else f"{m:.{digits}f}{n}"


def pick(rows, **want) -> list[dict]:
    return [r for r in rows if all(str(r.get(k)) == str(v) for k, v in want.items())]


def first_layer_param(r: dict) -> float:
    """The adapted parameter's final value in the first spiking layer (nan: none adapted)."""
    return next(iter(r["params"].values()), float("nan"))


def table(title: str, cols: list[str], lines: list[tuple[str, list[list[dict]]]], param: bool = False) -> str:
    out = [f"**{title}**", "", "| | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for label, groups in lines:
        out.append(f"| {label} | " + " | ".join(cell([r["final"] for r in g]) for g in groups) + " |")
        if param:
            out.append(f"| ↳ final value, first layer | " + " | ".join(
                cell([first_layer_param(r) for r in g], 2) for g in groups) + " |")
    return "\n".join(out) + "\n"


def tables(rows: list[dict]) -> str:
    parts = []
    for ds in ("mnist1d", "digits"):
        R = pick(rows, dataset=ds)
        if not R:
            continue
        parts.append(f"### {ds} conv\n")
        c = pick(R, block="cpng")
        starts = ["1", "20"]
        lines = []
        for shape in ("triangle", "rectangular"):
            lines.append((f"fixed {shape}", [pick(c, method="sg", surrogate=shape, surrogate_param=b) for b in starts]))
            lines.append((f"{shape} + CPNG", [pick(c, method="cpng", surrogate=shape, surrogate_param=b) for b in starts]))
        parts.append(table("CPNG (Table 2 layout): final test accuracy; columns: beta0",
                           [f"beta0 = {b}" for b in starts], lines))
        cp = pick(c, method="cpng")
        parts.append("CPNG's final beta (first layer): " + "; ".join(
            f"{s} from {b}: {cell([first_layer_param(r) for r in pick(cp, surrogate=s, surrogate_param=b)], 2)}"
            for s in ("triangle", "rectangular") for b in starts) + "\n")
        a = pick(R, block="asgl")
        widths = ["0.5", "1", "2.5", "5", "10"]
        parts.append(table("ASGL (Table 2 layout): final test accuracy; columns: initial width alpha0",
                           [f"alpha0 = {w}" for w in widths],
                           [("rectangular SG, width alpha fixed", [pick(a, method="sg", alpha_init=w) for w in widths]),
                            ("ASGL", [pick(a, method="asgl", alpha_init=w) for w in widths])], param=False))
        parts.append("ASGL's final width (first layer): " + ", ".join(
            f"{w}: {cell([first_layer_param(r) for r in pick(a, method='asgl', alpha_init=w)], 2)}" for w in widths) + "\n")
        p = pick(R, block="psg")
        gammas = ["1", "2", "5"]
        lines = [("arctan (PSG shape), gamma fixed", [pick(p, method="sg", gamma_init=g) for g in gammas])]
        for pda in ("false", "true"):
            for dg in ("analytic", "printed"):
                lines.append((f"PSG{' + PDA' if pda == 'true' else ''}, do/dgamma {dg}",
                              [pick(p, method="psg", gamma_init=g, pda=pda, dgamma=dg) for g in gammas]))
        parts.append(table("PSG / PSG+PDA (Table 2 layout): final test accuracy; columns: gamma0",
                           [f"gamma0 = {g}" for g in gammas], lines, param=False))
        parts.append("PSG's final gamma (first layer): " + "; ".join(
            f"{'PDA ' if pda == 'true' else ''}{dg} from {g}: "
            f"{cell([first_layer_param(r) for r in pick(p, method='psg', gamma_init=g, pda=pda, dgamma=dg)], 2)}"
            for pda in ("false", "true") for dg in ("analytic", "printed") for g in gammas) + "\n")
        d = pick(R, block="dspike")
        parts.append(table("Dspike: final test accuracy", ["b0 = 1"],
                           [("Dspike, b fixed", [pick(d, method="sg")]),
                            ("Dspike, b tuned by FDG", [pick(d, method="dspike")])], param=True))
        g = pick(R, block="gsg")
        parts.append(table("GSG (Eq. 4 soft reset): final test accuracy", ["beta"],
                           [("gsg_tanh, beta_min = 0.5 fixed", [pick(g, method="sg", surrogate_param="0.5")]),
                            ("gsg_tanh, beta_max = 10 fixed", [pick(g, method="sg", surrogate_param="10")]),
                            ("GSG schedule 0.5 -> 10", [pick(g, method="gsg")])]))
    return "\n".join(parts)


def main(runs: str, out: str) -> None:
    rows = load(Path(runs))
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "tables.md").write_text(tables(rows))
    keys = sorted({k for r in rows for k in r if k != "params"})
    with open(o / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + ["first_layer_param"])
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r.get(k, "") for k in keys},
                        "first_layer_param": first_layer_param(r) if r["params"] else ""})
    print(f"{len(rows)} runs -> {o / 'tables.md'}, {o / 'runs.csv'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
