"""DINO's additions to Deformable DETR: anchor queries, mixed query selection, look-forward-twice, denoising."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_DETR, padded_batch, random_labels
from test_deformable import SMALL_RESNET

from detr_hf import DeformableDetrConfig, DeformableDetrForObjectDetection
from detr_hf.box_ops import cxcywh_to_xyxy
from detr_hf.layers.denoising import make_denoising_queries

BACKBONE = {**SMALL_RESNET, "out_features": ["stage2", "stage3", "stage4"]}
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def dino(**overrides: object) -> DeformableDetrForObjectDetection:
    torch.manual_seed(0)
    options = {**TINY_DETR, "num_queries": 12, "num_denoising": 12, **NO_DROPOUT, **overrides}
    return DeformableDetrForObjectDetection(DeformableDetrConfig.dino_like(backbone_config=BACKBONE, **options))


def test_denoising_queries_group_mask_and_known_assignment():
    labels = random_labels([3, 1], num_labels=4)
    embedding = torch.nn.Embedding(5, 8)
    torch.manual_seed(0)
    queries = make_denoising_queries(labels, embedding, 24, 7, label_noise_ratio=0.5, box_noise_scale=1.0)
    assert (queries.groups, queries.max_objects, queries.num_queries) == (4, 3, 24)  # 24 // (2 * 3) groups
    mask = queries.attention_mask
    assert mask.shape == (31, 31)
    assert not mask[24:, :24].any() and mask[24:, 24:].all()  # matching queries never see denoising ones
    assert mask[:24, 24:].all()  # denoising queries see the matching ones
    group = torch.arange(24) // 6
    assert torch.equal(mask[:24, :24], group[:, None] == group[None])
    rows, cols = queries.matching(labels)[0]
    assert rows.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 18, 19, 20] and cols.tolist() == [0, 1, 2] * 4
    rows, cols = queries.matching(labels)[1]
    assert rows.tolist() == [0, 6, 12, 18] and cols.tolist() == [0] * 4
    # padding: image 1 has one object, so its copies 1-2 and 4-5 of each group are the padding row, with no box
    padded = torch.tensor([1, 2, 4, 5])
    assert torch.equal(queries.content[1, padded], embedding.weight[4].expand(4, -1))
    assert (queries.boxes[1, padded] == 0).all()


def test_denoising_noise_keeps_positives_close_and_pushes_negatives_away():
    labels = random_labels([4], num_labels=4, seed=3)
    torch.manual_seed(0)
    queries = make_denoising_queries(labels, torch.nn.Embedding(5, 8), 800, 1, 0.0, 1.0)
    corners = cxcywh_to_xyxy(queries.boxes[0]).view(queries.groups, 2, 4, 4)  # group, positive/negative, object
    target = labels[0]["boxes"]
    moved = (corners - cxcywh_to_xyxy(target)).abs()
    limit = (target[:, 2:].repeat(1, 2) / 2).expand_as(moved[:, 0])  # half the box size, per corner coordinate
    assert (moved[:, 0] <= limit + 1e-6).all() and (moved[:, 0] > 0).any()
    unclipped = (corners[:, 1] > 0) & (corners[:, 1] < 1)
    assert (moved[:, 1][unclipped] >= limit[unclipped] - 1e-6).all()
    assert (moved[:, 1][unclipped] <= 2 * limit[unclipped] + 1e-6).all()


def test_label_noise_flips_about_the_asked_share():
    labels = [{"class_labels": torch.zeros(50, dtype=torch.int64), "boxes": torch.full((50, 4), 0.3)}]
    embedding = torch.nn.Embedding(101, 4)
    torch.manual_seed(0)
    queries = make_denoising_queries(labels, embedding, 10000, 1, label_noise_ratio=0.5, box_noise_scale=0.0)
    ids = torch.cdist(queries.content[0], embedding.weight).argmin(-1)
    flipped = (ids != 0).float().mean().item()
    assert 0.2 < flipped < 0.3  # half the ratio, minus flips that land on the true class
    assert torch.equal(queries.boxes[0], labels[0]["boxes"].repeat(2 * queries.groups, 1))


def test_matching_queries_ignore_the_denoising_queries():
    """The attention mask at work: with denoising on, the matching queries' outputs are those of a run without it."""
    model = dino().train()
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    labels = random_labels([3, 2])
    with torch.no_grad():
        with_denoising = model(pixels, pixel_mask=mask, labels=labels)
        model.model.denoising_label_embed, saved = None, model.model.denoising_label_embed
        without = model(pixels, pixel_mask=mask, labels=labels)
        model.model.denoising_label_embed = saved
    assert any(k.endswith("_dn") for k in with_denoising.loss_dict) and not any("_dn" in k for k in without.loss_dict)
    torch.testing.assert_close(with_denoising.logits, without.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_denoising.pred_boxes, without.pred_boxes, atol=1e-5, rtol=0)
    assert with_denoising.loss > without.loss
    torch.testing.assert_close(with_denoising.loss, model.criterion.weighted_sum(with_denoising.loss_dict))


def test_every_dino_parameter_trains_and_the_denoising_loss_sees_every_layer():
    model = dino().train()
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    outputs = model(pixels, pixel_mask=mask, labels=random_labels([3, 0]))
    layers = model.config.decoder_layers
    expected = {f"loss_{t}_dn{s}" for t in ("ce", "bbox", "giou") for s in ["", *(f"_{i}" for i in range(layers - 1))]}
    assert expected <= set(outputs.loss_dict) and {"loss_ce_enc", "loss_giou_enc"} <= set(outputs.loss_dict)
    assert outputs.pred_boxes.shape == (2, 12, 4)  # matching queries only
    outputs.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert (
        model.model.content_embed.weight.grad.abs().sum() > 0
        and model.model.denoising_label_embed.weight.grad.abs().sum() > 0
    )


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_trains_the_previous_layers_box_head(look_forward_twice):
    model = dino(num_denoising=0, look_forward_twice=look_forward_twice).train()
    pixels, mask = padded_batch([(64, 64)])
    model(pixels, pixel_mask=mask).pred_boxes.sum().backward()  # the last layer's boxes only
    gradient = model.bbox_embed[model.config.decoder_layers - 2].layers[-1].weight.grad
    assert (gradient is not None and gradient.abs().sum() > 0) == look_forward_twice


@pytest.mark.parametrize(
    "options",
    [{}, {"two_stage": False, "mixed_query_selection": False}, {"mixed_query_selection": False}],
    ids=["dino", "dab-learned-anchors", "pure-query-selection"],
)
def test_options_round_trip_through_save_and_load(tmp_path, options):
    model = dino(**options).eval()
    model.save_pretrained(tmp_path)
    loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
    for key in ("anchor_queries", "mixed_query_selection", "look_forward_twice", "num_denoising", "two_stage"):
        assert getattr(loaded.config, key) == getattr(model.config, key)
    pixels, mask = padded_batch([(64, 80)])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixels, pixel_mask=mask).pred_boxes, model(pixels, pixel_mask=mask).pred_boxes
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_denoising": 10}, "anchor_queries"),
        ({"mixed_query_selection": True, "anchor_queries": True}, "two_stage"),
        ({"look_forward_twice": True, "with_box_refine": False}, "with_box_refine"),
    ],
)
def test_inconsistent_options_are_refused_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        DeformableDetrConfig(backbone_config=BACKBONE, **TINY_DETR, **options)


def test_another_label_set_renews_or_keeps_the_denoising_label_rows_with_the_class_heads(tmp_path):
    from detr_hf.training import TrainingConfig, build_detector

    model = dino()
    model.config.id2label = {0: "dog", 1: "triangle", 2: "cat", 3: "circle"}
    model.save_pretrained(tmp_path)
    original = model.model.denoising_label_embed.weight.detach()
    kept, _ = build_detector(TrainingConfig(model=str(tmp_path)), ["circle", "triangle"])
    torch.testing.assert_close(kept.model.denoising_label_embed.weight, original[[3, 1, 4]])  # + the padding row
    assert kept.class_embed[0].weight.shape[0] == 2
    renewed = DeformableDetrForObjectDetection.from_pretrained(tmp_path, num_labels=6)
    assert renewed.model.denoising_label_embed.weight.shape[0] == 7 and renewed.class_embed[-1].out_features == 6
    torch.testing.assert_close(renewed.model.content_embed.weight, model.model.content_embed.weight)  # the rest loads


def test_selected_classes_predict_what_the_full_model_predicted_for_them():
    """Keeping classes 3 and 1 of four: the same boxes, scored by those two columns. The two-stage proposals are
    picked by the class-agnostic first column of the encoder's head, which must stay first."""
    model = dino().eval()
    labels_before = model.model.denoising_label_embed.weight.detach().clone()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # box heads that really predict, so that boxes depend on the decoder's states
        for head in model.bbox_embed:
            head.layers[-1].weight.add_(torch.randn(head.layers[-1].weight.shape, generator=generator) * 0.1)
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    with torch.no_grad():
        before = model(pixels, pixel_mask=mask)
    model.select_classes([3, 1], ["circle", "triangle"])
    assert model.config.id2label == {0: "circle", 1: "triangle"} and model.config.label2id["triangle"] == 1
    assert model.criterion.num_classes == 2 and model.model.denoising_label_embed.num_embeddings == 3
    torch.testing.assert_close(model.model.denoising_label_embed.weight, labels_before[[3, 1, 4]])  # + padding row
    with torch.no_grad():
        after = model(pixels, pixel_mask=mask)
    torch.testing.assert_close(after.pred_boxes, before.pred_boxes)
    torch.testing.assert_close(after.logits, before.logits[..., [3, 1]])
    loss = model.train()(pixels, pixel_mask=mask, labels=random_labels([2, 1], num_labels=2)).loss
    loss.backward()  # the shrunk heads train
    assert model.class_embed[0].weight.grad.shape == (2, model.config.d_model)
