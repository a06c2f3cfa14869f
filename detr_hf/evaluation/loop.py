"""Evaluating a detector: the evaluation dataloader and the loop that feeds its detections to a CocoEvaluator."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from .coco_evaluator import CocoEvaluator


def eval_dataloader(
    dataset: Dataset, image_processor: Any, batch_size: int = 8, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    """Batches of a detection split for evaluation: resized as `image_processor.size` says, collated by it.

    Every size form of the DETR image processors (ours and transformers', a dict or a ``SizeDict``) is understood:
    ``shortest_edge`` (with or without ``longest_edge``), ``max_height``/``max_width`` (fit inside, up or down) and
    ``height``/``width`` (exact); a processor with ``do_resize=False`` gets the images at their own size.
    """
    import albumentations as A

    from ..data.transforms import bbox_params, build_transforms, make_collate_fn, make_transform_fn
    from ..image_processing_detr import standardize_size

    keys = ("shortest_edge", "longest_edge", "max_height", "max_width", "height", "width")
    size = standardize_size({key: image_processor.size.get(key) for key in keys})
    if not getattr(image_processor, "do_resize", True):
        pipeline = None
    elif "shortest_edge" in size:
        pipeline = build_transforms("eval", [size["shortest_edge"]], size.get("longest_edge"))
    else:
        if "height" in size:
            resize = A.Resize(size["height"], size["width"], area_for_downscale="image")
        else:
            resize = A.LongestMaxSize(max_size_hw=(size["max_height"], size["max_width"]), area_for_downscale="image")
        pipeline = A.Compose([resize], bbox_params=bbox_params(0.0))
    return DataLoader(
        dataset.with_transform(make_transform_fn(pipeline)),
        batch_size=batch_size,
        collate_fn=make_collate_fn(image_processor),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


@torch.no_grad()
def evaluate_detector(
    model: torch.nn.Module,
    image_processor: Any,
    dataloader: Any,
    ground_truth: Dataset,
    accelerator: Any = None,
    *,
    show_progress: bool = True,
    max_detections: int = 100,
) -> tuple[dict[str, Any] | None, CocoEvaluator]:
    """COCO metrics of `model` over a dataloader of collated batches (``pixel_values``, ``pixel_mask``, ``labels``
    with ``orig_size`` and ``image_id``), each image counted once across processes.

    Returns the metrics (None off the main process under Accelerate) and the evaluator holding every detection.
    """
    from tqdm.auto import tqdm

    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = model.training
    model.eval()
    evaluator = CocoEvaluator(ground_truth, id2label=unwrapped.config.id2label, max_detections=max_detections)
    cap = {"top_k": max_detections} if max_detections != 100 else {}  # dense scenes: post-processing keeps 100
    device = next(unwrapped.parameters()).device
    is_main = accelerator is None or accelerator.is_main_process
    for batch in tqdm(dataloader, desc="evaluating", disable=not (show_progress and is_main), leave=False):
        outputs = model(**{key: batch[key].to(device) for key in ("pixel_values", "pixel_mask") if key in batch})
        sizes = [label["orig_size"].tolist() for label in batch["labels"]]
        results = image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes, **cap)
        evaluator.update(results, image_ids=[label["image_id"] for label in batch["labels"]])
    evaluator.gather()
    model.train(was_training)
    return (evaluator.compute() if is_main else None), evaluator


def evaluate_images(
    detector: Any, dataset: Dataset, batch_size: int = 8, *, show_progress: bool = True, max_detections: int = 100
) -> tuple[dict[str, Any], CocoEvaluator]:
    """COCO metrics of any :class:`~detr_hf.inference.Detector` (ONNX Runtime, sliced inference, another
    DETR-family model) on a detection split: each image as decoded from the dataset, detections in its pixels.

    Unlike :func:`evaluate_detector`, which feeds batches already resized by an evaluation dataloader, the detector
    resizes (or slices) each image itself, as it does in ``detr-hf predict``.
    """
    from tqdm.auto import tqdm

    evaluator = CocoEvaluator(dataset, id2label=detector.id2label, max_detections=max_detections)
    rows = dataset.select_columns(["image", "image_id"])
    for start in tqdm(range(0, len(rows), batch_size), desc="evaluating", unit="batch", disable=not show_progress):
        batch = rows[start : start + batch_size]
        results = detector(batch["image"], threshold=0.0)
        evaluator.update(results, image_ids=batch["image_id"])
    return evaluator.compute(), evaluator


def query_budget(model_config: Any) -> int:
    """COCO's ``maxDets`` for a model: its number of queries when above COCO's 100 (dense scenes), else 100."""
    return max(100, int(getattr(model_config, "num_queries", 100) or 100))
