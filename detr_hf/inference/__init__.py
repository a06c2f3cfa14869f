"""Running a trained detector on images: one :class:`Detector` interface over PyTorch, ONNX Runtime and adapters."""

from .detector import Detections, Detector, TorchDetector, image_size, load_inference_detector
from .sliced import SlicedDetector, merge_detections, sliced_detection

__all__ = [
    "Detections",
    "Detector",
    "SlicedDetector",
    "TorchDetector",
    "image_size",
    "load_inference_detector",
    "merge_detections",
    "sliced_detection",
]
