"""The ``xylo`` target: SynSense Xylo (Audio 2 or IMU), checked in xylosim, SynSense's
bit-accurate simulator of the Xylo core.

* ``check``: ``mapping.build_xylo_net``: recurrent CUBA layers as Xylo hidden neurons, the
  readout as output neurons, integers per ``limits`` (the first chip of ``limits.CHIPS`` that
  fits, or the one given: ``XyloExporter(chip="xylo-imu")``). Refusals name the layer and fix.
* ``write``: ``xylo_spec.json``: ``specification`` holds the keyword arguments of rockpool's
  ``XyloSim.from_specification`` / ``config_from_specification`` (field names as rockpool's);
  ``host`` what runs around the chip: input events, bias channels, steps, readout.
* ``verify``: the events of held-out samples through xylosim (``sim.run_xylosim``) and our
  numpy emulator (``emulator.run``), which must agree exactly, and through ``reference.compare``
  against the float model: spikes per layer (Xylo's spike counts against the float model's
  0/1, layer k shifted back by its lag k) and the host readout. Without xylosim installed the
  emulator's numbers are reported and the verification says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ...errors import notice
from ...runs.files import atomic_write_text
from ..base import MinAgreement, Samples, Verification
from ..reference import compare, must_equal
from . import emulator
from .grid import XyloGrid
from .limits import MAX_HIDDEN_SPIKES
from .mapping import XyloNet, build_xylo_net
from .sim import run_xylosim, xylosim_available


def host_record(plan: XyloNet) -> dict[str, Any]:
    """What the host does around the chip, as written into the JSON file."""
    enc = plan.encoding
    return {
        "timesteps": plan.timesteps, "steps_to_run": plan.steps,
        "input": {"features": enc.features, "events_per_unit": enc.levels, "clip_range": list(enc.input_range),
                  "split_sign": enc.split_sign, "temporal": enc.temporal, "data_channels": enc.channels,
                  "rule": "events = round(L clip(x)); split_sign: channel 2f = max(events, 0), 2f+1 = max(-events, 0); "
                          "steps >= T carry no data events"},
        "bias_channels": [{"channel": l.bias_channel, "layer": l.neuron, "first_step": l.lag}
                          for l in plan.layers if l.bias_channel is not None],
        "layers": [{"synapse": l.synapse, "neuron": l.neuron, "recurrent": l.recurrent,
                    "hidden_ids": [l.first, l.first + l.size], "lag_steps": l.lag,
                    "alpha_effective": np.unique(l.alpha).tolist(), "lam_effective": np.unique(l.lam).tolist()}
                   for l in plan.layers],
        "readout": {"name": plan.readout_name, "gain": plan.readout_gain.tolist(), "bias": plan.readout_bias.tolist(),
                    "rule": "logits = (Vmem_out + Isyn_out) / (gain * T) + bias, read after the last step"},
    }


def bursts_without_qat(bursts: int, saturations: int, trained_on_grid: bool) -> str | None:
    """Why a float model loses on Xylo, when it does: its emulator run fired bursts or
    saturated. None for a model fine-tuned with ``--qat xylo`` (its forward has Xylo's rule) or
    a run with neither."""
    if trained_on_grid or not (bursts or saturations):
        return None
    return (f"Xylo fires up to {MAX_HIDDEN_SPIKES} spikes per step where the membrane exceeds k thresholds, "
            f"and this model was not trained for it (measured: {bursts} burst events, {saturations} "
            "16-bit saturations; its float neuron fires one): retrain or fine-tune with --qat xylo")


STAND_IN = "emulator; xylosim not run"   # what ran instead of the vendor simulator


class XyloExporter:
    name: ClassVar[str] = "xylo"
    description: ClassVar[str] = ("SynSense Xylo Audio 2 / IMU: rockpool specification (8-bit weights, "
                                  "bit-shift decays), checked in xylosim (bit-accurate)")
    filename: ClassVar[str] = "xylo_spec.json"
    grid: ClassVar[type | None] = XyloGrid   # train --qat xylo
    # float model vs the chip's integers (xylosim vs our emulator must agree exactly, always):
    # 8-bit rounding and multi-spike bursts gave 0.87-0.98 spike agreement on random recurrent
    # graphs and 0.906 / class 1.0 on a 128-neuron layer (docs/export.md, Xylo)
    min_agreement: ClassVar[MinAgreement] = MinAgreement(classes=0.9, spikes=0.8)

    def __init__(self, chip: str | None = None) -> None:
        self.chip = chip

    def check(self, graph: Any) -> XyloNet:
        return build_xylo_net(graph, self.chip)

    def write(self, plan: XyloNet, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / self.filename
        payload = {"chip": plan.chip.name, "chip_description": plan.chip.description,
                   "fits": {k: (v or "yes") for k, v in plan.fits.items()},
                   "specification": plan.spec.specification(), "host": host_record(plan)}
        atomic_write_text(path, json.dumps(payload) + "\n")
        return [path]

    def verify(self, plan: XyloNet, out_dir: Path, samples: Samples) -> Verification:
        T = int(samples.timesteps or plan.timesteps)
        x = samples.x.detach().cpu().numpy()
        events = plan.events(x, T)
        emulated = emulator.run(plan.spec, events)
        lo, hi = plan.encoding.input_range
        labels = samples.y.numpy()
        details: dict[str, Any] = {
            "chip": plan.chip.name, "steps": int(events.shape[0]),
            "input_clipped_fraction": float(np.mean((x < lo) | (x > hi))),
            "events_per_unit": plan.encoding.levels,
            "dash_syn": [np.unique(plan.spec.dash_syn[l.ids]).tolist() for l in plan.layers],
            "dash_mem": [np.unique(plan.spec.dash_mem[l.ids]).tolist() for l in plan.layers],
            "alpha_effective": [np.unique(l.alpha).tolist() for l in plan.layers],
            "lam_effective": [np.unique(l.lam).tolist() for l in plan.layers],
            "weight_bits_used": plan.info["weight_bits_used"],
            "emulator_saturations": emulated.saturated,
            "emulator_accuracy": float((plan.logits(emulated.v_out[-1], emulated.i_out[-1], T).argmax(1)
                                        == labels).mean()),
        }
        target, runtime_failures, stand_in = emulated, [], None
        if xylosim_available():
            target = run_xylosim(plan.spec, events)
            details["xylo_simulator"] = "xylosim 0.1.3 (xylosim.v2, SynSense's bit-accurate C++ model)"
            counts, runtime_failures = must_equal(
                "xylosim and our emulator",
                {"hidden_spikes": target.hidden_spikes, "output_vmem": target.v_out, "output_isyn": target.i_out},
                {"hidden_spikes": emulated.hidden_spikes, "output_vmem": emulated.v_out,
                 "output_isyn": emulated.i_out},
                "our Xylo emulator no longer models xylosim: report it with verification.json")
            details["xylosim_vs_emulator_mismatches"] = counts
        else:
            stand_in = STAND_IN
            details["xylo_simulator"] = (f"{STAND_IN}: xylosim is not installed, so the numbers below are "
                                         "our emulator's; run scripts/setup")
        spikes, multi = {}, {}
        for l in plan.layers:
            counts = target.hidden_spikes[l.lag:l.lag + T, :, l.ids]
            spikes[l.neuron] = torch.from_numpy(counts.astype(np.float32))
            multi[l.neuron] = int((counts > 1).sum())
        details["multi_spike_events"] = multi
        burst_note = bursts_without_qat(sum(multi.values()), sum(emulated.saturated.values()),
                                        f"--qat {self.name}" in samples.reference.source)
        if burst_note:
            notice(f"xylo: {burst_note}")
            details["diagnosis"] = burst_note     # the gate adds it to its failures, if it fails
        output = torch.from_numpy(plan.logits(target.v_out[-1], target.i_out[-1], T))
        v = compare(self.name, samples.reference, spikes, output, samples.y, details)
        v.failures[:0] = runtime_failures
        v.stand_in = stand_in
        return v

    def readme(self, plan: XyloNet, files: list[Path]) -> str:
        rows = "".join(
            f"| {l.synapse} / {l.neuron} | {l.recurrent or ''} | {l.first}..{l.first + l.size - 1} | {l.lag} | "
            f"{', '.join(map(str, np.unique(plan.spec.dash_syn[l.ids])))} | "
            f"{', '.join(map(str, np.unique(plan.spec.dash_mem[l.ids])))} | "
            f"{int(plan.spec.threshold[l.ids].min())}..{int(plan.spec.threshold[l.ids].max())} |\n"
            for l in plan.layers)
        fits = "; ".join(f"{k}: {'fits' if not v else ', '.join(v)}" for k, v in plan.fits.items())
        name = files[0].name if files else self.filename
        return f"""# Xylo export ({plan.chip.description})

`{name}`: `specification` holds the keyword arguments of rockpool's
`XyloSim.from_specification` and `config_from_specification` (int8 weights as (pre, post)
matrices, 4-bit `dash_*` bit-shift decays, int16 thresholds, one synapse per neuron,
weight shifts 0, no aliases); `host` what the host does around the chip. Chips: {fits}.

| synapse / neuron | recurrent | hidden ids | lag (steps) | dash_syn | dash_mem | threshold |
|---|---|---|---|---|---|---|
{rows}
Per step a hidden neuron does `Isyn += W s` (inputs now, hidden spikes of the previous step),
`Isyn -= Isyn >> dash_syn`, `Vmem += Isyn - Vmem >> dash_mem`, and spikes while
`Vmem >= threshold`, subtracting it (several spikes per step possible, up to 31).
Leaks: `1 - 2^-dash` (the float model's, rounded: see `host.layers`).

**Input** (host): `events = round({plan.encoding.levels} clip(x, {plan.encoding.input_range[0]}, {plan.encoding.input_range[1]}))`
per feature and step{' (negative values on a second channel: channel 2f positive, 2f+1 negative)' if plan.encoding.split_sign else ''};
bias channels (`host.bias_channels`) carry one event per step from their `first_step` for T steps.
Run `steps_to_run` = T + {len(plan.layers)} steps (layer k lags k steps; the output one more), the
last steps with no data events.

**Readout** (host): the output neurons integrate (`dash_syn_out = 1`, `dash_mem_out = 15`,
threshold 32767); after the last step `logits = (Vmem_out + Isyn_out) / (gain T) + bias`
(`host.readout`), class = argmax.

```python
import json, numpy as np
from rockpool.devices.xylo.syns61201 import XyloSim   # or syns63300 for Xylo IMU
d = json.load(open("{name}"))
spec = {{k: (np.array(v) if k != "aliases" and isinstance(v, list) else v) for k, v in d["specification"].items()}}
sim = XyloSim.from_specification(**spec, output_mode="Vmem")
out, _, rec = sim(events, record=True)            # events: (steps_to_run, channels) ints
```

`snn2hw.export.xylo.sim` runs the same integers in xylosim directly; `snn2hw.export.xylo.emulator`
predicts xylosim value for value in numpy. Not verified on a physical chip; the configuration is
validated by samna's `validate_configuration` on the user's side (not installed here).
"""
