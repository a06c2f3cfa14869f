"""One interface for every way detr_hf runs a detector: images in, detections in image pixels out.

A :class:`Detector` is what ``detr-hf predict/evaluate``, sliced inference and the reports call, whatever runs behind
it: a detr_hf PyTorch model (:class:`TorchDetector`), an ONNX Runtime session, or another DETR-family model through
its adapter. Each one is called on a list of images and returns, per image, the structure of
``post_process_object_detection``::

    detector = load_inference_detector("runs/quickstart")
    results = detector(images, threshold=0.5)   # [{"scores": (n,), "labels": (n,), "boxes": (n, 4) xyxy pixels}]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..imaging import to_rgb8

Detections = dict[str, torch.Tensor]
"""One image's detections: ``scores`` (n,), ``labels`` (n,) int64 and ``boxes`` (n, 4) xyxy in the image's pixels."""


@runtime_checkable
class Detector(Protocol):
    """Detects objects in a batch of images (PIL images, or arrays/tensors the image processor accepts)."""

    id2label: dict[int, str]

    def __call__(self, images: Sequence[Any], threshold: float = 0.5) -> list[Detections]: ...


def image_size(image: Any) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, an (H, W[, C]) array or a (C, H, W) tensor."""
    if hasattr(image, "height") and hasattr(image, "width") and not hasattr(image, "shape"):
        return int(image.height), int(image.width)
    shape = tuple(image.shape)
    if isinstance(image, torch.Tensor) and len(shape) == 3:
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class TorchDetector:
    """A detr_hf PyTorch model and its image processor as a :class:`Detector` (eval mode, no gradients).

    Args:
        model: a ``DetrForObjectDetection`` or ``DeformableDetrForObjectDetection`` (any module whose output the
            processor's ``post_process_object_detection`` reads).
        processor: its image processor (resizing, normalisation, padding and post-processing).
    """

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model.eval()
        self.processor = processor
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @torch.no_grad()
    def __call__(self, images: Sequence[Any], threshold: float = 0.5) -> list[Detections]:
        images = [to_rgb8(image) if hasattr(image, "mode") else image for image in images]
        if not images:
            return []
        batch = self.processor(images=images, return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {key: batch[key].to(device) for key in ("pixel_values", "pixel_mask") if key in batch}
        outputs = self.model(**inputs)
        sizes = [image_size(image) for image in images]
        # dense scenes: as many detections as the model has queries (post-processing's default cap is 100)
        post_process = self.processor.post_process_object_detection
        cap = {"top_k": max(100, int(getattr(self.model.config, "num_queries", 100)))}
        cap = cap if "top_k" in inspect.signature(post_process).parameters else {}
        return post_process(outputs, threshold=threshold, target_sizes=sizes, **cap)


def load_inference_detector(source: str) -> Detector:
    """The :class:`Detector` for a model folder or Hub id that :func:`detr_hf.pretrained.load_detector` loads, or an
    :class:`~detr_hf.onnx.OnnxDetector` for an ``.onnx`` file or a ``detr-hf export`` folder."""
    from ..pretrained import load_detector

    if str(source).lower().endswith(".onnx") or (Path(source) / "model.onnx").is_file():
        from ..onnx import OnnxDetector

        return OnnxDetector(source)

    return TorchDetector(*load_detector(source))
