"""snn2hw: train spiking networks with adaptive surrogate gradients, deploy them to
neuromorphic hardware (NIR, Loihi, Speck, ONNX), and estimate noise robustness
and energy.

The package root is the facade (the top of the import order, docs/architecture.md):
no module inside snn2hw imports it; the version lives in ``snn2hw.version``.
"""

from .version import __version__
from .api import evaluate, load, resume, train  # noqa: E402  (the facade, after the version)

__all__ = ["__version__", "evaluate", "load", "resume", "train"]
