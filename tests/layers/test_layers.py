"""The seams of the layer kit: query selection, encoder/decoder registry, the deformable model's outputs and
attentions, explicit loss weights, class selection and the CPU inference fusion step."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET, padded_batch, random_labels
from test_deformable import SMALL_RESNET
from transformers import AutoBackbone, ResNetConfig

from detr_hf import DeformableDetrConfig, DeformableDetrForObjectDetection, DetrConfig, DetrForObjectDetection
from detr_hf.layers import ENCODERS, fuse_for_cpu_inference
from detr_hf.layers.criterion import SetCriterion, loss_weight_dict
from detr_hf.layers.deformable_attention import multi_scale_deformable_attention
from detr_hf.layers.deformable_transformer import DeformableDetrEncoder
from detr_hf.layers.frozen_batch_norm import freeze_batch_norm
from detr_hf.layers.heads import inverse_sigmoid
from detr_hf.layers.multi_scale import flatten_levels
from detr_hf.layers.query_selection import (
    AnchorQueries,
    LearnedQueries,
    MixedQuerySelection,
    TwoStageAnchorQueries,
    TwoStageQueries,
    query_scheme,
)

BACKBONE = {**SMALL_RESNET, "out_features": ["stage2", "stage3", "stage4"]}
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
SCHEMES = {
    "learned": ({}, LearnedQueries, {"query_position_embeddings", "reference_points"}),
    "anchors": ({"anchor_queries": True}, AnchorQueries, {"anchor_embed", "content_embed"}),
    "two_stage": (
        {"two_stage": True},
        TwoStageQueries,
        {"enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm"},
    ),
    "two_stage_anchors": (
        {"two_stage": True, "anchor_queries": True},
        TwoStageAnchorQueries,
        {"enc_output", "enc_output_norm"},
    ),
    "mixed": (
        {"two_stage": True, "anchor_queries": True, "mixed_query_selection": True},
        MixedQuerySelection,
        {"enc_output", "enc_output_norm", "content_embed"},
    ),
}


def deformable(**options: object) -> DeformableDetrForObjectDetection:
    torch.manual_seed(0)
    config = DeformableDetrConfig(backbone_config=BACKBONE, **{**TINY_DETR, **NO_DROPOUT, **options})
    return DeformableDetrForObjectDetection(config).eval()


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_each_query_scheme_is_one_component_with_the_checkpoint_parameter_names(scheme):
    options, component, modules = SCHEMES[scheme]
    model = deformable(two_stage_num_proposals=6, **options)
    assert query_scheme(model.config) == scheme and type(model.model.query_selection) is component
    # its parameters live on the model under their historic names: checkpoints keep loading
    names = {key.split(".")[1] for key in model.state_dict() if key.split(".")[1] in modules}
    assert names == modules and not any("query_selection" in key for key in model.state_dict())
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    heads = (model.class_embed[-1], model.bbox_embed[-1]) if model.config.two_stage else ()
    with torch.no_grad():
        outputs = model.model(pixels, mask, model.bbox_embed, model.class_embed)
        _, _, token_mask, shapes = flatten_levels(
            model.model.backbone(pixels, mask), mask, model.model.input_proj, model.model.level_embed
        )
        memory = outputs.encoder_last_hidden_state
        selected = model.model.query_selection(memory, token_mask, shapes, *heads)
        if heads:
            with pytest.raises(ValueError, match="DeformableDetrForObjectDetection"):
                model.model.query_selection(memory, token_mask, shapes)  # no heads to score the proposals with
    queries = 6 if model.config.two_stage else TINY_DETR["num_queries"]
    assert selected.target.shape == (2, queries, TINY_DETR["d_model"])
    assert selected.reference.shape == (2, queries, 2 if scheme == "learned" else 4)
    torch.testing.assert_close(outputs.intermediate_reference_points[0], selected.reference)
    assert (selected.query_pos is None) == model.config.anchor_queries
    assert (selected.proposals is None) == (not model.config.two_stage)


def test_learned_and_anchor_queries_are_their_embeddings():
    learned = deformable().model.query_selection
    memory = torch.randn(2, 5, TINY_DETR["d_model"])
    selected = learned(memory, None, [(1, 5)])
    position, content = learned.query_position_embeddings.weight.chunk(2, dim=-1)
    torch.testing.assert_close(selected.target[1], content)
    torch.testing.assert_close(selected.query_pos[0], position)
    torch.testing.assert_close(
        selected.reference[0], (position @ learned.reference_points.weight.T + learned.reference_points.bias).sigmoid()
    )
    anchors = deformable(anchor_queries=True).model.query_selection
    selected = anchors(memory, None, [(1, 5)])
    torch.testing.assert_close(selected.reference[1], anchors.anchor_embed.weight.sigmoid())
    torch.testing.assert_close(selected.target[0], anchors.content_embed.weight)
    sizes = selected.reference[0, :, 2:]
    assert sizes.min() >= 0.05 - 1e-4 and sizes.max() <= 0.5 + 1e-4  # DAB-DETR's initial anchors


def test_two_stage_selects_the_best_scored_cells_by_hand():
    """One 2x3 level, no padding: every cell proposes a 0.05-wide box at its centre; the selection keeps the cells
    with the highest first-class score and refines their boxes with the box head."""
    selection = deformable(two_stage=True, anchor_queries=True, two_stage_num_proposals=2).model.query_selection
    torch.manual_seed(3)
    memory = torch.randn(1, 6, TINY_DETR["d_model"])
    class_head, box_head = torch.nn.Linear(TINY_DETR["d_model"], 4), torch.nn.Linear(TINY_DETR["d_model"], 4)
    with torch.no_grad():
        selected = selection(memory, None, [(2, 3)], class_head, box_head)
        features = selection.enc_output_norm(selection.enc_output(memory))[0]
        scores = class_head(features)[:, 0]
        best = sorted(range(6), key=lambda i: -scores[i].item())[:2]
        for rank, cell in enumerate(best):
            row, column = divmod(cell, 3)
            anchor = torch.tensor([(column + 0.5) / 3, (row + 0.5) / 2, 0.05, 0.05])
            expected = (box_head(features[cell]) + inverse_sigmoid(anchor)).sigmoid()
            torch.testing.assert_close(selected.reference[0, rank], expected)
            torch.testing.assert_close(selected.target[0, rank], features[cell])  # content: the cell's features
            torch.testing.assert_close(selected.proposals[0][0, rank], class_head(features[cell]))


def test_a_config_value_picks_the_encoder_and_an_unknown_one_is_refused(monkeypatch):
    assert type(deformable().model.encoder) is DeformableDetrEncoder
    calls = []

    class PassThroughEncoder(torch.nn.Module):
        """An encoder honouring the contract: memory, pos, spatial_shapes, mask in; memory out."""

        def __init__(self, config):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, memory, pos, spatial_shapes, mask):
            calls.append((memory.shape, pos.shape, list(spatial_shapes), None if mask is None else mask.shape))
            return memory * self.scale

    monkeypatch.setitem(ENCODERS, "pass_through", PassThroughEncoder)
    model = deformable(encoder_type="pass_through")
    assert type(model.model.encoder) is PassThroughEncoder and "model.encoder.scale" in model.state_dict()
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    with torch.no_grad():
        outputs = model(pixels, pixel_mask=mask, output_attentions=False)
    shapes = [(8, 10), (4, 5), (2, 3)]  # strides 8, 16, 32 of a 64x80 batch
    tokens = sum(h * w for h, w in shapes)
    assert calls == [((2, tokens, 32), (2, tokens, 32), shapes, (2, tokens))]
    assert outputs.pred_boxes.shape == (2, TINY_DETR["num_queries"], 4)
    with pytest.raises(ValueError, match=r"encoder_type='hybrid'.*deformable"):
        deformable(encoder_type="hybrid")
    with pytest.raises(ValueError, match=r"decoder_type='other'"):
        deformable(decoder_type="other")


def test_deformable_attentions_are_the_sampling_each_layer_used():
    """The returned weights and locations, fed to the attention's own sampling, reproduce each cross-attention's
    output (recorded by a hook), and asking for them changes no prediction."""
    model = deformable(anchor_queries=True)
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    recorded = []
    hooks = [
        layer.encoder_attn.register_forward_hook(lambda module, args, out: recorded.append((module, args, out)))
        for layer in model.model.decoder.layers
    ]
    with torch.no_grad():
        plain = model(pixels, pixel_mask=mask)
        recorded.clear()
        explained = model(pixels, pixel_mask=mask, output_attentions=True)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(explained.pred_boxes, plain.pred_boxes, atol=1e-5, rtol=0)
    layers, queries, heads = model.config.decoder_layers, TINY_DETR["num_queries"], TINY_DETR["decoder_attention_heads"]
    assert len(explained.cross_attentions) == len(explained.sampling_locations) == layers == len(recorded)
    assert explained.sampling_locations[0].shape == (2, queries, heads, 3, 4, 2)
    assert explained.decoder_attentions[0].shape == (2, heads, queries, queries)
    for (module, args, (out, _)), weights, locations in zip(
        recorded, explained.cross_attentions, explained.sampling_locations
    ):
        assert weights.shape == (2, queries, heads, 3, 4)
        torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, queries, heads))
        _, _, value, shapes, value_mask = args[:5]
        with torch.no_grad():
            value = module.value_proj(value).masked_fill(~value_mask[..., None], 0.0).unflatten(-1, (heads, -1))
            expected = module.output_proj(multi_scale_deformable_attention(value, shapes, locations, weights))
        torch.testing.assert_close(out, expected)


def test_attentions_of_training_cover_the_matching_queries_and_hidden_states_are_refused():
    config = DeformableDetrConfig.dino_like(backbone_config=BACKBONE, **{**TINY_DETR, "num_denoising": 12})
    model = DeformableDetrForObjectDetection(config).train()
    pixels, mask = padded_batch([(64, 80)])
    outputs = model(pixels, pixel_mask=mask, labels=random_labels([3]), output_attentions=True)
    assert outputs.cross_attentions[-1].shape[1] == outputs.sampling_locations[-1].shape[1] == config.num_queries
    assert outputs.decoder_attentions[-1].shape[-2:] == (config.num_queries, config.num_queries)
    assert outputs.intermediate_reference_points[-1].shape[1] == config.num_queries
    assert outputs.intermediate_pred_boxes.shape == (config.decoder_layers, 1, config.num_queries, 4)
    torch.testing.assert_close(outputs.intermediate_pred_boxes[-1], outputs.pred_boxes)
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(pixels, pixel_mask=mask, output_hidden_states=True)
    detr = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR))
    with pytest.raises(ValueError, match="output_hidden_states"):
        detr(pixels, pixel_mask=mask, output_hidden_states=True)


def test_every_emitted_loss_term_has_its_weight_and_an_unknown_term_is_refused():
    config = DeformableDetrConfig.dino_like(backbone_config=BACKBONE, **{**TINY_DETR, "num_denoising": 12})
    model = DeformableDetrForObjectDetection(config).train()
    pixels, mask = padded_batch([(64, 80), (48, 64)])
    outputs = model(pixels, pixel_mask=mask, labels=random_labels([3, 1]))
    weights = model.criterion.weight_dict
    assert set(outputs.loss_dict) <= set(weights)
    assert {key.split("_")[1] for key in outputs.loss_dict} == {"ce", "bbox", "giou"}
    coefficient = {"ce": 2.0, "bbox": 5.0, "giou": 2.0}  # the preset's, on every layer, proposal and denoising term
    expected = sum(coefficient[key.split("_")[1]] * value for key, value in outputs.loss_dict.items())
    torch.testing.assert_close(outputs.loss, expected)
    with pytest.raises(ValueError, match="loss_mask"):
        model.criterion.weighted_sum({**outputs.loss_dict, "loss_mask": torch.tensor(1.0)})


def test_loss_weights_are_explicit_per_layer_and_group():
    config = DetrConfig(decoder_layers=3, class_loss_coefficient=1.5, bbox_loss_coefficient=4.0)
    weights = loss_weight_dict(config, groups=("_dn",))
    assert weights["loss_ce"] == weights["loss_ce_1"] == weights["loss_ce_dn_0"] == 1.5
    assert weights["loss_bbox_dn"] == 4.0 and weights["cardinality_error_0"] == 0.0
    assert "loss_ce_2" not in weights and "loss_ce_enc" not in weights  # 3 layers: aux 0 and 1; no _enc group
    criterion = SetCriterion(config)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 5, config.num_labels + 1, generator=generator)
    boxes = torch.rand(1, 5, 4, generator=generator) * 0.5 + 0.2
    loss, terms = criterion(logits, boxes, random_labels([2], num_labels=config.num_labels))
    assert "cardinality_error" in terms  # logged, weighted 0
    torch.testing.assert_close(loss, 1.5 * terms["loss_ce"] + 4.0 * terms["loss_bbox"] + 2.0 * terms["loss_giou"])


def test_detr_select_classes_keeps_the_columns_and_no_object():
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)).eval()
    pixels, mask = padded_batch([(64, 64)])
    with torch.no_grad():
        before = model(pixels, pixel_mask=mask)
    model.select_classes([2, 0], ["cat", "dog"])
    with torch.no_grad():
        after = model(pixels, pixel_mask=mask)
    torch.testing.assert_close(after.logits, before.logits[..., [2, 0, 4]])  # "no object" stays last
    assert model.config.num_labels == 2 and model.config.label2id == {"cat": 0, "dog": 1}
    assert model.criterion.num_classes == 2
    loss = model.train()(pixels, pixel_mask=mask, labels=random_labels([2], num_labels=2)).loss
    assert loss.isfinite() and model.class_labels_classifier.out_features == 3


def test_cpu_fusion_is_one_step_that_changes_no_result():
    torch.manual_seed(0)
    plain = AutoBackbone.from_config(ResNetConfig(**TINY_RESNET)).eval()
    with torch.no_grad():
        for name, buffer in plain.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape) + 0.5)
    with pytest.raises(ValueError, match="freeze_batch_norm"):
        fuse_for_cpu_inference(plain)
    freeze_batch_norm(plain)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        unfused = plain(pixels).feature_maps[-1]
        classes = {type(m) for m in plain.modules()}
        assert fuse_for_cpu_inference(plain) is plain
        assert {type(m) for m in plain.modules()} != classes  # the layers now run the fused forward
        fused = plain(pixels.contiguous(memory_format=torch.channels_last)).feature_maps[-1]
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
    # the backbone applies the step by default with frozen BatchNorm, not with trained BatchNorm
    frozen = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR))
    trained = DetrForObjectDetection(
        DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), freeze_backbone_batch_norms=False, **TINY_DETR)
    )
    assert any(type(m).__module__.endswith("cpu_fusion") for m in frozen.model.backbone.modules())
    assert not any(type(m).__module__.endswith("cpu_fusion") for m in trained.model.backbone.modules())
