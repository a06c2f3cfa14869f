"""Matcher and set criterion: against transformers' and scipy's answers, edge cases, focal loss, distributed."""

from __future__ import annotations

import itertools
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import random_labels
from transformers.loss.loss_for_object_detection import HungarianMatcher as ReferenceMatcher
from transformers.loss.loss_for_object_detection import sigmoid_focal_loss as reference_focal_loss

from detr_hf import DetrConfig
from detr_hf.layers.criterion import SetCriterion
from detr_hf.layers.matcher import HungarianMatcher


def _predictions(batch: int = 3, queries: int = 12, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=generator)
    boxes = torch.cat(
        [
            torch.rand(batch, queries, 2, generator=generator) * 0.6 + 0.2,
            torch.rand(batch, queries, 2, generator=generator) * 0.3 + 0.05,
        ],
        -1,
    )
    return logits, boxes


def test_matching_equals_transformers_and_is_optimal():
    logits, boxes = _predictions()
    targets = random_labels([4, 0, 6], num_labels=4)
    ours = HungarianMatcher(1, 5, 2)(logits, boxes, targets)
    theirs = ReferenceMatcher(1, 5, 2)({"logits": logits, "pred_boxes": boxes}, targets)
    for (rows, cols), (ref_rows, ref_cols) in zip(ours, theirs):
        assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)
    assert len(ours[1][0]) == 0
    # brute force on a small case: no other assignment has a lower cost
    small_logits, small_boxes = _predictions(batch=1, queries=5, seed=3)
    small_targets = random_labels([3], num_labels=4, seed=3)
    matcher = HungarianMatcher(1, 5, 2)
    rows, cols = matcher(small_logits, small_boxes, small_targets)[0]
    cost = _cost(matcher, small_logits, small_boxes, small_targets)
    best = min(sum(cost[q, t].item() for t, q in enumerate(p)) for p in itertools.permutations(range(5), 3))
    assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


def _cost(matcher, logits, boxes, targets):
    from detr_hf.box_ops import cxcywh_to_xyxy, generalized_box_iou

    probs = logits[0].softmax(-1)[:, targets[0]["class_labels"]]
    l1 = torch.cdist(boxes[0], targets[0]["boxes"], p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes[0]), cxcywh_to_xyxy(targets[0]["boxes"]))
    return -matcher.class_cost * probs + matcher.bbox_cost * l1 - matcher.giou_cost * giou


def test_non_finite_cost_raises_a_clear_error():
    logits, boxes = _predictions()
    targets = random_labels([2, 1, 1])
    logits[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="logits contain NaN"):
        HungarianMatcher()(logits, boxes, targets)
    logits, _ = _predictions()
    targets[2]["boxes"][0, 0] = float("inf")
    with pytest.raises(ValueError, match="target boxes of image 2"):
        HungarianMatcher()(logits, boxes, targets)


def test_batch_without_any_object_gives_only_no_object_loss():
    config = DetrConfig(num_labels=4, auxiliary_loss=False)
    logits, boxes = _predictions(classes=5)
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)} for _ in range(3)]
    loss, terms = SetCriterion(config)(logits, boxes, empty)
    assert terms["loss_bbox"] == 0 and terms["loss_giou"] == 0 and terms["loss_ce"] > 0
    assert torch.isfinite(loss)


def test_focal_loss_matches_transformers_formula_and_uses_all_classes():
    config = DetrConfig(num_labels=5, use_focal_loss=True, auxiliary_loss=False, class_loss_coefficient=2.0)
    assert config.num_classes_with_background == 5
    logits, boxes = _predictions(classes=5)
    targets = random_labels([3, 2, 0], num_labels=5)
    criterion = SetCriterion(config)
    loss, terms = criterion(logits, boxes, targets)
    matching = criterion.matcher(logits, boxes, targets)
    onehot = torch.zeros_like(logits)
    for i, (rows, cols) in enumerate(matching):
        onehot[i, rows, targets[i]["class_labels"][cols]] = 1
    num_boxes = 5.0
    # transformers (Deformable DETR) scales its mean-over-queries focal loss back by the number of queries
    expected = reference_focal_loss(logits, onehot, num_boxes) * logits.shape[1]
    torch.testing.assert_close(terms["loss_ce"], expected)
    assert "cardinality_error" not in terms
    torch.testing.assert_close(loss, 2.0 * terms["loss_ce"] + 5 * terms["loss_bbox"] + 2 * terms["loss_giou"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        config = DetrConfig(num_labels=4, auxiliary_loss=False)
        logits, boxes = _predictions(batch=1, seed=rank)
        targets = random_labels([1 if rank == 0 else 5], seed=rank)
        results[rank] = SetCriterion(config)(logits, boxes, targets)[1]["loss_bbox"].item()
    finally:
        torch.distributed.destroy_process_group()


def test_number_of_boxes_is_averaged_across_processes():
    """DETR normalizes by the boxes of all processes: here (1 + 5) / 2 = 3 on each, not 1 and 5."""
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(_free_port(), results), nprocs=2, join=True)
    config = DetrConfig(num_labels=4, auxiliary_loss=False)
    for rank, own_boxes in ((0, 1), (1, 5)):
        logits, boxes = _predictions(batch=1, seed=rank)
        targets = random_labels([own_boxes], seed=rank)
        alone = SetCriterion(config)(logits, boxes, targets)[1]["loss_bbox"].item()
        assert results[rank] == pytest.approx(alone * own_boxes / 3, rel=1e-5)
