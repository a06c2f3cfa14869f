"""Running a trained detector on images: one :class:`Detector` interface over PyTorch, ONNX Runtime and adapters."""

from .detector import Detections, Detector, TorchDetector, image_size, load_inference_detector

__all__ = ["Detections", "Detector", "TorchDetector", "image_size", "load_inference_detector"]
