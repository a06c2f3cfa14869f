"""Multi-scale deformable attention against transformers' pure-PyTorch reference, and the Deformable DETR model."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from conftest import TINY_DETR, padded_batch, random_labels, randomize_norms
from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection, ResNetConfig
from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention as Reference

from detr_hf import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrModel,
    DeformableDetrModelOutput,
    DetrConfig,
    DetrImageProcessor,
)
from detr_hf.checkpoint_conversion import convert_state_dict
from detr_hf.layers.deformable_attention import MultiScaleDeformableAttention, multi_scale_deformable_attention

SMALL_RESNET = {
    "model_type": "resnet",
    "embedding_size": 8,
    "hidden_sizes": [8, 16, 24, 32],
    "depths": [1, 1, 1, 1],
    "layer_type": "basic",
}


def deformable_twin(**overrides: object) -> tuple:
    """A random transformers Deformable DETR (weights perturbed so that no head starts at zero) and a detr_hf one
    holding exactly the same weights, both in eval mode."""
    kwargs = {**TINY_DETR, "num_feature_levels": 4, "with_box_refine": True, "auxiliary_loss": True, **overrides}
    resnet = ResNetConfig(**{**SMALL_RESNET, "out_features": ["stage2", "stage3", "stage4"]})
    torch.manual_seed(0)
    reference = transformers.DeformableDetrForObjectDetection(
        transformers.DeformableDetrConfig(backbone_config=resnet, **kwargs)
    ).eval()
    randomize_norms(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "norm" not in name and "backbone" not in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    ours = DeformableDetrForObjectDetection(DeformableDetrConfig(backbone_config=resnet, **kwargs)).eval()
    state_dict = convert_state_dict(reference.state_dict())  # drops the decoder's copies of the heads
    if not ours.config.with_box_refine:  # transformers repeats the one shared head for every layer
        state_dict = {k: v for k, v in state_dict.items() if not re.match(r"(class|bbox)_embed\.[1-9]", k)}
    ours.load_state_dict(state_dict, strict=True)
    return reference, ours


def _assert_same_outputs(reference, ours, with_labels: bool = True) -> None:
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    labels = random_labels([3, 0]) if with_labels else None  # the second image has no objects
    with torch.no_grad():
        expected = reference(pixels, pixel_mask=mask, labels=[dict(t) for t in labels] if labels else None)
        actual = ours(pixels, pixel_mask=mask, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=0)
    if with_labels:
        # transformers does not supervise two-stage proposals: our extra `_enc` terms are left out of the comparison
        weights = ours.criterion.weight_dict
        encoder = sum(weights[k] * v for k, v in actual.loss_dict.items() if k.endswith("_enc"))
        torch.testing.assert_close(actual.loss - encoder, expected.loss, atol=1e-4, rtol=1e-5)
        for key, value in actual.loss_dict.items():
            if not key.endswith("_enc"):
                torch.testing.assert_close(value, expected.loss_dict[key], atol=1e-4, rtol=1e-5, msg=key)


@pytest.mark.parametrize(
    "options",
    [{}, {"with_box_refine": False}, {"num_feature_levels": 3}, {"two_stage": True, "two_stage_num_proposals": 12}],
    ids=["box-refine-4-levels", "no-refine", "3-levels", "two-stage"],
)
def test_matches_transformers_deformable_detr(options):
    reference, ours = deformable_twin(**options)
    assert not torch.allclose(reference.bbox_embed[0].layers[-1].weight, torch.zeros(()))  # boxes really predicted
    _assert_same_outputs(reference, ours)


def test_two_stage_trains_its_proposals_and_loads_from_transformers(tmp_path):
    reference, ours = deformable_twin(two_stage=True, two_stage_num_proposals=12)
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    outputs = ours.train()(pixels, pixel_mask=mask, labels=random_labels([3, 0]))
    assert outputs.pred_boxes.shape[1] == 12  # one query per selected proposal
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(outputs.loss_dict)
    outputs.loss.backward()
    assert ours.class_embed[-1].weight.grad.abs().sum() > 0  # the encoder's proposal scores are supervised
    reference.save_pretrained(tmp_path)
    loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    assert loaded.config.two_stage and loaded.config.two_stage_num_proposals == 12
    _assert_same_outputs(reference, loaded.eval(), with_labels=False)


def test_loads_what_transformers_deformable_detr_writes(tmp_path):
    reference, _ = deformable_twin()
    reference.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "deformable_detr"
    loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    assert loaded.config.num_feature_levels == 4 and loaded.config.use_focal_loss and loaded.config.auxiliary_loss
    assert loaded.config.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    _assert_same_outputs(reference, loaded.eval())


def test_the_preset_lives_on_deformable_config_and_auto_model_builds_the_base_model():
    assert not hasattr(DetrConfig, "dino_like")  # one path to the preset
    config = DeformableDetrConfig.dino_like(backbone_config=SMALL_RESNET, **TINY_DETR)
    assert type(config) is DeformableDetrConfig and config.use_focal_loss and config.class_cost == 2.0
    assert config.two_stage and config.two_stage_num_proposals == config.num_queries and config.num_denoising
    with pytest.raises(ValueError, match="DeformableDetrForObjectDetection"):  # proposals are scored by its heads
        AutoModel.from_config(config)(*padded_batch([(64, 64)]))
    config = DeformableDetrConfig.dino_like(
        backbone_config=SMALL_RESNET, two_stage=False, mixed_query_selection=False, **TINY_DETR
    )
    base = AutoModel.from_config(config)
    assert type(base) is DeformableDetrModel
    pixels, mask = padded_batch([(64, 64)])
    with torch.no_grad():
        outputs = base(pixels, pixel_mask=mask)
    assert isinstance(outputs, DeformableDetrModelOutput)
    layers, queries, d = config.decoder_layers, config.num_queries, config.d_model
    assert outputs.intermediate_hidden_states.shape == (layers, 1, queries, d) and outputs.denoising is None
    torch.testing.assert_close(outputs.last_hidden_state, outputs.intermediate_hidden_states[-1])
    assert len(outputs.intermediate_reference_points) == layers and outputs.enc_outputs_class is None
    assert outputs.intermediate_reference_points[0].shape == (1, queries, 4)  # learned anchor boxes
    assert outputs.encoder_last_hidden_state.shape[-1] == d and outputs.cross_attentions is None


def test_two_stage_without_box_refinement_is_refused_clearly():
    with pytest.raises(ValueError, match="two_stage"):
        config = DeformableDetrConfig(backbone_config=SMALL_RESNET, two_stage=True, with_box_refine=False, **TINY_DETR)
        DeformableDetrForObjectDetection(config)


def test_config_round_trip_keeps_every_option(tmp_path):
    config = DeformableDetrConfig.dino_like(
        backbone_config=SMALL_RESNET, num_feature_levels=4, encoder_n_points=3, decoder_n_points=2, **TINY_DETR
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is DeformableDetrConfig
    for key in ("num_feature_levels", "encoder_n_points", "decoder_n_points", "with_box_refine", "class_cost"):
        assert getattr(loaded, key) == getattr(config, key), key
    assert loaded.backbone_config.out_features == config.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    assert loaded.num_backbone_levels == 3 and loaded.use_focal_loss and loaded.class_loss_coefficient == 2.0


def _model(**overrides) -> DeformableDetrForObjectDetection:
    torch.manual_seed(0)
    config = DeformableDetrConfig.dino_like(backbone_config=SMALL_RESNET, **{**TINY_DETR, **overrides})
    return DeformableDetrForObjectDetection(config).eval()


def test_sampling_equals_transformers_reference():
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 10), (4, 5), (2, 3)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=generator)
    locations = torch.rand(2, 7, 4, 3, 5, 2, generator=generator) * 1.2 - 0.1  # some points fall outside
    weights = torch.rand(2, 7, 4, 3, 5, generator=generator)
    weights = weights / weights.sum((-2, -1), keepdim=True)
    shapes_tensor = torch.tensor(shapes)
    start = torch.cat([torch.zeros(1, dtype=torch.long), (shapes_tensor[:, 0] * shapes_tensor[:, 1]).cumsum(0)[:-1]])
    expected = Reference()(value, shapes_tensor, shapes, start, locations, weights, im2col_step=64)
    torch.testing.assert_close(multi_scale_deformable_attention(value, shapes, locations, weights), expected)


def test_attention_on_a_single_point_reads_that_point():
    """One level, one head, one point with weight 1 at a cell centre returns that cell's value exactly."""
    value = torch.arange(12.0).view(1, 12, 1, 1)
    location = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).view(1, 1, 1, 1, 1, 2)  # x = column 2, y = row 1
    out = multi_scale_deformable_attention(value, [(3, 4)], location, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == 1 * 4 + 2


def test_module_initial_offsets_point_in_every_direction():
    attention = MultiScaleDeformableAttention(d_model=32, num_heads=8, num_levels=2, num_points=3)
    attention.reset_offsets()
    offsets = attention.sampling_offsets.bias.view(8, 2, 3, 2)
    assert torch.equal(offsets[:, 0], offsets[:, 1])  # the same pattern on every level
    assert torch.allclose(offsets[:, 0, 2], 3 * offsets[:, 0, 0])  # points spread outwards
    angles = torch.atan2(offsets[:, 0, 0, 1], offsets[:, 0, 0, 0])
    assert len(set(angles.round(decimals=3).tolist())) == 8  # every head looks in its own direction


def test_forward_shapes_loss_terms_and_empty_images():
    model = _model()
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    outputs = model(pixels, pixel_mask=mask, labels=random_labels([3, 0]))
    assert outputs.logits.shape == (2, TINY_DETR["num_queries"], TINY_DETR["num_labels"])  # no "no object" column
    assert outputs.pred_boxes.shape == (2, TINY_DETR["num_queries"], 4)
    assert len(outputs.auxiliary_outputs) == model.config.decoder_layers - 1
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_1"} <= set(outputs.loss_dict)
    assert torch.isfinite(outputs.loss)
    # focal loss starts every class near probability 0.01
    assert outputs.logits.sigmoid().median().item() == pytest.approx(0.01, abs=0.01)


def test_training_reduces_the_loss_on_one_batch():
    model = _model().train()
    pixels, mask = padded_batch([(64, 64), (64, 64)])
    labels = random_labels([2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = model(pixels, pixel_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_save_load_auto_classes_and_focal_post_processing(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    DetrImageProcessor(use_focal_loss=True, size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path)
    assert type(loaded) is DeformableDetrForObjectDetection and loaded.config.with_box_refine
    pixels, mask = padded_batch([(64, 64)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels, pixel_mask=mask).logits, model(pixels, pixel_mask=mask).logits)
    processor = DetrImageProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        results = processor.post_process_object_detection(
            model(pixels), threshold=0.0, target_sizes=[(64, 64)], top_k=5
        )
    assert len(results[0]["scores"]) == 5 and results[0]["labels"].max() < TINY_DETR["num_labels"]
