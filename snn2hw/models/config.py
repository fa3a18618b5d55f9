"""The typed model configuration stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..core.encoders import ENCODINGS
from ..core.neuron import LIF_RESETS
from ..core.surrogate import SURROGATES
from ..registry import lookup

# The architectures build_model knows (models/network.py); the CLI's --model lists these.
ARCHS = ("mlp", "conv", "resnet18", "resnet19", "resnet_small", "srnn")
NEURONS = ("lif", "cuba")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network; plain types only (saved as a dict)."""

    arch: str = "mlp"
    input_shape: tuple[int, ...] = (64,)
    num_classes: int = 10
    timesteps: int = 4
    hidden: tuple[int, ...] = (256,)          # mlp: hidden layer widths; srnn: recurrent layer widths
    channels: tuple[int, ...] = (32, 32, 32)  # conv: channels per conv block
    kernel_size: int = 3
    pool: str = "avg"                         # avg | max | sum | none
    fc_hidden: int = 0                        # conv: optional spiking FC layer before the readout
    lam: float = 0.5                          # leak; 1.0 is IAF
    v_th: float = 1.0
    reset: str = "hard"                       # hard | soft | soft_nodecay (GSG Eq. 4)
    surrogate: str | None = None              # None: the training method's shape, else triangle
    surrogate_param: float | None = None      # None: the shape's default
    tdbn: bool | None = None                  # None: on for conv/resnet, off for mlp
    tdbn_alpha: float = 1.0
    carrier: str = "spike"                    # spike | current (ISNM: BN/pool on currents)
    width: int = 64                           # resnet: channels of the first stage; resnet_small: all
    blocks: int = 2                           # resnet_small: identity residual blocks after the stem
    neuron: str = "lif"                       # lif | cuba (synaptic filter before the LIF)
    alpha: float = 0.5                        # cuba: synaptic current decay; 0 is LIF
    encoding: str = "direct"                  # static input: direct | rate | latency

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.hidden = tuple(int(v) for v in self.hidden)
        self.channels = tuple(int(v) for v in self.channels)
        if self.arch not in ARCHS:
            raise ValueError(f"model must be one of {ARCHS}, got {self.arch!r}")
        if self.surrogate is not None:
            lookup(SURROGATES, self.surrogate, "surrogate")
        if self.reset not in LIF_RESETS:
            raise ValueError(f"reset must be one of {LIF_RESETS}, got {self.reset!r}")
        if self.carrier not in ("spike", "current"):
            raise ValueError(f"carrier must be 'spike' or 'current', got {self.carrier!r}")
        if self.pool not in ("avg", "max", "sum", "none"):
            raise ValueError(f"pool must be avg, max, sum or none, got {self.pool!r}")
        if self.neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {self.neuron!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not 0.0 < self.lam <= 1.0:
            raise ValueError(f"lam must be in (0, 1], got {self.lam}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")

    @property
    def use_tdbn(self) -> bool:
        return self.arch != "mlp" if self.tdbn is None else bool(self.tdbn)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
