"""snn2hw: train spiking networks with adaptive surrogate gradients, deploy to
neuromorphic hardware (NIR, Loihi, Speck, ONNX), and estimate noise robustness
and energy."""

__version__ = "0.1.0"

from .api import evaluate, load, resume, train  # noqa: E402

__all__ = ["__version__", "evaluate", "load", "resume", "train"]
