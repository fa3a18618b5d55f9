"""The spiking network container and the builders for each architecture."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import Tensor, nn

from ..core.encoders import encode
from ..core.fused import LateReads, compact_spikes
from ..core.layers import CUBA, LIF, Neuron, Pool, RecurrentSpiking, ResidualBlock, TDBatchNorm, run_layers
from ..core.surrogate import make_surrogate
from .config import ModelConfig


class SpikingNetwork(nn.Module):
    """An SNN (feed-forward, or with recurrent layers: srnn): ``layers`` applied to
    (T, B, ...), output = mean_t of the last (non-spiking) layer's current (Dspike Eq. 3, ASGL Eq. 5).

    Static input ``(B, ...)`` is encoded by ``config.encoding`` (core/encoders.py).
    Direct encoding gives the same analog frame at every step: since the
    stateless layers before the first LIF see identical frames, they are
    computed once and broadcast over T (same numbers, T times less work).
    Rate encoding draws from torch's global RNG while training (seeded and
    checkpointed by the run) and from a generator seeded with
    ``EVAL_ENCODING_SEED`` per call in eval mode, so evaluation is repeatable.
    Temporal input ``(T, B, ...)`` (event data) is passed as is.
    """

    EVAL_ENCODING_SEED = 0

    def __init__(self, config: ModelConfig, layers: list[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(layers)

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def lif_layers(self) -> list[LIF]:
        return [m for m in self.modules() if isinstance(m, LIF)]

    def forward_sequence(self, x: Tensor, late: LateReads | None = None) -> Tensor:
        """Per-step readout currents (T, B, classes).

        While autograd records, spikes of the fused LIF that a layer saves for backward
        are kept as bool (``fused.compact_spikes``): same numbers, less memory. Without
        a fused LIF (neurons of another framework) no hook is installed: it would cost
        a call per saved tensor and find nothing to pack. ``late``: saved tensors that
        backward reads as their callable gives them when it runs (``compact_spikes``)."""
        fused = torch.is_grad_enabled() and any(isinstance(m, LIF) and m.use_fused for m in self.modules())
        with compact_spikes(late) if fused or late else nullcontext():
            return self._forward_sequence(x)

    def _forward_sequence(self, x: Tensor) -> Tensor:
        T = self.config.timesteps
        static = x.dim() == len(self.config.input_shape) + 1
        if static and self.config.encoding != "direct":
            generator = None
            if not self.training:
                generator = torch.Generator(device=x.device).manual_seed(self.EVAL_ENCODING_SEED)
            return run_layers(self.layers, encode(self.config.encoding, x, T, generator))
        if static:
            first_temporal = next(
                (i for i, m in enumerate(self.layers) if getattr(m, "temporal", False)),
                len(self.layers),
            )
            for layer in self.layers[:first_temporal]:
                x = layer(x)
            x = x.unsqueeze(0).expand(T, *x.shape)
            return run_layers(self.layers[first_temporal:], x)
        return run_layers(self.layers, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_sequence(x).mean(0)


def _conv(dims: int, cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> nn.Module:
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return conv(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


def _lif(cfg: ModelConfig, kind: str) -> Neuron:
    """A layer of the configured neuron: LIF, or CUBA (a synaptic filter before a LIF)."""
    surrogate = make_surrogate(cfg.surrogate, cfg.surrogate_param)
    if cfg.neuron == "cuba":
        return CUBA(cfg.alpha, cfg.lam, cfg.v_th, cfg.reset, surrogate, kind=kind)
    return LIF(cfg.lam, cfg.v_th, cfg.reset, surrogate, kind=kind)


def _bn(cfg: ModelConfig, channels: int) -> list[nn.Module]:
    return [TDBatchNorm(channels, cfg.v_th, cfg.tdbn_alpha)] if cfg.use_tdbn else []


def build_mlp(cfg: ModelConfig) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 1
    for d in cfg.input_shape:
        width *= d
    for h in cfg.hidden:
        layers += [nn.Linear(width, h)] + _bn(cfg, h) + [_lif(cfg, "fc")]
        width = h
    layers.append(nn.Linear(width, cfg.num_classes))
    return layers


def build_conv(cfg: ModelConfig) -> list[nn.Module]:
    dims = len(cfg.input_shape) - 1
    if dims not in (1, 2):
        raise ValueError(f"conv model needs (C, L) or (C, H, W) input, got {cfg.input_shape}")
    layers: list[nn.Module] = []
    cin, spatial = cfg.input_shape[0], list(cfg.input_shape[1:])
    for cout in cfg.channels:
        block = [_conv(dims, cin, cout, cfg.kernel_size, bias=not cfg.use_tdbn)] + _bn(cfg, cout)
        pool: list[nn.Module] = []
        if cfg.pool != "none" and min(spatial) >= 2:
            pool = [Pool(cfg.pool, 2, dims)]
            spatial = [s // 2 for s in spatial]
        # ISNM carries currents between layers, so pooling acts before the neuron.
        block += pool + [_lif(cfg, "conv")] if cfg.carrier == "current" else [_lif(cfg, "conv")] + pool
        layers += block
        cin = cout
    flat = cin
    for s in spatial:
        flat *= s
    layers.append(nn.Flatten())
    if cfg.fc_hidden:
        layers += [nn.Linear(flat, cfg.fc_hidden), _lif(cfg, "fc")]
        flat = cfg.fc_hidden
    layers.append(nn.Linear(flat, cfg.num_classes))
    return layers


def _basic_block(cfg: ModelConfig, cin: int, cout: int, stride: int) -> ResidualBlock:
    body = [_conv(2, cin, cout, 3, stride, bias=False), *_bn(cfg, cout), _lif(cfg, "conv"),
            _conv(2, cout, cout, 3, 1, bias=False), *_bn(cfg, cout)]
    shortcut: list[nn.Module] = []
    if stride != 1 or cin != cout:
        shortcut = [_conv(2, cin, cout, 1, stride, bias=False), *_bn(cfg, cout)]
    return ResidualBlock(body, shortcut, _lif(cfg, "conv"))


def build_resnet(cfg: ModelConfig) -> list[nn.Module]:
    """Spiking ResNet-18 (2-2-2-2 blocks) or ResNet-19 (3-3-2 blocks, FC 256; tdBN paper)."""
    if len(cfg.input_shape) != 3:
        raise ValueError(f"{cfg.arch} needs (C, H, W) input, got {cfg.input_shape}")
    w = cfg.width
    if cfg.arch == "resnet18":
        stages, widths, fc = (2, 2, 2, 2), (w, 2 * w, 4 * w, 8 * w), 0
    else:
        stages, widths, fc = (3, 3, 2), (2 * w, 4 * w, 8 * w), 256
    layers: list[nn.Module] = [_conv(2, cfg.input_shape[0], widths[0], 3, bias=False),
                               *_bn(cfg, widths[0]), _lif(cfg, "conv")]
    cin = widths[0]
    for i, (n, cout) in enumerate(zip(stages, widths)):
        for j in range(n):
            layers.append(_basic_block(cfg, cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if fc:
        layers += [nn.Linear(cin, fc), _lif(cfg, "fc")]
        cin = fc
    layers.append(nn.Linear(cin, cfg.num_classes))
    return layers


def build_resnet_small(cfg: ModelConfig) -> list[nn.Module]:
    """A ResNet for small images and for Speck's 9 cores: a stem conv to ``width`` channels,
    ``blocks`` identity BasicBlocks (``LIF(conv2(LIF(conv1 x)) + x)``, no stride, no shortcut
    conv), one 2x2 ``pool`` and a linear readout. 1 + 2 x blocks neuron layers."""
    if len(cfg.input_shape) != 3:
        raise ValueError(f"resnet_small needs (C, H, W) input, got {cfg.input_shape}")
    w, (_, h, wd) = cfg.width, cfg.input_shape
    layers: list[nn.Module] = [_conv(2, cfg.input_shape[0], w, 3, bias=False), *_bn(cfg, w),
                               _lif(cfg, "conv")]
    layers += [_basic_block(cfg, w, w, 1) for _ in range(cfg.blocks)]
    if cfg.pool != "none" and min(h, wd) >= 2:
        layers.append(Pool(cfg.pool, 2, 2))
        h, wd = h // 2, wd // 2
    return layers + [nn.Flatten(), nn.Linear(w * h * wd, cfg.num_classes)]


def build_srnn(cfg: ModelConfig) -> list[nn.Module]:
    """Input -> one recurrent spiking layer per ``hidden`` width (input weights,
    then ``RecurrentSpiking``) -> non-spiking readout."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 1
    for d in cfg.input_shape:
        width *= d
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), RecurrentSpiking(h, _lif(cfg, "fc"))]
        width = h
    layers.append(nn.Linear(width, cfg.num_classes))
    return layers


BUILDERS = {"mlp": build_mlp, "conv": build_conv, "resnet18": build_resnet, "resnet19": build_resnet,
            "resnet_small": build_resnet_small, "srnn": build_srnn}


def build_model(cfg: ModelConfig) -> SpikingNetwork:
    """Build the network a config describes (weights freshly initialised)."""
    return SpikingNetwork(cfg, BUILDERS[cfg.arch](cfg))


@contextmanager
def record_spikes(model: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Collect each LIF layer's output spikes (T, B, ...) during forward passes.

    A recurrent layer runs its neuron step by step, never through the LIF's
    forward: its output is recorded under its LIF's name instead."""
    records: dict[str, list[Tensor]] = {}
    handles = []
    stepped: set[int] = set()
    for name, m in model.named_modules():  # parents come before their children
        if isinstance(m, RecurrentSpiking):
            lif = next(n for n, sub in m.named_modules(prefix=name) if isinstance(sub, LIF))
            stepped.update(id(sub) for sub in m.modules())
            key, target = lif, m
        elif isinstance(m, LIF) and id(m) not in stepped:
            key, target = name, m
        else:
            continue
        records[key] = []
        handles.append(target.register_forward_hook(
            lambda mod, inp, out, key=key: records[key].append(out.detach())))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def spike_rates(model: SpikingNetwork, x: Tensor) -> dict[str, float]:
    """Mean firing probability per LIF layer (spikes per neuron per step)."""
    with torch.no_grad(), record_spikes(model) as rec:
        model(x)
    return {k: float(torch.cat([r.float().flatten() for r in v]).mean()) for k, v in rec.items()}
