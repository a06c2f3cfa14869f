"""COCO box evaluation: mAP/mAR as pycocotools computes them, with torchmetrics' metric names.

Ground truth comes from a detection ``datasets.Dataset`` in the package schema (see ``detr_hf.data.schema``) or from
a COCO json (path or dict). Predictions are what an image processor's ``post_process_object_detection`` returns,
plus each image's id. The numbers are computed by faster-coco-eval (default) or pycocotools, and they are the
official COCO numbers: the metrics are read from the backend's accumulated precision/recall arrays with the same
reduction as ``COCOeval.summarize``.

The package: ``ground_truth`` (a dataset or a COCO json as a COCO dict), ``coco_evaluator`` (detections accumulated
across processes, the backends), ``metrics`` (COCOeval's arrays as named metrics), ``tables`` (the text table) and
``loop`` (the evaluation dataloader and ``evaluate_detector``). The operating-point and trust report (docs/reports.md)
builds on the evaluator's stored detections: ``matching`` (one greedy matching at IoU 0.5), ``operating_point``
(per-class thresholds), ``confusion``, ``calibration``, ``bootstrap`` (AP intervals), ``error_gallery``, and
``report`` / ``report_markdown`` (the folder and the model card's section).

Conventions worth knowing:

- Area ranges (small/medium/large) use each ground-truth box's ``area`` from the data, as COCO does (for COCO proper
  that is the segmentation area, not the box area); when a record has no area, ``w * h`` is used.
- ``iscrowd=1`` boxes stay crowd regions: detections matched to them are ignored, neither true nor false positives.
- A metric is ``-1`` when it is undefined (e.g. a class with no ground truth, or no small objects): COCO's convention.
- Per-class results are keyed by class name, over every class the ground truth declares.
"""

from .coco_evaluator import BACKENDS, Backend, CocoEvaluator
from .ground_truth import coco_ground_truth_from_dataset, label_to_category_id_by_name, load_coco_ground_truth
from .loop import eval_dataloader, evaluate_detector, evaluate_images, query_budget
from .metrics import coco_metrics
from .tables import format_metrics_table

__all__ = [
    "BACKENDS",
    "Backend",
    "CocoEvaluator",
    "coco_ground_truth_from_dataset",
    "coco_metrics",
    "eval_dataloader",
    "evaluate_detector",
    "evaluate_images",
    "format_metrics_table",
    "label_to_category_id_by_name",
    "load_coco_ground_truth",
    "query_budget",
]
