"""Hardware simulation: noise robustness (noise.py, robustness.py), operation counts and
energy (energy.py, energy_models.py, profiles.py) and NeuroBench's metrics (metrics.py)."""

from .energy import count_energy, energy, fan_out
from .energy_models import ENERGY_MODELS, LemaireCosts
from .graph import LoweredNet, lower, run
from .metrics import static_metrics
from .noise import MISMATCH_PARAMS, QUANT_PRESETS, NoiseSpec, QuantSpec, sample_chips, simulate
from .profiles import PROFILES, EnergyProfile, get_profile
from .robustness import robustness

__all__ = ["ENERGY_MODELS", "MISMATCH_PARAMS", "PROFILES", "QUANT_PRESETS", "EnergyProfile", "LemaireCosts",
           "LoweredNet", "NoiseSpec", "QuantSpec", "count_energy", "energy", "fan_out", "get_profile",
           "lower", "robustness", "run", "sample_chips", "simulate", "static_metrics"]
