"""What each detection's object query looked at, for every model kind, as arrays in image pixels and as pictures.

* vanilla DETR: the decoder's cross-attention map of the query, per layer (mean over heads), over the image;
* Deformable DETR / ``dino_like``: the query's sampling points per decoder layer, at every feature level, with their
  attention weights, the reference box the layer samples around and the box the layer predicts.

::

    from detr_hf.explain import explain_detections

    explanation = explain_detections(model, processor, image, top_k=5, threshold=0.3)
    for query, figure in zip(explanation.queries, explanation.figures()):
        figure.savefig(f"query_{query.query}.png")
    explanation.queries[0].sampling_points  # (layers, heads, levels, points, 2) x, y in image pixels

``detr-hf predict --explain`` writes one such picture per detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..imaging import to_rgb8

__all__ = ["Explanation", "QueryExplanation", "explain_detections", "explain_detector"]


@dataclass
class QueryExplanation:
    """One detection's query, every array in pixels of the original image (x to the right, y down).

    Attributes:
        query: the query's index in the model's output.
        label, score: the detection's class id and score (the final layer's).
        box: ``(4,)`` its final box, xyxy.
        layer_boxes: ``(layers, 4)`` xyxy, the box each decoder layer predicts (the last one is ``box``).
        layer_labels, layer_scores: ``(layers,)``, each layer's best class and its score.
        reference_boxes: deformable only, ``(layers, 4)`` xyxy, the reference each layer samples around (layer i's is
            layer i-1's refined box with box refinement; a point, as a box of zero size, for learned queries).
        sampling_points: deformable only, ``(layers, heads, levels, points, 2)`` where the cross-attention samples.
        sampling_weights: deformable only, ``(layers, heads, levels, points)``, summing to 1 per layer and head.
        attention_maps: DETR only, ``(layers, height, width)``: the cross-attention over the feature map, mean over
            heads, upsampled to the image and scaled to its own maximum.
    """

    query: int
    label: int
    score: float
    box: np.ndarray
    layer_boxes: np.ndarray
    layer_labels: np.ndarray
    layer_scores: np.ndarray
    reference_boxes: np.ndarray | None = None
    sampling_points: np.ndarray | None = None
    sampling_weights: np.ndarray | None = None
    attention_maps: np.ndarray | None = None


@dataclass
class Explanation:
    """An image's explained detections, best score first. ``kind`` is ``"deformable"`` or ``"detr"``;
    ``level_strides`` the deformable feature levels' strides in image pixels (approximate, for legends)."""

    kind: str
    image: Any
    queries: list[QueryExplanation]
    id2label: dict[int, str]
    level_strides: list[float] = field(default_factory=list)

    def figures(self) -> list:
        """One matplotlib figure per detection: the image and, per decoder layer, what the query looked at."""
        from .figures import query_figure

        return [query_figure(self, query) for query in self.queries]


def _class_scores(logits: torch.Tensor, use_focal_loss: bool) -> torch.Tensor:
    """``(..., queries, classes)`` real-class probabilities: sigmoid for focal heads, softmax minus "no object"."""
    return logits.float().sigmoid() if use_focal_loss else logits.float().softmax(-1)[..., :-1]


def select_detections(
    final_scores: torch.Tensor, top_k: int | None, threshold: float, use_focal_loss: bool
) -> list[tuple[int, int, float]]:
    """The detections as ``post_process_object_detection`` makes them, as ``(query, label, score)`` best first:
    scores above ``threshold``, at most ``top_k``. ``final_scores``: ``(queries, classes)``. Softmax heads: each
    query's best class; focal heads: every (query, class) pair competes, so a query may explain two detections."""
    if use_focal_loss:
        flat = final_scores.flatten()
        order = flat.argsort(descending=True, stable=True)
        classes = final_scores.shape[1]
        found = [(int(i) // classes, int(i) % classes, float(flat[i])) for i in order if float(flat[i]) > threshold]
    else:
        best, labels = final_scores.max(-1)
        order = best.argsort(descending=True, stable=True)
        found = [(int(q), int(labels[q]), float(best[q])) for q in order if float(best[q]) > threshold]
    return found if top_k is None else found[:top_k]


def is_deformable(model: torch.nn.Module) -> bool:
    """Whether ``model`` samples with deformable attention (Deformable DETR, ``dino_like``), not DETR's dense one."""
    return hasattr(model.config, "decoder_n_points")


@torch.no_grad()
def explain_detections(
    model: torch.nn.Module, processor: Any, image: Any, top_k: int | None = 5, threshold: float = 0.3
) -> Explanation:
    """Explain the detections of ``model`` (a detr_hf ``DetrForObjectDetection`` or
    ``DeformableDetrForObjectDetection``) on one ``image`` (PIL, or an array the processor takes): for each of the
    ``top_k`` queries whose best class scores above ``threshold``, what it looked at in every decoder layer (see
    :class:`QueryExplanation`). The pictures come from :meth:`Explanation.figures`."""
    if not hasattr(model, "config") or not hasattr(model.config, "decoder_layers"):
        raise TypeError(f"explain_detections needs a detr_hf DETR or Deformable DETR model, got {type(model).__name__}")
    image = to_rgb8(image) if hasattr(image, "mode") else image
    was_training = model.training
    model.eval()
    try:
        if is_deformable(model):
            from .deformable import explain_deformable

            return explain_deformable(model, processor, image, top_k, threshold)
        from .detr import explain_detr

        return explain_detr(model, processor, image, top_k, threshold)
    finally:
        model.train(was_training)


def explain_detector(detector: Any) -> tuple[torch.nn.Module, Any]:
    """The PyTorch model and processor behind a :class:`~detr_hf.inference.Detector`, for :func:`explain_detections`;
    a clear error for detectors that run something else (ONNX Runtime, another library's model)."""
    model, processor = getattr(detector, "model", None), getattr(detector, "processor", None)
    if not isinstance(model, torch.nn.Module) or processor is None or not hasattr(model.config, "decoder_layers"):
        raise TypeError(
            f"{type(detector).__name__} cannot explain its detections: explaining needs a detr_hf PyTorch model "
            "(a TorchDetector, e.g. load_inference_detector(<model folder>)); ONNX and adapted models hide the "
            "decoder's attention"
        )
    return model, processor
