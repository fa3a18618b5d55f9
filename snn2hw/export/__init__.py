"""Exporters, one package per target, and their registry (one line each).

Every target starts from the NIR graph of ``to_nir.model_to_nir``; see ``base.py``
for the Exporter protocol and ``api.export_model`` for the driver.
"""

from .base import Exporter, Samples, Verification
from .loihi import LoihiExporter
from .nir_file import NIRExporter, NIRSinabsExporter
from .onnx import ONNXExporter
from .speck import SpeckExporter
from .xylo import XyloExporter

# target name -> Exporter class, keyed by each class's own ``name`` (a new target: one line)
EXPORTERS: dict[str, type] = {cls.name: cls for cls in (
    NIRExporter,
    NIRSinabsExporter,
    LoihiExporter,
    ONNXExporter,
    SpeckExporter,
    XyloExporter,
)}

__all__ = ["EXPORTERS", "Exporter", "Samples", "Verification"]
