"""Speck (SynSense DynapCNN) via sinabs: chip configuration, constraint report, simulation.

    check   build_plan(graph): every Speck limit, ExportError (layer, reason, fix) first
    write   speck_config.json  per core: int8 weights (samna layout), biases, threshold_high/low,
                               return_to_zero, pooling, destinations + the input encoding and
                               the host readout;  speck_mapping.md  layer -> core, memory
            (+ samna_config.json when the real samna is installed: DynapcnnNetwork.make_config)
    verify  three sinabs simulations against the float reference (targets.md B):
            float   sinabs.from_nir + our neuron settings, before discretisation: must equal
                    the reference spike for spike (it pins the neuron semantics; any spike
                    that differs fails the check);
            chip    the integer configuration read back from speck_config.json, with SingleSpike
                    (<= 1 spike per step) and MultiSpike (all the charge per step): the chip is
                    event-driven, and these two bracket it;
            route   residual blocks (``residual.py``): the chip model, through sinabs' Merge, equals
                    the block built without the route spike for spike (``unmerged_model``), in
                    place of the float check (float_model lays sinabs' import out as a chain).

Neuron settings (ours -> sinabs): IAF, ``reset_fn`` MembraneReset (hard) or MembraneSubtract
with ``subtract_value = V_th`` (soft), ``min_v_mem`` None in float (our model has no clamp; a
finite clamp also rounds v through relu(v - m) + m). sinabs fires on ``v >= threshold``; ours
on ``v > V_th``: in float32 ``v > V_th`` is ``v >= nextafter(V_th, +inf)``, in integers it is
``v >= V_th + 1`` (discretize.py). Never imports samna or sinabs.backend.dynapcnn unless
``real_samna_available()``.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...environment import real_samna_available
from ...errors import ExportError, notice
from ..base import MinAgreement, Samples, Verification
from ..from_nir import nir_to_network
from ..reference import compare, run_batched, run_reference
from .constraints import SpeckPlan, build_plan, chain_nodes, mapping_table
from .cores import Core, CoreNetwork, Gain, conv_layer
from .discretize import DIRECT_INPUT_GAIN, SpeckGrid, discretize_core

CONFIG = "speck_config.json"
MAPPING = "speck_mapping.md"
SAMNA_CONFIG = "samna_config.json"
BATCH = 128


def sinabs_graph(graph: nir.NIRGraph) -> nir.NIRGraph:
    """A copy of ``graph`` that ``sinabs.from_nir`` imports: AvgPool2d -> SumPool2d with the
    next weights divided by k^2 (exact: k in {1, 2, 4}), Linear -> Affine with zero bias."""
    g = copy.deepcopy(graph)
    succ = {a: b for a, b in g.edges}
    for name, node in list(g.nodes.items()):
        if isinstance(node, nir.AvgPool2d):
            k = np.asarray(node.kernel_size).reshape(-1)
            area = float(k[0] * k[-1])
            g.nodes[name] = nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride,
                                          padding=node.padding)
            nxt = succ.get(name)
            while nxt is not None and not hasattr(g.nodes[nxt], "weight"):
                nxt = succ.get(nxt)
            if nxt is not None:
                g.nodes[nxt].weight = (np.asarray(g.nodes[nxt].weight, dtype=np.float32)
                                       * np.float32(1.0 / area))
        elif isinstance(node, nir.Linear):
            w = np.asarray(node.weight, dtype=np.float32)
            g.nodes[name] = nir.Affine(weight=w, bias=np.zeros(w.shape[0], dtype=np.float32))
    return g


def _set_neuron(layer: nn.Module, v_th: float, reset: str, spike_fn: Any,
                min_v_mem: float | None, strict: str) -> None:
    """Our neuron on a sinabs IAF layer; ``strict``: 'float' (nextafter) or 'int' (+1 done)."""
    from sinabs.activation import MembraneReset, MembraneSubtract

    th = np.float32(v_th)
    fire = np.nextafter(th, np.float32(np.inf)) if strict == "float" else th
    layer.spike_fn = spike_fn
    layer.reset_fn = MembraneReset() if reset == "hard" else MembraneSubtract(
        subtract_value=float(th) if strict == "float" else None)
    layer.spike_threshold = nn.Parameter(torch.tensor(float(fire)), requires_grad=False)
    layer.min_v_mem = (None if min_v_mem is None
                       else nn.Parameter(torch.tensor(float(min_v_mem)), requires_grad=False))


def float_model(graph: nir.NIRGraph, plan: SpeckPlan, timesteps: int) -> nn.Sequential:
    """``sinabs.from_nir`` of the graph, in chain order, with our neuron settings (float)."""
    import sinabs
    from sinabs.activation import SingleSpike

    g = sinabs_graph(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        executor = sinabs.from_nir(g, num_timesteps=timesteps)
    by_neuron = {lay.neuron_node: lay for lay in plan.layers}
    modules = []
    for name in chain_nodes(g):
        m = getattr(executor, name.replace(".", "_"))   # nirtorch's sanitize_name
        if isinstance(m, nn.Identity):
            continue
        if name in by_neuron:
            lay = by_neuron[name]
            _set_neuron(m, lay.v_th, lay.reset, SingleSpike, lay.v_min, "int" if lay.spike_geq else "float")
            m.speck_node = name
        modules.append(m)
    return nn.Sequential(*modules).float()


def chip_config(plan: SpeckPlan, input_gain: float) -> dict[str, Any]:
    """The integer chip configuration (samna's CNNLayerConfig fields per core)."""
    layers = []
    for lay in plan.layers:
        try:
            d = discretize_core(lay.weight, lay.bias, lay.v_th, input_gain if lay.index == 0 else 1.0, lay.v_min)
        except ValueError as exc:
            raise ExportError(f"speck: layer {lay.weight_node}: {exc}") from None
        last = lay.index == len(plan.layers) - 1
        c_in, h, w = lay.in_shape
        f, ho, wo = lay.neuron_shape
        layers.append({
            "layer": lay.index, "core": plan.mapping[lay.index],
            "nodes": [lay.weight_node, lay.neuron_node],
            "dimensions": {"input_shape": {"size": {"x": w, "y": h}, "feature_count": c_in},
                           "output_shape": {"size": {"x": wo, "y": ho}, "feature_count": f},
                           "padding": {"x": lay.padding[1], "y": lay.padding[0]},
                           "stride": {"x": lay.stride, "y": lay.stride},
                           "kernel_size": int(lay.weight.shape[2])},
            # samna's layout: (C_out, C_in, x, y), i.e. torch's with the last two axes swapped
            "weights": np.swapaxes(d["weight"], 2, 3).tolist(),
            "biases": d["bias"].tolist(),
            "leak_enable": bool(np.any(d["bias"] != 0)),
            "threshold_high": d["v_th"] + (0 if lay.spike_geq else 1),   # strict v > V_th: + 1
            "threshold_low": d["min_v"],
            "return_to_zero": lay.reset == "hard",
            "destinations": [{"layer": plan.mapping[d.index], "enable": True, "pooling": lay.pool}
                             for d in plan.layers if lay.index in d.sources],
            "channels": dict(zip(("offset", "count"), lay.channels or (0, f))),
            "monitor_enable": last,
            "host_pooling": lay.pool if last else 1,
            "scale": d["scale"], "scale_set_by": d["binding"], "v_th_float": lay.v_th, "min_v_mem_float": d["min_v_mem"],
        })
    readout = None
    if plan.readout is not None:
        readout = {"node": plan.readout_node, "weight": plan.readout[0].tolist(),
                   "bias": plan.readout[1].tolist()}
    return {
        "format": "snn2hw-speck/1",
        "input": {"shape": list(plan.input_shape), "gain": input_gain,
                  "encoding": "temporal" if plan.temporal else "direct",
                  "events": "round(gain * x) input events per pixel per time step, into core "
                            f"{plan.mapping[0]}"},
        "timesteps": plan.timesteps,
        "cores": layers,
        "readout": readout,
        "notes": ["the readout (logits = W . pooled mean spike count + b) runs on the host",
                  "threshold_high = round(scale * V_th) + 1 so that the chip's >= is our strict >"],
    }


def _neuron(core: dict[str, Any], spike_fn: Any, timesteps: int) -> nn.Module:
    import sinabs.layers as sl

    iaf = sl.IAFSqueeze(num_timesteps=timesteps, record_states=True)
    _set_neuron(iaf, core["threshold_high"], "hard" if core["return_to_zero"] else "soft",
                spike_fn, core["threshold_low"], "int")
    iaf.speck_node = core["nodes"][1]
    return iaf


def _pool(core: dict[str, Any]) -> nn.Module | None:
    import sinabs.layers as sl

    k = max([d["pooling"] for d in core["destinations"]] or [1])
    return sl.SumPool2d(k) if k > 1 else None


def core_sources(config: dict[str, Any]) -> list[tuple[int, ...]]:
    """Per core (config order), the positions of the cores that send to it (its Merge)."""
    cores = config["cores"]
    return [tuple(j for j, c in enumerate(cores) if any(d["layer"] == core["core"] for d in c["destinations"]))
            for core in cores]


def chip_model(config: dict[str, Any], spike_fn: Any, timesteps: int,
               exact: bool = True) -> nn.Module:
    """The configuration as a sinabs model: per core Merge(sources) -> Conv2d -> IAFSqueeze ->
    SumPool2d (``cores.CoreNetwork``); the last core's pooling is left to the host. ``exact``:
    float64 throughout (integers stay exact); otherwise, for chains only, the plain float32
    ``nn.Sequential`` DynapcnnNetwork accepts."""
    dtype = torch.float64 if exact else torch.float32
    cores = []
    for core, sources in zip(config["cores"], core_sources(config)):
        dims = core["dimensions"]
        conv = conv_layer(torch.tensor(core["weights"], dtype=dtype).transpose(2, 3),
                          torch.tensor(core["biases"], dtype=dtype), dims["stride"]["y"],
                          (dims["padding"]["y"], dims["padding"]["x"]), dtype)
        cores.append(Core(sources, [conv], _neuron(core, spike_fn, timesteps), _pool(core)))
    if exact:
        return CoreNetwork(cores)
    if any(len(c.sources) > 1 for c in cores):
        raise ExportError("speck: the samna configuration of residual networks is not built yet "
                          "(speck_config.json holds the merged cores): configure samna from it")
    return nn.Sequential(*[m for c in cores for m in (c.convs[0], c.neuron, c.pool) if m is not None])


def unmerged_model(plan: SpeckPlan, config: dict[str, Any], spike_fn: Any, timesteps: int) -> CoreNetwork:
    """What the merged cores must compute, built without the Merge route: a residual block's
    neuron takes ``x * round(scale) + conv2_int(s)`` (the identity written as what it means,
    not as the routed kernel; conv2 is the block's own kernel on the core's scale), every core
    on its own channels only (no padding). Equal to ``chip_model`` spike for spike when the
    route is exact."""
    cores = []
    for lay, core in zip(plan.layers, config["cores"]):
        off, count = core["channels"]["offset"], core["channels"]["count"]
        dims = core["dimensions"]
        stride, padding = dims["stride"]["y"], (dims["padding"]["y"], dims["padding"]["x"])
        bias = torch.tensor(core["biases"], dtype=torch.float64)[off:off + count]
        if lay.parts is None:   # its own rows, and the columns of its source's own channels
            w = torch.tensor(core["weights"], dtype=torch.float64).transpose(2, 3)[off:off + count]
            if lay.sources:
                src = config["cores"][lay.sources[0]]["channels"]
                w = w[:, src["offset"]:src["offset"] + src["count"]]
            convs = [conv_layer(w, bias, stride, padding, torch.float64)]
        else:   # sources (x's core, the body's last core): identity, then conv2
            scale = torch.tensor(core["scale"], dtype=torch.float32)
            body = torch.round(torch.tensor(lay.parts[1][1], dtype=torch.float32) * scale).double()
            convs = [Gain(float(torch.round(scale))), conv_layer(body, bias, stride, padding, torch.float64)]
        cores.append(Core(lay.sources, convs, _neuron(core, spike_fn, timesteps), _pool(core),
                          merged=False))
    return CoreNetwork(cores)


def own_channels(config: dict[str, Any], spikes: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each core's spikes (T, B, C, ...) on its own channels (without the silent padding)."""
    out = dict(spikes)
    for core in config["cores"]:
        off, count = core["channels"]["offset"], core["channels"]["count"]
        node = core["nodes"][1]
        if node in out:
            out[node] = out[node][:, :, off:off + count]
    return out


def run_sinabs(model: nn.Sequential, x: Tensor, timesteps: int) -> tuple[dict[str, Tensor], Tensor,
                                                                          dict[str, float]]:
    """Run on time-major ``x`` (T, B, ...); spikes per neuron node (T, B, ...), the last
    module's output (T, B, ...) and the largest |v| before firing per node."""
    T, B = x.shape[:2]
    spikes: dict[str, Tensor] = {}
    vmax: dict[str, float] = {}
    hooks = []
    for m in model.modules():
        if hasattr(m, "speck_node"):
            m.reset_states()

            def hook(mod: nn.Module, inp: tuple, out: Tensor) -> None:
                spikes[mod.speck_node] = out.unflatten(0, (B, T)).transpose(0, 1)
                rec = getattr(mod, "recordings", {}).get("v_mem")
                if rec is not None:   # v before firing = v after the last step + this input
                    prev = torch.cat([torch.zeros_like(rec[:, :1]), rec[:, :-1]], 1)
                    pre = prev + inp[0].unflatten(0, (B, T))
                    vmax[mod.speck_node] = float(pre.abs().max())
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x.transpose(0, 1).flatten(0, 1))
    finally:
        for h in hooks:
            h.remove()
    return spikes, out.unflatten(0, (B, T)).transpose(0, 1), vmax


def host_readout(config: dict[str, Any], last_spikes: Tensor) -> Tensor:
    """Logits from the last core's spikes (T, B, C, H, W): pool, mean over T, readout."""
    k = config["cores"][-1]["host_pooling"]
    s = last_spikes.double().mean(0)
    if k > 1:
        s = F.avg_pool2d(s, k) * (k * k)
    s = s.flatten(1)
    if config["readout"] is None:
        return s
    w = torch.tensor(config["readout"]["weight"], dtype=torch.float64)
    return s @ w.T + torch.tensor(config["readout"]["bias"], dtype=torch.float64)


def _time_major(samples: Samples, T: int) -> Tensor:
    x = samples.x.float()
    return x if samples.temporal else x.unsqueeze(0).expand(T, *x.shape)


def simulate(model: nn.Sequential, x: Tensor, T: int, batch: int = BATCH
             ) -> tuple[dict[str, Tensor], Tensor, dict[str, float]]:
    """``run_sinabs`` over batches of the second axis of ``x`` (T, N, ...); the largest |v|
    is over all batches (0 for a node whose states are not recorded)."""
    def run(xb: Tensor) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        spikes, out, vmax = run_sinabs(model, xb, T)
        return spikes, out, {k: torch.tensor([v], dtype=torch.float64) for k, v in vmax.items()}

    spikes, out, vmax = run_batched(run, x, 1, batch, cat_axes=(1, 1, 0))
    return spikes, out, {k: float(vmax[k].max()) if k in vmax else 0.0 for k in spikes}


class SpeckExporter:
    """Exporter for SynSense Speck (see the module docstring)."""

    name: ClassVar[str] = "speck"
    description: ClassVar[str] = ("SynSense Speck via sinabs: IAF cores, int8 chip config + mapping "
                                  "report, float and integer sinabs simulation")
    grid: ClassVar[type | None] = SpeckGrid   # train --qat speck
    # float model vs the int8 SingleSpike simulation; measured in docs/export.md "The gate"
    min_agreement: ClassVar[MinAgreement] = MinAgreement(classes=0.9, spikes=0.8)
    approximate: bool = False                 # --approximate: one spike, reset to 0 (constraints.py)

    def __init__(self, input_gain: float | None = None) -> None:
        self.input_gain = input_gain

    def _gain(self, plan: SpeckPlan) -> float:
        if self.input_gain is not None:
            return float(self.input_gain)
        return 1.0 if plan.temporal else float(DIRECT_INPUT_GAIN)

    def check(self, graph: nir.NIRGraph) -> SpeckPlan:
        """The plan is the chain of chip layers (``constraints.build_plan``); what the chip
        runs differently without refusing it is warned about."""
        plan = build_plan(graph, self.approximate)
        for w in plan.warnings:
            notice(f"speck: {w}")
        return plan

    def write(self, plan: SpeckPlan, out_dir: Path) -> list[Path]:
        config = chip_config(plan, self._gain(plan))
        out_dir = Path(out_dir)
        files = [out_dir / CONFIG, out_dir / MAPPING]
        files[0].write_text(json.dumps(config) + "\n")
        files[1].write_text("# Speck layer-to-core mapping\n\n" + mapping_table(plan) + "\n\n"
                            + "".join(f"- warning: {w}\n" for w in plan.warnings))
        if real_samna_available():   # never reached without SynSense's compiled samna
            files.append(write_samna_config(config, plan, out_dir / SAMNA_CONFIG))
        return files

    def verify(self, plan: SpeckPlan, out_dir: Path, samples: Samples) -> Verification:
        from sinabs.activation import MultiSpike, SingleSpike

        graph = plan.graph
        config = json.loads((Path(out_dir) / CONFIG).read_text())
        T = int(samples.timesteps or plan.timesteps)
        reference = samples.reference
        if reference is None:
            reference = run_reference(nir_to_network(graph, T), samples)
        x = _time_major(samples, T)
        gain = float(config["input"]["gain"])
        events = torch.round(x * gain)
        if bool((events < 0).any()):
            raise ExportError("speck: the input has negative values; Speck receives events "
                              "(non-negative counts): use inputs in [0, 1] or event data")
        input_error = float((events / gain - x).abs().max())
        events = events.reshape(T, x.shape[1], *plan.input_shape).double()

        merged = any(lay.parts for lay in plan.layers)
        flt = None
        if not merged:   # float_model lays sinabs' import out as a chain (chain_nodes)
            fspikes, fout, _ = simulate(float_model(graph, plan, T), x, T)
            flt = compare("speck-float", reference, fspikes, fout.float().mean(0), samples.y)
        results, route_mismatches = {}, {}
        for label, fn in (("singlespike", SingleSpike), ("multispike", MultiSpike)):
            spikes, _, vmax = simulate(chip_model(config, fn, T), events, T)
            spikes = own_channels(config, spikes)
            if merged:
                direct, _, _ = simulate(unmerged_model(plan, config, fn, T), events, T)
                route_mismatches[label] = {k: int((direct[k] != spikes[k]).sum()) for k in direct}
            logits = host_readout(config, spikes[plan.layers[-1].neuron_node])
            results[label] = compare(f"speck-{label}", reference, spikes, logits.float(), samples.y,
                                     {"max_abs_v_before_spike": vmax,
                                      "state_fits_16_bits": max(vmax.values()) <= 2 ** 15 - 1})
        summary = {k: {"spike_agreement": v.spike_agreement, "output_agreement": v.output_agreement,
                       "accuracy": v.accuracy_target, "spike_counts": v.details["spike_counts"],
                       "max_abs_v_before_spike": v.details["max_abs_v_before_spike"],
                       "state_fits_16_bits": v.details["state_fits_16_bits"]}
                   for k, v in results.items()}
        main = results["singlespike"]
        main.target = "speck"
        main.failures[:0] = [] if flt is None else [
            f"{name}: sinabs' float import of the graph and the float model disagree on "
            f"{c['mismatches']} spike values (must be 0): sinabs' neuron settings drifted from ours "
            f"(speck _set_neuron); report it" for name, c in flt.details["spike_counts"].items() if c["mismatches"]]
        main.failures[:0] = [
            f"{name}: the chip's Merge route ({label}) and the residual block it implements differ on "
            f"{n} spike values (must be 0): the channel ranges or the merged kernel are wrong "
            "(speck residual.py); report it"
            for label, counts in route_mismatches.items() for name, n in counts.items() if n]
        main.details = {
            "simulated": "sinabs, time-stepped, SingleSpike (the headline numbers) and MultiSpike",
            "multispike": summary["multispike"],
            "singlespike": summary["singlespike"],
            "float_before_discretisation": "not run: float_model handles chains only" if flt is None
            else {"spike_agreement": flt.spike_agreement, "output_agreement": flt.output_agreement,
                  "accuracy": flt.accuracy_target},
            "merge_route_mismatches": route_mismatches,
            "input_gain": gain, "input_max_rounding_error": input_error,
            "state_limit": 2 ** 15 - 1,
            "scales": {c["nodes"][0]: {"scale": c["scale"], "set_by": c["scale_set_by"],
                                       "max_abs_weight": int(np.abs(c["weights"]).max())}
                       for c in config["cores"]},
            "mapping": {c["nodes"][0]: c["core"] for c in config["cores"]},
            "warnings": plan.warnings,
        }
        return main

    def readme(self, plan: SpeckPlan, files: list[Path]) -> str:
        names = ", ".join(f"`{p.name}`" for p in files)
        return f"""# Speck (SynSense DynapCNN) export

Files: {names}.

- `{CONFIG}`: one entry per chip layer with the fields of samna's `CNNLayerConfig`
  (`weights` int8 in samna's (C_out, C_in, x, y) layout, `biases`, `threshold_high`,
  `threshold_low`, `return_to_zero`, `destinations` with `pooling`, `dimensions`), the
  input encoding (`round(gain * x)` events per pixel per step, gain {self._gain(plan):g}) and
  the readout the host computes from the last core's spike counts.
- `{MAPPING}`: the layer-to-core assignment and each core's memory use against its limit.

{mapping_table(plan)}

Speck neurons are integrate-and-fire with one threshold per core; `threshold_high` is
round(scale * V_th) + 1 because the chip fires on `>=` and the trained model on `>`.
The chip is event-driven, not time-stepped: the verification brackets it with two
time-stepped sinabs simulations (SingleSpike: at most one spike per neuron per step;
MultiSpike: all the charge released at each step). No chip and no samna were used here;
with SynSense's samna installed the exporter also writes `{SAMNA_CONFIG}` from
`sinabs.backend.dynapcnn.DynapcnnNetwork.make_config`.
""" + "".join(f"\n- warning: {w}" for w in plan.warnings) + "\n"


def write_samna_config(config: dict[str, Any], plan: SpeckPlan, path: Path,
                       device: str = "speck2fdevkit") -> Path:
    """With the real samna only: DynapcnnNetwork(...).make_config on the integer model
    (discretize=False: already on the grid), validated by samna, saved as JSON."""
    from sinabs.activation import MultiSpike
    from sinabs.backend.dynapcnn import DynapcnnNetwork

    snn = chip_model(config, MultiSpike, 1, exact=False)
    net = DynapcnnNetwork(snn, input_shape=tuple(plan.input_shape), discretize=False)
    with warnings.catch_warnings():   # sinabs 3.1 names the ordering argument deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        samna_cfg = net.make_config(chip_layers_ordering=[c["core"] for c in config["cores"]],
                                    device=f"{device}:0")
    text = samna_cfg.to_json() if hasattr(samna_cfg, "to_json") else json.dumps(str(samna_cfg))
    path.write_text(text)
    return path
