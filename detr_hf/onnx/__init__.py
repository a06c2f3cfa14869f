"""Deployment through ONNX: export a trained detector (``export``), gate the artifact's accuracy (``gate``), run it
with ONNX Runtime (``runtime.OnnxDetector``), in fp32, fp16 or int8 (``precision``). See docs/export.md.

Needs the ``export`` extra (``onnx``, ``onnxruntime``, ``onnxscript``); importing this package does not load them.
"""

from .export import DEFAULT_OPSET, PRECISIONS, DetectionGraph, export_folder, export_graph, supports_dynamic_size
from .gate import MAX_AP_DROP, OUTPUT_TOLERANCE, ExportGateError, gate_artifact, gate_failures
from .runtime import OnnxDetector, is_onnx_source

__all__ = [
    "DEFAULT_OPSET",
    "MAX_AP_DROP",
    "OUTPUT_TOLERANCE",
    "PRECISIONS",
    "DetectionGraph",
    "ExportGateError",
    "OnnxDetector",
    "export_folder",
    "export_graph",
    "gate_artifact",
    "gate_failures",
    "is_onnx_source",
    "supports_dynamic_size",
]
