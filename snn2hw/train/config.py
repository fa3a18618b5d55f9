"""The run configuration: training settings plus the model config.

A config file (YAML or TOML) may give any field flat (``epochs: 30``,
``timesteps: 8``) or nest the model fields under ``model:``; method options go
under ``method_options:``. Command-line values override the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.augment import Augment
from ..devices import check_precision
from ..errors import ConfigError
from ..hwsim.noise import noise_spec, parse_noise_options
from ..mapping_file import read_mapping_file
from ..methods import make_method, resolve_surrogate
from ..models.config import ModelConfig
from ..registry import lookup
from .qat import qat_targets


@dataclass
class RunConfig:
    dataset: str = "digits"
    method: str = "sg"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0     # L2 on the weights; never on surrogate shape parameters
    optimizer: str = "adam"       # adam | sgd (the papers': momentum 0.9, weight decay)
    momentum: float = 0.9         # sgd only
    loss: str = "ce"              # ce (on the mean output) | tet (per-step CE + lambda * MSE(o[t], phi))
    tet_lambda: float = 0.05      # TET's MSE weight (Deng et al. 2022)
    tet_phi: float = 1.0          # TET's MSE target constant
    seed: int = 0
    init_from: str | None = None  # checkpoint to start from (TIT: another T is allowed)
    qat: str | None = None        # fine-tune on this target's integer grid (an exporter with a grid, train/qat.py)
    eval_batch_size: int = 512
    val_fraction: float = 0.1     # of the training data, held out to choose best.pt (data.with_validation)
    sync_bn: bool = False         # torchrun: tdBN statistics over the global batch (all ranks)
    shape_lr: float | None = None  # learning rate of learnable surrogate parameters (PSG gamma,
                                   # ASGL alpha); None: same as lr
    precision: str = "fp32"       # fp32 | bf16 | fp16: synapses under autocast, the LIF in fp32 (devices.py)
    augment: str | None = None    # e.g. "crop,flip,cutout" (data/augment.py); None: none
    train_noise: dict[str, Any] = field(default_factory=dict)  # NoiseSpec fields: a fresh chip per
                                   # batch (hwsim/training_noise.py); empty: noise-free training
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if self.loss not in ("ce", "tet"):
            raise ConfigError(f"loss must be 'ce' or 'tet', got {self.loss!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_precision(self.precision)
        Augment.parse(self.augment)
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        # Names and options are checked here, before any data loads: a typo costs nothing.
        make_method(self.method, self.method_options)
        self.model.surrogate = resolve_surrogate(self.method, self.model.surrogate)
        if isinstance(self.train_noise, str):  # the CLI's k=v,... text
            self.train_noise = parse_noise_options(self.train_noise)
        noise_spec(self.train_noise or {})
        if self.qat is not None:
            lookup(dict.fromkeys(qat_targets()), self.qat, "QAT target")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return build_config(d)


RUN_FIELDS = {f.name for f in fields(RunConfig)} - {"model"}
MODEL_FIELDS = {f.name for f in fields(ModelConfig)}


def build_config(values: dict[str, Any]) -> RunConfig:
    """RunConfig from a flat or nested dict; unknown keys are an error naming them."""
    run, model = {}, {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key == "model" and isinstance(value, dict):
            model.update(value)
        elif key == "model":
            model["arch"] = value
        elif key in RUN_FIELDS:
            run[key] = value
        elif key in MODEL_FIELDS:
            model[key] = value
        else:
            raise ConfigError(f"unknown config key {key!r}; known: "
                              f"{sorted(RUN_FIELDS | MODEL_FIELDS)}")
    unknown = set(model) - MODEL_FIELDS
    if unknown:
        raise ConfigError(f"unknown model key(s) {sorted(unknown)}; known: {sorted(MODEL_FIELDS)}")
    try:
        return RunConfig(**run, model=ModelConfig(**model))
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    return read_mapping_file(path, "config keys")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML: numbers, bools, lists)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def merge_options(options: dict[str, Any], config_file: str | None = None,
                  overrides: list[str] = ()) -> RunConfig:
    """defaults < config file < command-line options < --set overrides."""
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update(options)
    for item in overrides:
        path, value = parse_override(item)
        target = values
        for part in path[:-1]:
            target = target.setdefault(part.replace("-", "_"), {})
        target[path[-1].replace("-", "_")] = value
    return build_config(values)
