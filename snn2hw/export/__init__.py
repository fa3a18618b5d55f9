"""Exporters, one module per target, and their registry (one line each).

Every target starts from the NIR graph of ``to_nir.model_to_nir``; see ``base.py``
for the Exporter protocol and ``api.export_model`` for the driver.
"""

from .base import Exporter, Samples, Verification
from .loihi import LoihiExporter
from .nir_target import NIRExporter
from .onnx import ONNXExporter

# target name -> Exporter class
EXPORTERS: dict[str, type] = {
    "nir": NIRExporter,
    "loihi": LoihiExporter,
    "onnx": ONNXExporter,
}

__all__ = ["EXPORTERS", "Exporter", "Samples", "Verification"]
