"""Hardware simulation: noise robustness (noise.py, robustness.py) and SOP/energy (energy.py)."""

from .energy import count_energy, energy, fan_out
from .graph import LoweredNet, lower, run
from .noise import MISMATCH_PARAMS, QUANT_PRESETS, NoiseSpec, QuantSpec, sample_chips, simulate
from .profiles import PROFILES, EnergyProfile, get_profile
from .robustness import robustness

__all__ = ["MISMATCH_PARAMS", "PROFILES", "QUANT_PRESETS", "EnergyProfile", "LoweredNet", "NoiseSpec",
           "QuantSpec", "count_energy", "energy", "fan_out", "get_profile", "lower", "robustness",
           "run", "sample_chips", "simulate"]
