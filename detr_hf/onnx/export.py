"""Exporting a trained detector to ONNX: the graph (pixels in, logits and boxes out) and the folder around it.

The graph is traced with PyTorch's TorchScript-based exporter (``dynamo=False``): on detr_hf's models it exports in
seconds and keeps the batch and, for DETR, the image size dynamic, where the dynamo exporter took minutes on a tiny
model and fixed Deformable DETR's image size anyway. Deformable DETR's feature-level sizes are Python numbers in the
model (level offsets, sampling normalizers), so its graph has one image size: the export letterboxes every image into
it (resize to fit, pad bottom/right, ``pixel_mask`` marks the padding).

The folder: ``model.onnx``, ``preprocessor_config.json`` (the processor that feeds the graph), ``config.json`` (labels)
and ``export_report.json`` (written by :mod:`detr_hf.onnx.gate`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAMES = ["pixel_values", "pixel_mask"]
OUTPUT_NAMES = ["logits", "pred_boxes"]
DEFAULT_OPSET = 17  # grid_sample (Deformable DETR's sampling) needs 16


class DetectionGraph(nn.Module):
    """What the ONNX graph computes: ``(logits (batch, queries, classes), pred_boxes (batch, queries, 4))`` from
    ``pixel_values (batch, channels, height, width)`` and ``pixel_mask (batch, height, width)``; in eval mode, so no
    denoising queries, matcher, loss or auxiliary outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards: a training-mode wrapper would leave dropout on

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, return_dict=True)
        return outputs.logits, outputs.pred_boxes


def supports_dynamic_size(model: nn.Module) -> bool:
    """DETR's graph takes any image size; Deformable DETR's (multi-scale levels) is traced at one size."""
    from ..modeling_detr import DetrForObjectDetection

    return isinstance(model, DetrForObjectDetection)


def default_image_size(processor: Any) -> tuple[int, int]:
    """The fixed ``(height, width)`` an export uses when none is given: the box the processor resizes images into."""
    size = processor.size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    if "max_height" in size:
        return int(size["max_height"]), int(size["max_width"])
    shortest = int(size["shortest_edge"])
    return shortest, int(size.get("longest_edge") or shortest)


def export_processor(processor: Any, model: nn.Module, image_size: tuple[int, int] | None) -> Any:
    """The processor that feeds the graph: the model's, or, for a fixed `image_size`, one that fits each image into
    ``(height, width)`` keeping its aspect ratio and pads it there (``pixel_mask`` marks the padding)."""
    processor = copy.deepcopy(processor)
    processor.use_focal_loss = bool(model.config.use_focal_loss)
    if image_size is not None:
        height, width = image_size
        processor.do_resize, processor.do_pad = True, True
        processor.size = {"max_height": int(height), "max_width": int(width)}
        processor.pad_size = {"height": int(height), "width": int(width)}
    return processor


def sample_images(count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Synthetic shape images (landscape, portrait, ...: `count` of them) for the output checks and the trace."""
    from ..data.synthetic import SyntheticShapesConfig, generate_image, image_rng

    sizes = [(240, 320), (320, 200), (256, 256), (200, 360)]
    return [
        generate_image(image_rng(seed, "validation", i), SyntheticShapesConfig(height=h, width=w)).image
        for i, (h, w) in enumerate(sizes[i % len(sizes)] for i in range(count))
    ]


def model_inputs(processor: Any, images: list[Any]) -> tuple[Tensor, Tensor]:
    """``(pixel_values, pixel_mask)`` of `images` as the export's processor makes them (one padded batch)."""
    batch = processor(images=list(images), return_tensors="pt")
    return batch["pixel_values"], batch["pixel_mask"]


def export_graph(
    model: nn.Module,
    example: tuple[Tensor, Tensor],
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
) -> Path:
    """Writes the fp32 graph of `model` traced on `example` (``pixel_values``, ``pixel_mask``) to `path`."""
    if opset < 16:
        raise ValueError(f"opset {opset}: detr_hf exports need opset 16 or later (grid_sample, Deformable DETR)")
    if dynamic_size and not supports_dynamic_size(model):
        raise ValueError(
            f"{type(model).__name__} exports at one image size (its feature levels' sizes are traced as numbers); "
            "give --image-size HEIGHT WIDTH instead of --dynamic-size"
        )
    axes: dict[str, dict[int, str]] = {name: {} for name in INPUT_NAMES + OUTPUT_NAMES}
    if dynamic_batch:
        for name in axes:
            axes[name][0] = "batch"
    if dynamic_size:
        axes["pixel_values"].update({2: "height", 3: "width"})
        axes["pixel_mask"].update({1: "height", 2: "width"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings name constants the graph is right to keep
        torch.onnx.export(
            DetectionGraph(model),
            tuple(example),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={name: axis for name, axis in axes.items() if axis},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def export_folder(
    model: nn.Module,
    processor: Any,
    output: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    image_size: tuple[int, int] | None = None,
    dynamic_size: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Exports `model` into the folder `output`: ``model.onnx`` at `precision`, the export's processor and the
    config. Without `image_size` and `dynamic_size`, DETR gets a dynamic size and Deformable DETR the processor's
    box (:func:`default_image_size`). Returns the export's settings (the start of ``export_report.json``)."""
    from .precision import convert_precision

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if image_size is not None and dynamic_size:
        raise ValueError("give either an image size or dynamic_size, not both")
    model = model.eval()
    if image_size is None and not dynamic_size:
        if supports_dynamic_size(model):
            dynamic_size = True
        else:
            image_size = default_image_size(processor)
    processor = export_processor(processor, model, image_size)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    images = sample_images(2 if dynamic_batch else 1)
    example = model_inputs(processor, images)
    final = output / "model.onnx"
    fp32 = final if precision == "fp32" else output / "model_fp32.tmp.onnx"
    export_graph(model, example, fp32, opset=opset, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size)
    if precision != "fp32":
        convert_precision(fp32, final, precision)
        fp32.unlink()
    processor.save_pretrained(output)
    model.config.save_pretrained(output)
    channels = int(example[0].shape[1])
    return {
        "model_type": model.config.model_type,
        "opset": opset,
        "precision": precision,
        "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__}",
        "inputs": {
            "pixel_values": ["batch" if dynamic_batch else 1, channels]
            + (["height", "width"] if dynamic_size else list(image_size)),
            "pixel_mask": ["batch" if dynamic_batch else 1]
            + (["height", "width"] if dynamic_size else list(image_size)),
        },
        "outputs": {"logits": ["batch", "queries", "classes"], "pred_boxes": ["batch", "queries", 4]},
    }


__all__ = [
    "DEFAULT_OPSET",
    "PRECISIONS",
    "DetectionGraph",
    "default_image_size",
    "export_folder",
    "export_graph",
    "export_processor",
    "model_inputs",
    "sample_images",
    "supports_dynamic_size",
]
