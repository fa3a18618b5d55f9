"""Rendering of the hwsim reports: the robustness report (report.json, report.md,
one PNG per noise axis) and the energy table.

The numbers come from ``snn2hw.hwsim`` (``robustness`` and ``energy`` return
plain dicts); this module only lays them out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..hwsim.robustness import AXES
from ..runs.files import atomic_write_text
from .markdown import provenance_lines
from .plots import pyplot, save_figure


def write_robustness_report(report: dict, out: str | Path) -> list[Path]:
    """report.json, report.md and one PNG per noise axis in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    pngs = plot_robustness(report, out)
    atomic_write_text(out / "report.md", render_robustness_markdown(report, [p.name for p in pngs]))
    return [out / "report.json", out / "report.md", *pngs]


def plot_robustness(report: dict, out: Path) -> list[Path]:
    """``out/<axis>.png`` per noise axis: accuracy against level, one line per model
    (mean ± std over chips, band = min to max)."""
    plt = pyplot()
    paths = []
    for axis in report["settings"]["levels"]:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for m in report["models"]:
            rows = m["sweeps"][axis]
            lv = [r["level"] for r in rows]
            mean = [100 * r["mean"] for r in rows]
            ax.fill_between(lv, [100 * r["min"] for r in rows], [100 * r["max"] for r in rows], alpha=0.15)
            ax.errorbar(lv, mean, yerr=[100 * r["std"] for r in rows], marker="o", capsize=3,
                        label=m["label"])
        ax.set_xlabel(AXES[axis][1])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"accuracy vs {axis.replace('_', ' ')} "
                     f"({report['settings']['chips']} chips/level: mean ± std, band = min-max)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out / f"{axis}.png", dpi=120))
    return paths


def render_robustness_markdown(report: dict, images: Sequence[str] = ()) -> str:
    """report.md: provenance, the models, and per axis a table of accuracy per level
    (linking ``<axis>.png`` when it is among ``images``)."""
    s = report["settings"]
    lines = ["# Hardware-noise robustness", "",
             *provenance_lines(report["command"], report["versions"]),
             f"{s['chips']} simulated chips per level, seed {s['seed']}; mismatch on "
             f"{', '.join(s['mismatch_params'])} ({s['mismatch_model']}); thermal noise: {s['thermal_unit']}.  ",
             f"Quantisation: {s['quantisation']['name'] if s['quantisation'] else 'none (float)'}.  ",
             f"Wall time {report['wall_time_s']:.1f} s ({report['seconds_per_chip'] * 1000:.1f} ms per simulated chip).",
             "", "| model | checkpoint sha256 | dataset | test-split samples | T | float accuracy |", "|---|---|---|---|---|---|"]
    for m in report["models"]:
        lines.append(f"| {m['label']} | `{m['sha256'][:16]}` | {m['dataset']} | {m['samples']} | "
                     f"{m['timesteps']} | {100 * m['float_accuracy']:.2f} % |")
    for axis, levels in s["levels"].items():
        lines += ["", f"## {AXES[axis][1]}", "",
                  "Accuracy in %, mean ± std over chips [min, max].", "",
                  "| model | " + " | ".join(f"{v:g}" for v in levels) + " |",
                  "|---" * (len(levels) + 1) + "|"]
        for m in report["models"]:
            cells = [f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} [{100 * r['min']:.1f}, {100 * r['max']:.1f}]"
                     for r in m["sweeps"][axis]]
            lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
        img = f"{axis}.png"
        if img in images:
            lines += ["", f"![accuracy vs {axis}]({img})"]
    for m in report["models"]:
        if "target" in m:
            lines += _target_lines(m)
    return "\n".join(lines) + "\n"


def _target_lines(m: dict) -> list[str]:
    """The 'what will this lose on the chip' table: the target's quantisation with mismatch
    (rows) and thermal noise (columns) at once, and the same model's energy."""
    t, rows = m["target"], m["target"]["combined"]
    thermal = list(dict.fromkeys(r["thermal"] for r in rows))
    mismatch = list(dict.fromkeys(r["mismatch"] for r in rows))
    cell = {(r["mismatch"], r["thermal"]): r for r in rows}
    lines = ["", f"## On {t['name']}: its quantisation with mismatch and thermal noise combined ({m['label']})", "",
             f"Accuracy in %, mean ± std over chips; float accuracy {100 * m['float_accuracy']:.2f} %. "
             "Rows: mismatch xi; columns: thermal sigma.", "",
             "| mismatch \\ thermal | " + " | ".join(f"{v:g}" for v in thermal) + " |",
             "|---" * (len(thermal) + 1) + "|"]
    for mm in mismatch:
        lines.append(f"| {mm:g} | " + " | ".join(
            f"{100 * cell[(mm, tt)]['mean']:.1f} ± {100 * cell[(mm, tt)]['std']:.1f}" for tt in thermal) + " |")
    e = t["energy"]
    cost = (f"{e['snn_pj'] / 1e3:.4g} nJ per sample on the {e['profile']} profile" if e["snn_pj"] is not None
            else f"energy not given: {e['note']}")
    lines += ["", f"Same model, per sample: {_si(e['ac'])} AC, {_si(e['mac'])} MAC, "
              f"{e['spikes_per_sample']:.1f} spikes; {cost}."]
    return lines


def _si(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _model_line(report: dict) -> str:
    em, p = report.get("energy_model", {"name": "compute"}), report["profile"]
    if em["name"] == "compute":
        return (f"Energy model **compute** (pJ per AC and per MAC; neurons and memory not charged), "
                f"profile **{p['name']}**: {p['ac_pj']} pJ/AC, {p['mac_pj']} pJ/MAC, ANN "
                f"{p['ann_mac_pj'] if p['ann_mac_pj'] is not None else p['mac_pj']} pJ/MAC ({p['source']}).")
    k = em["costs"]
    sram = ", ".join(f"{x / 1024:g} KB: {y * 4:g} pJ" for x, y in k["sram_pj_per_byte"][1:])
    return (f"Energy model **{em['name']}**: {em['description']}. 32-bit add {k['add_pj']} pJ, mul "
            f"{k['mul_pj']} pJ; SRAM per 32-bit access by memory size {sram}; spike FIFO "
            f"{k['fifo_words']} words ({k['source']}).")


def _neurobench_lines(nb: dict) -> list[str]:
    lines = ["", "NeuroBench metrics (neurobench 2.3.0 names and conventions; per sample):", "",
             "| metric | value |", "|---|---|"]
    for key, value in nb.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                lines.append(f"| {key} {sub} | {v:.6g} |")
        else:
            lines.append(f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |")
    return lines


def _breakdown_lines(report: dict) -> list[str]:
    parts = ("ops", "addressing", "inout", "params", "potential")
    lines = ["", "Energy per sample by component (nJ): arithmetic, addressing, spike/input/output "
             "memory, weight and bias memory, membrane-potential memory.", "",
             "| layer | " + " | ".join(parts) + " | total |", "|---" * (len(parts) + 2) + "|"]
    for r in report["layers"] + report["neurons"]:
        e = r["energy"]
        lines.append(f"| {r['layer']} | " + " | ".join(f"{e[k] / 1e3:.4g}" for k in parts)
                     + f" | {e['total'] / 1e3:.4g} |")
    return lines


def render_energy_markdown(report: dict) -> str:
    """The per-layer tables of ``hwsim.energy``'s report a reviewer can check (operations,
    energy under the selected model, spiking layers, NeuroBench's metrics), with provenance."""
    tot = report["total"]
    lines = [f"Checkpoint `{report['checkpoint']}` (sha256 `{report['sha256'][:16]}`, method "
             f"{report['method']}), {report['samples']} test-split samples of {report['dataset']}, T = {report['timesteps']}.  ",
             *provenance_lines(report["command"], report["versions"]),
             _model_line(report),
             "", "Per sample. AC = spike events x real fan-out; MAC = non-binary input, once per step.", "",
             "| layer | op | in -> out | input | input rate | AC | MAC | ANN MAC | SNN energy | ANN energy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        rate = f"{r['source_rate']:.4f}" if r["source_rate"] is not None else "-"
        src = f"spikes of {r['source']}" if r["input"] == "spikes" else (
            "direct input" if r["input"] == "input" else "currents")
        lines.append(f"| {r['layer']} | {r['kind']} | {'x'.join(map(str, r['in_shape']))} -> "
                     f"{'x'.join(map(str, r['out_shape']))} | {src} | {rate} | {_si(r['ac'])} | "
                     f"{_si(r['mac'])} | {_si(r['ann_mac'])} | {r['snn_pj'] / 1e3:.3g} nJ | "
                     f"{r['ann_pj'] / 1e3:.3g} nJ |")
    neuron_pj = tot.get("neuron_pj", 0.0)
    if neuron_pj:
        lines.append(f"| spiking layers | | | | | | | | {neuron_pj / 1e3:.3g} nJ | |")
    lines.append(f"| **total** | | | | | {_si(tot['ac'])} | {_si(tot['mac'])} | {_si(tot['ann_mac'])} | "
                 f"{tot['snn_pj'] / 1e3:.3g} nJ | {tot['ann_pj'] / 1e3:.3g} nJ |")
    lines += ["", "| spiking layer | neurons | firing rate (spikes/neuron/step) | spikes per sample | "
              "membrane updates per sample |", "|---|---|---|---|---|"]
    for nrow in report["neurons"]:
        lines.append(f"| {nrow['layer']} | {nrow['neurons']} | {nrow['firing_rate']:.4f} | "
                     f"{nrow['spikes_per_sample']:.1f} | {nrow.get('membrane_updates', 0):.1f} |")
    if report.get("energy_model", {}).get("name", "compute") != "compute":
        lines += _breakdown_lines(report)
    lines += ["", f"**SNN / ANN energy = {tot['ratio']:.4f}** "
              f"({tot['snn_pj'] / 1e3:.4g} nJ vs {tot['ann_pj'] / 1e3:.4g} nJ per sample)."]
    if "neurobench" in report:
        lines += _neurobench_lines(report["neurobench"])
    return "\n".join(lines) + "\n"
