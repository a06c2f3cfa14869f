"""``pipeline("sliced-object-detection")``: transformers' object-detection pipeline by sliced inference.

from transformers import pipeline
import detr_hf  # registers the task
detector = pipeline("sliced-object-detection", model="runs/aerial")
detector("scene.tif", tile_size=512, overlap=0.2, threshold=0.3)   # [{"score", "label", "box": {...}}, ...]

The output has the format of ``pipeline("object-detection")``; the options are those of
:func:`detr_hf.inference.sliced.sliced_detection` (``slice_batch_size`` is its ``batch_size``: the pipeline's own
``batch_size`` groups images, which a sliced call does not). Any ``AutoModelForObjectDetection`` with its image
processor works: detr_hf's models and the DETR-family models of transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForObjectDetection
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, ObjectDetectionPipeline

from .detector import Detections, TorchDetector
from .sliced import decode_once, sliced_detection

TASK = "sliced-object-detection"
_OPTIONS = set(sliced_detection.__kwdefaults__) - {"batch_size"} | {"slice_batch_size"}


class SlicedObjectDetectionPipeline(ObjectDetectionPipeline):
    """Object detection on large images: overlapping tiles batched through the model, merged back per class.

    Call options (all optional): ``tile_size``, ``overlap``, ``slice_batch_size``, ``full_image_pass``,
    ``full_image_size``, ``merge`` (``"nmm"``/``"nms"``), ``match_metric`` (``"ios"``/``"iou"``),
    ``match_threshold``, ``threshold``, ``max_image_pixels``, ``timeout`` (for URLs).
    """

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        unknown = set(kwargs) - _OPTIONS - {"timeout"}
        if unknown:
            raise TypeError(f"{TASK} pipeline: unknown option(s) {sorted(unknown)}; it takes {sorted(_OPTIONS)}")
        preprocess = {key: kwargs[key] for key in ("timeout", "max_image_pixels") if key in kwargs}
        forward = {key: value for key, value in kwargs.items() if key in _OPTIONS}
        if "slice_batch_size" in forward:
            forward["batch_size"] = forward.pop("slice_batch_size")
        return preprocess, forward, {}

    def preprocess(self, image: Any, timeout: float | None = None, max_image_pixels: int | None = None) -> dict:
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            image = load_image(image, timeout=timeout)
        return {"image": decode_once(image, max_image_pixels)}  # decoded once; tiles are cut in _forward

    def _forward(self, model_inputs: dict, **options: Any) -> dict:
        detector = TorchDetector(self.model, self.image_processor)
        return {"detections": sliced_detection(detector, None, model_inputs["image"], **options)}

    def postprocess(self, model_outputs: dict, **_: Any) -> list[dict[str, Any]]:
        detections: Detections = model_outputs["detections"]
        id2label = self.model.config.id2label
        return [
            {"score": score, "label": id2label[label], "box": self._get_bounding_box(box)}
            for score, label, box in zip(
                detections["scores"].tolist(), detections["labels"].tolist(), detections["boxes"]
            )
        ]


def register_sliced_pipeline() -> None:
    """Make ``pipeline("sliced-object-detection", model=...)`` build :class:`SlicedObjectDetectionPipeline`."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=SlicedObjectDetectionPipeline, pt_model=AutoModelForObjectDetection, type="image"
        )
