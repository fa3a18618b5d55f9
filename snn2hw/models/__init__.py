from .config import ModelConfig
from .network import SpikingNetwork, build_model

__all__ = ["ModelConfig", "SpikingNetwork", "build_model"]
