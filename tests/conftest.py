"""Shared fixtures: tiny random models (ours and transformers' twin with the same weights) and the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor
from detr_hf.data import load_detection_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rodm_voc2012_multiformat"

TINY_RESNET = dict(
    embedding_size=8,
    hidden_sizes=[8, 16, 24, 32],
    depths=[1, 2, 1, 1],
    layer_type="bottleneck",
    out_features=["stage4"],
)
TINY_DETR = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=3,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    num_queries=10,
    num_labels=4,
)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Gives every BatchNorm/LayerNorm non-trivial statistics and affine parameters, so that parity tests see them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if "norm" not in name:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
            elif name.endswith("weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


def save_tiny_detr(folder: Path, labels: list[str], size: dict[str, int]) -> tuple:
    """Saves a seeded tiny DETR with named classes and its processor to ``folder``; returns (folder, model, processor)."""
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: index for index, name in config.id2label.items()}
    model = DetrForObjectDetection(config).eval()
    processor = DetrImageProcessor(size=size)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def transformers_twin(resnet: dict | None = None, **detr: object) -> tuple:
    """A random transformers DETR and a detr_hf model holding exactly the same weights, both in eval mode."""
    kwargs = {**TINY_DETR, **detr}
    torch.manual_seed(0)
    reference = transformers.DetrForObjectDetection(
        transformers.DetrConfig(backbone_config=ResNetConfig(**(resnet or TINY_RESNET)), **kwargs)
    ).eval()
    randomize_norms(reference)
    ours = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**(resnet or TINY_RESNET)), **kwargs)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.fixture
def twin():
    return transformers_twin()


def padded_batch(sizes: list[tuple[int, int]], channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images of the given (h, w) zero-padded into one batch, with the pixel mask."""
    generator = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixels = torch.zeros(len(sizes), channels, height, width)
    mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(channels, h, w, generator=generator)
        mask[i, :h, :w] = 1
    return pixels, mask


def random_labels(num_boxes: list[int], num_labels: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Targets as the image processor makes them: class ids and normalized (cx, cy, w, h) boxes inside the image."""
    generator = torch.Generator().manual_seed(seed)
    labels = []
    for n in num_boxes:
        wh = torch.rand(n, 2, generator=generator) * 0.4 + 0.05
        centre = wh / 2 + torch.rand(n, 2, generator=generator) * (1 - wh)
        labels.append(
            {
                "class_labels": torch.randint(0, num_labels, (n,), generator=generator),
                "boxes": torch.cat([centre, wh], dim=1),
            }
        )
    return labels


@pytest.fixture
def load(tmp_path):
    """load_detection_dataset with a private cache, no validation split, the report returned, nothing printed."""
    cache = str(tmp_path / "hf_cache")

    def _load(source, **kwargs):
        kwargs.setdefault("val_fraction", 0)
        kwargs.setdefault("verbose", False)
        return load_detection_dataset(source, cache_dir=cache, return_report=True, **kwargs)

    return _load


def free_port() -> int:
    """A TCP port free at this moment, for the rendezvous of a multi-process test."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pycocotools_stats(
    ground_truth: dict | str | Path, results: list[dict] | str | Path, cat_ids: list[int] | None = None
):
    """``COCOeval.stats`` (12 numbers) of plain pycocotools: the reference every COCO number here must equal.

    ``ground_truth`` is a COCO dict or annotation file, ``results`` a COCO results list or file (neither is modified);
    ``cat_ids`` restricts the evaluation to those categories (its summary then covers them only).
    """
    import contextlib
    import copy
    import io
    import json

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text(encoding="utf-8"))
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ground_truth, (str, Path)):
            coco_gt = COCO(str(ground_truth))
        else:
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(ground_truth)
            coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else COCO()  # loadRes refuses an empty list
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.asarray(coco_eval.stats)
