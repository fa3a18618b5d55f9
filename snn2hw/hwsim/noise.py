"""Hardware non-idealities on the surrogate-free network (PSG Sec. 5.4 and more).

Per simulated chip, drawn once and fixed over time:

* device mismatch: every selected parameter ``psi`` (``weights``: synaptic
  weights and biases after tdBN folding; ``thresholds``: V_th per neuron;
  ``decays``: lam per neuron) becomes ``psi' = psi * (1 + xi * eps)``,
  ``eps ~ N(0, 1)``, i.e. ``psi' ~ N(psi, (xi |psi|)^2)``. Decays are clipped
  to [0, 1] afterwards (a leak cannot amplify); weights and thresholds are not.
* dead neurons: a fraction ``dead`` of each layer's neurons never emits.
* quantisation to a target's precision (``QuantSpec``): weights and biases to
  ``weight_bits`` signed levels per layer (scale ``max|W| / (2^(b-1) - 1)``),
  V_th to the same grid, lam to ``decay_bits`` fractional bits, and the
  membrane potential held between steps on that grid, saturating at
  ``state_bits``. Quantisation happens first (the programmed value), mismatch
  after it (the realised value). This models precision, not any one chip's
  rounding order: the Loihi exporter owns the bit-exact emulator. Xylo
  (``quant.name == "xylo"``) on a network of CUBA layers runs Xylo's own
  arithmetic instead (``hwsim/xylo.py``), with weight mismatch only.

Per step, drawn afresh (``RunNoise`` in graph.py):

* thermal noise: ``c[t] += sigma * |V_th| * N(0, 1)`` on every neuron's input
  current (the std is relative to the layer's nominal threshold);
* spike loss: each emitted spike is dropped with probability ``q`` on its way
  to the next layer (the sender still resets).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError
from .graph import ChipParams, LoweredNet, Neuron, RunNoise, Synapse, run
from .xylo import XyloChip, xylo_chip

MISMATCH_PARAMS = ("weights", "thresholds", "decays")


@dataclass(frozen=True)
class QuantSpec:
    """Fixed-point precision of a target; ``None`` fields are left in float."""

    name: str = "custom"
    weight_bits: int | None = None
    state_bits: int | None = None
    decay_bits: int | None = None
    source: str = ""


# Bit widths from docs/targets.md (measured with lava-dl 0.6.0 / sinabs 3.1.3).
QUANT_PRESETS: dict[str, QuantSpec] = {
    "loihi": QuantSpec("loihi", weight_bits=8, state_bits=24, decay_bits=12,
                       source="Loihi: 8-bit weights, 24-bit u/v, 12-bit decays (targets.md A.2)"),
    "speck": QuantSpec("speck", weight_bits=8, state_bits=16, decay_bits=None,
                       source="Speck: 8-bit weights, 16-bit state; IAF only (targets.md B.2)"),
    "xylo": QuantSpec("xylo", weight_bits=8, state_bits=16, decay_bits=None,
                      source="Xylo: 8-bit weights, 16-bit saturating Isyn/Vmem (xylosim 0.1.3 "
                             "XyloIAFNeuron.h); on CUBA networks hwsim runs Xylo's own step instead "
                             "(hwsim/xylo.py: bit-shift decays, bursts, the exporter's integers)"),
}


def quant_spec(name_or_spec: str | QuantSpec | None, weight_bits: int | None = None,
               state_bits: int | None = None) -> QuantSpec | None:
    """A preset by name (``loihi``, ``speck``, ``none``), optionally with bits overridden."""
    spec = name_or_spec
    if isinstance(spec, str):
        if spec == "none":
            spec = None
        elif spec not in QUANT_PRESETS:
            raise ConfigError(f"unknown quantisation preset {spec!r}; use one of "
                              f"{sorted(QUANT_PRESETS)} or 'none', or give --weight-bits/--state-bits")
        else:
            spec = QUANT_PRESETS[spec]
    if weight_bits is not None or state_bits is not None:
        base = spec or QuantSpec()
        spec = QuantSpec(base.name, weight_bits or base.weight_bits, state_bits or base.state_bits,
                         base.decay_bits, base.source)
    for bits in (spec.weight_bits, spec.state_bits, spec.decay_bits) if spec else ():
        if bits is not None and not 2 <= bits <= 32:
            raise ConfigError(f"bit widths must be in [2, 32], got {bits}")
    return spec


@dataclass(frozen=True)
class NoiseSpec:
    """One noise condition. Levels are relative (``xi``, ``sigma``) or probabilities."""

    mismatch: float = 0.0
    mismatch_params: tuple[str, ...] = MISMATCH_PARAMS
    thermal: float = 0.0
    spike_loss: float = 0.0
    dead: float = 0.0
    quant: QuantSpec | None = None

    def __post_init__(self) -> None:
        unknown = set(self.mismatch_params) - set(MISMATCH_PARAMS)
        if unknown:
            raise ConfigError(f"unknown mismatch parameter(s) {sorted(unknown)}; choose from {MISMATCH_PARAMS}")
        for key in ("mismatch", "thermal"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} level must be >= 0, got {getattr(self, key)}")
        for key in ("spike_loss", "dead"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} is a probability in [0, 1], got {getattr(self, key)}")


NOISE_OPTION_KEYS = tuple(f.name for f in fields(NoiseSpec))


def parse_noise_options(text: str) -> dict[str, Any]:
    """``"mismatch=0.2,thermal=0.5,quant=loihi,mismatch_params=weights+thresholds"`` -> a
    dict of NoiseSpec fields (``noise_spec`` checks it); unknown keys are a ConfigError."""
    options: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in NOISE_OPTION_KEYS:
            raise ConfigError(f"noise option {item!r}: expected KEY=VALUE with KEY one of "
                              f"{list(NOISE_OPTION_KEYS)}, e.g. mismatch=0.2,thermal=0.5")
        value = value.strip()
        if key == "mismatch_params":
            options[key] = [v for v in value.split("+") if v]
        elif key == "quant":
            options[key] = value
        else:
            try:
                options[key] = float(value)
            except ValueError:
                raise ConfigError(f"noise option {key}={value!r}: expected a number") from None
    return options


def noise_spec(options: dict[str, Any] | str) -> NoiseSpec:
    """The NoiseSpec of a dict of its fields (or their ``k=v,...`` text); ``quant`` is a
    preset name (``quant_spec``) and ``mismatch_params`` a list. One-line ConfigError for
    an unknown key or value."""
    if isinstance(options, str):
        options = parse_noise_options(options)
    unknown = sorted(set(options) - set(NOISE_OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown noise option(s) {unknown}; known: {list(NOISE_OPTION_KEYS)}")
    kw = dict(options)
    if "quant" in kw:
        kw["quant"] = quant_spec(kw["quant"]) if isinstance(kw["quant"], str) else kw["quant"]
    if "mismatch_params" in kw:
        kw["mismatch_params"] = tuple(kw["mismatch_params"])
    for key in ("mismatch", "thermal", "spike_loss", "dead"):
        if key in kw:
            kw[key] = float(kw[key])
    return NoiseSpec(**kw)


def _jitter(x: Tensor, xi: float, chips: int, g: torch.Generator) -> Tensor:
    """C samples of ``N(x, (xi |x|)^2)``, shape (C, *x.shape). The draw is made on the
    generator's device, so that one seed gives the same chips wherever ``x`` lives."""
    eps = torch.randn((chips, *x.shape), generator=g, dtype=x.dtype, device=g.device)
    return x.unsqueeze(0) * (1.0 + xi * eps.to(x.device))


def _quantiser(lsb: float, bits: int | None):
    top = (2 ** (bits - 1) - 1) * lsb if bits else None

    def q(u: Tensor) -> Tensor:
        u = torch.round(u / lsb) * lsb
        return u.clamp(-top, top) if top is not None else u

    return q


class ChipLayout(Protocol):
    """What ``sample_chips`` reads of a network: its synapses and neuron layers in
    execution order (a ``LoweredNet``, or training's view of the live parameters)."""

    def synapses(self) -> list[Synapse]: ...

    def neurons(self) -> list[Neuron]: ...


def sample_chips(net: ChipLayout, spec: NoiseSpec, chips: int, generator: torch.Generator,
                 round_fn: Callable[[Tensor], Tensor] = torch.round) -> ChipParams:
    """Draw ``chips`` chips' fixed parameters for one noise condition.

    The draws come in a fixed order (every synapse's weight then bias, then per neuron
    layer its decays, thresholds, dead mask), so a seed names the same chips for the
    robustness sweep and for noise-aware training (``training_noise``). ``round_fn``
    puts weights on the quantisation grid: ``torch.round``, or a straight-through
    round where gradients must pass (training).
    """
    q = spec.quant
    if q is not None and q.name == "xylo":
        chip = xylo_chip(net) if isinstance(net, LoweredNet) else None
        if chip is not None:
            return _xylo_chips(chip, net, spec, chips, generator)
    out = ChipParams(chips=chips)
    lsb: dict[str, float] = {}
    xi = spec.mismatch
    for op in net.synapses():
        w, b = op.weight, op.bias
        if q is not None and q.weight_bits:
            # per-layer symmetric grid; biases share it (they add to the same accumulator)
            scale = max(float(w.detach().abs().max()), 1e-12) / (2 ** (q.weight_bits - 1) - 1)
            lsb[op.name] = scale
            w = round_fn(w / scale) * scale
            b = round_fn(b / scale) * scale if b is not None else None
        if xi > 0 and "weights" in spec.mismatch_params:
            w = _jitter(w, xi, chips, generator)
            b = _jitter(b, xi, chips, generator) if b is not None else None
        elif w is not op.weight:  # quantised but identical on every chip
            w = w.unsqueeze(0).expand(chips, *w.shape)
            b = b.unsqueeze(0).expand(chips, *b.shape) if b is not None else None
        else:
            w = b = None
        if w is not None:
            out.weights[op.name] = (w, b)
    for op in net.neurons():
        shape = op.out_shape
        lam = torch.full(shape, float(op.lam))
        v_th = torch.full(shape, float(op.v_th))
        step = lsb.get(op.source) if q is not None else None
        if q is not None:
            if step is not None:
                v_th = torch.round(v_th / step) * step
                if q.state_bits:
                    out.state_q[op.name] = _quantiser(step, q.state_bits)
            if q.decay_bits:
                lam = torch.round(lam * 2 ** q.decay_bits) / 2 ** q.decay_bits
        if xi > 0 and "decays" in spec.mismatch_params:
            out.lam[op.name] = _jitter(lam, xi, chips, generator).clamp(0.0, 1.0)
        elif q is not None and q.decay_bits:
            out.lam[op.name] = lam.unsqueeze(0).expand(chips, *shape)
        if xi > 0 and "thresholds" in spec.mismatch_params:
            out.v_th[op.name] = _jitter(v_th, xi, chips, generator)
        elif step is not None:
            out.v_th[op.name] = v_th.unsqueeze(0).expand(chips, *shape)
        if spec.dead > 0:
            out.alive[op.name] = torch.rand((chips, *shape), generator=generator) >= spec.dead
    return out


def _xylo_chips(chip: XyloChip, net: LoweredNet, spec: NoiseSpec, chips: int,
                generator: torch.Generator) -> ChipParams:
    """Chips running Xylo's own arithmetic (hwsim/xylo.py): its grid's weights, jittered where
    weight mismatch is asked for (Xylo's thresholds and decays are digital: exact on every chip)."""
    out = ChipParams(chips=chips, steps=dict(chip.steps), readout=dict(chip.readout), input_q=chip.input_q)
    jitter = spec.mismatch > 0 and "weights" in spec.mismatch_params
    for name, (w, b) in chip.weights.items():
        if jitter:
            out.weights[name] = (_jitter(w, spec.mismatch, chips, generator),
                                 None if b is None else _jitter(b, spec.mismatch, chips, generator))
        else:
            out.weights[name] = (w.unsqueeze(0).expand(chips, *w.shape),
                                 None if b is None else b.unsqueeze(0).expand(chips, *b.shape))
    for op in net.neurons() if spec.dead > 0 else ():
        out.alive[op.name] = torch.rand((chips, *op.out_shape), generator=generator) >= spec.dead
    return out


@dataclass
class ChipResult:
    accuracy: list[float] = field(default_factory=list)   # one per chip

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.accuracy).mean())

    @property
    def std(self) -> float:
        return float(torch.tensor(self.accuracy).std(unbiased=False))


@torch.inference_mode()
def simulate(net: LoweredNet, x: Tensor, y: Tensor, spec: NoiseSpec, chips: int = 10, seed: int = 0,
             batch_size: int = 256, temporal: bool = False) -> ChipResult:
    """Accuracy of ``chips`` sampled chips on (x, y) under one noise condition.

    ``x`` is (N, *input_shape) static samples or (N, T, ...) event data
    (``temporal``). Chip parameters come from ``seed``; per-step noise from
    ``seed + 1``, so two conditions with the same seed share their chips.
    """
    g_chip = torch.Generator().manual_seed(seed)
    device = net.synapses()[0].weight.device if net.synapses() else torch.device("cpu")
    params = sample_chips(net.to("cpu"), spec, chips, g_chip).to(device)  # drawn on the CPU: the same chips on any device
    noise = RunNoise(spec.thermal, spec.spike_loss, torch.Generator().manual_seed(seed + 1))
    correct = torch.zeros(chips, dtype=torch.long, device=device)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        xb = xb.transpose(0, 1) if temporal else xb
        out = run(net, xb, params, noise).mean(0)              # (B, C, K)
        correct += (out.argmax(-1) == y[i:i + batch_size, None].to(device)).sum(0)
    return ChipResult((correct.double() / max(len(x), 1)).tolist())
