"""Running an exported detector with ONNX Runtime: :class:`OnnxDetector`, a :class:`~detr_hf.inference.Detector`.

detector = OnnxDetector("runs/aerial/onnx")        # or ".../model.onnx"; no PyTorch weights needed
results = detector(images, threshold=0.5)          # [{"scores", "labels", "boxes" xyxy pixels}] per image
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference.detector import Detections, image_size


def export_paths(source: str | Path) -> tuple[Path, Path]:
    """``(folder, model.onnx)`` of an export folder or of an ``.onnx`` file inside one."""
    source = Path(source)
    if source.is_dir():
        return source, source / "model.onnx"
    return source.parent, source


def is_onnx_source(source: str | Path) -> bool:
    """True for an ``.onnx`` file or a folder holding ``model.onnx`` (an export folder)."""
    source = Path(source)
    return source.suffix.lower() == ".onnx" or (source.is_dir() and (source / "model.onnx").is_file())


class OnnxDetector:
    """An exported detector (``detr-hf export``'s folder) run by ONNX Runtime, with the saved image processor.

    Args:
        source: the export folder, or its ``model.onnx`` (``preprocessor_config.json`` and ``config.json`` are read
            from the same folder).
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, source: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        from ..image_processing_detr import DetrImageProcessor

        folder, path = export_paths(source)
        for needed in (path, folder / "config.json", folder / "preprocessor_config.json"):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} is missing: OnnxDetector reads the folder detr-hf export writes")
        self.path = path
        self.processor = DetrImageProcessor.from_pretrained(str(folder))
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.id2label = {int(k): v for k, v in config["id2label"].items()}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
        first = self.session.get_inputs()[0]
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, pixel_values: np.ndarray, pixel_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs ``(logits (batch, queries, classes), pred_boxes (batch, queries, 4))`` of a processed batch
        (a graph with a fixed batch size is run in chunks of that size)."""
        step = self.fixed_batch or len(pixel_values)
        logits, boxes = [], []
        for start in range(0, len(pixel_values), step):
            feed = {"pixel_values": pixel_values[start : start + step], "pixel_mask": pixel_mask[start : start + step]}
            out = self.session.run(["logits", "pred_boxes"], {k: v for k, v in feed.items() if k in self.input_names})
            logits.append(out[0])
            boxes.append(out[1])
        return np.concatenate(logits), np.concatenate(boxes)

    def __call__(self, images: Sequence[Any], threshold: float = 0.5) -> list[Detections]:
        from ..imaging import to_rgb8

        images = [to_rgb8(image) if hasattr(image, "mode") else image for image in images]
        if not images:
            return []
        batch = self.processor(images=images, return_tensors="pt")
        logits, boxes = self.run(batch["pixel_values"].numpy(), batch["pixel_mask"].numpy().astype(np.int64))
        outputs = {"logits": torch.from_numpy(logits).float(), "pred_boxes": torch.from_numpy(boxes).float()}
        sizes = [image_size(image) for image in images]
        return self.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)


__all__ = ["OnnxDetector", "export_paths", "is_onnx_source"]
