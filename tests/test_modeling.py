"""The model against transformers' DETR: same weights, same outputs and losses."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import TINY_DETR, TINY_RESNET, padded_batch, random_labels, transformers_twin
from transformers import ResNetConfig
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

from detr_hf import DetrConfig, DetrForObjectDetection
from detr_hf.configuration_detr import resnet_config_for
from detr_hf.layers.frozen_batch_norm import FrozenBatchNorm2d


def test_tiny_model_matches_transformers_on_padded_batch(twin):
    reference, ours = twin
    pixels, mask = padded_batch([(96, 128), (64, 100), (80, 40)])
    with torch.no_grad():
        expected, actual = reference(pixels, pixel_mask=mask), ours(pixels, pixel_mask=mask)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=0)


def test_full_size_resnet50_matches_transformers_at_800x1066():
    resnet = resnet_config_for("resnet50").to_dict()
    resnet.pop("model_type")
    reference, ours = transformers_twin(resnet, **{k: v for k, v in DetrConfig().to_dict().items() if k in TINY_DETR})
    assert ours.config.d_model == 256 and ours.config.num_queries == 100 and ours.config.encoder_layers == 6
    pixels = torch.randn(1, 3, 800, 1066)
    with torch.no_grad():
        expected, actual = reference(pixels), ours(pixels)
    assert expected.logits.abs().max() > 1e-2  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("auxiliary_loss", [False, True])
def test_loss_matches_transformers_including_an_image_without_objects(twin, auxiliary_loss):
    reference, ours = twin
    ours.config.auxiliary_loss = auxiliary_loss
    pixels, mask = padded_batch([(96, 128), (64, 100), (80, 96)])
    labels = random_labels([3, 0, 5])
    with torch.no_grad():
        actual = ours(pixels, pixel_mask=mask, labels=labels)
    # transformers' loss on our outputs: its own forward renormalizes the decoder states between layers when its
    # auxiliary loss is on, which DETR does not do, so we compare the losses on identical predictions.
    reference.config.auxiliary_loss = auxiliary_loss
    aux = actual.auxiliary_outputs or []
    stacked_logits = torch.stack([a["logits"] for a in aux] + [actual.logits]) if aux else None
    stacked_boxes = torch.stack([a["pred_boxes"] for a in aux] + [actual.pred_boxes]) if aux else None
    expected_loss, expected_dict, _ = ForObjectDetectionLoss(
        actual.logits, labels, "cpu", actual.pred_boxes, reference.config, stacked_logits, stacked_boxes
    )
    assert sorted(actual.loss_dict) == sorted(expected_dict)
    assert (len(actual.loss_dict) > 4) == auxiliary_loss
    for key, value in expected_dict.items():
        torch.testing.assert_close(actual.loss_dict[key], torch.as_tensor(value), atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.loss, expected_loss, atol=1e-4, rtol=0)
    if not auxiliary_loss:  # here transformers' own forward is DETR's, so compare end to end too
        with torch.no_grad():
            end_to_end = reference(pixels, pixel_mask=mask, labels=labels)
        torch.testing.assert_close(actual.loss, end_to_end.loss, atol=1e-4, rtol=0)


def test_auxiliary_heads_do_not_change_the_final_prediction(twin):
    _, ours = twin
    pixels, mask = padded_batch([(64, 64), (48, 64)])
    labels = random_labels([2, 1])
    with torch.no_grad():
        ours.config.auxiliary_loss = False
        without = ours(pixels, pixel_mask=mask, labels=labels)
        ours.config.auxiliary_loss = True
        with_aux = ours(pixels, pixel_mask=mask, labels=labels)
    torch.testing.assert_close(with_aux.logits, without.logits)
    assert len(with_aux.auxiliary_outputs) == ours.config.decoder_layers - 1
    assert with_aux.loss > without.loss


def test_cross_attention_maps_are_returned_per_layer_and_leave_outputs_unchanged(twin):
    _, ours = twin
    pixels, mask = padded_batch([(96, 128), (64, 96)])
    with torch.no_grad():
        plain = ours(pixels, pixel_mask=mask)
        explained = ours(pixels, pixel_mask=mask, output_attentions=True)
    torch.testing.assert_close(explained.logits, plain.logits, atol=1e-5, rtol=0)
    maps = explained.cross_attentions
    assert len(maps) == ours.config.decoder_layers
    batch, heads, queries, height, width = maps[0].shape
    assert (batch, heads, queries) == (2, 4, ours.config.num_queries) and (height, width) == (3, 4)
    torch.testing.assert_close(maps[-1].sum(dim=(-2, -1)), torch.ones(batch, heads, queries))
    assert maps[-1][1, :, :, 2:, :].abs().max() == 0 and maps[-1][1, :, :, :, 3:].abs().max() == 0  # padding
    assert len(explained.encoder_attentions) == ours.config.encoder_layers


def test_backbone_uses_frozen_batch_norm_and_trains_stages_two_to_four():
    model = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR))
    backbone = model.model.backbone.model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())

    def trainable() -> set[str]:
        return {n.split(".layers")[0] for n, p in backbone.named_parameters() if p.requires_grad}

    assert trainable() == {"encoder.stages.1", "encoder.stages.2", "encoder.stages.3"}
    model.model.freeze_backbone()
    assert trainable() == set()
    model.model.unfreeze_backbone()  # back to the configured stages: the stem and stage 1 stay frozen
    assert trainable() == {"encoder.stages.1", "encoder.stages.2", "encoder.stages.3"}


def test_frozen_batch_norm_computes_batch_norm_in_eval_mode():
    generator = torch.Generator().manual_seed(0)
    norm = torch.nn.BatchNorm2d(6, eps=1e-3).eval()
    with torch.no_grad():
        for tensor in (norm.weight, norm.bias, norm.running_mean):
            tensor.copy_(torch.randn(6, generator=generator))
        norm.running_var.copy_(torch.rand(6, generator=generator) + 0.5)
    frozen = FrozenBatchNorm2d(6, eps=1e-3)
    frozen.load_state_dict(norm.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 6, 5, 7, generator=generator)
    torch.testing.assert_close(frozen(x), norm(x))


def test_inference_fuses_the_backbone_and_follows_weight_updates():
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)).eval()
    backbone, pixels = model.model.backbone, torch.randn(1, 3, 64, 64)
    eager = backbone(pixels, None)[-1][0].detach()  # autograd on: the unfused path
    with torch.no_grad():
        fused = backbone(pixels, None)[-1][0]
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 convolutions")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = backbone(pixels, None)[-1][0]
        assert any("_inference_weights" in vars(m) for m in backbone.modules())  # bf16 folded weights cached
        assert low.dtype == torch.bfloat16 and (low.float() - fused).abs().max() < 0.05 * fused.abs().max()
        backbone.model.encoder.stages[-1].layers[-1].layer[-1].convolution.weight.mul_(2)  # as an optimizer step
        changed = backbone(pixels, None)[-1][0].float()
    eager_changed = backbone(pixels, None)[-1][0].detach()
    assert not torch.allclose(changed, low.float())  # the cached folded weights followed the change
    assert (changed - eager_changed).abs().max() < 0.05 * eager_changed.abs().max()
    model.train()  # training drops the cache: no second copy of the weights while they change
    assert not any("_inference_weights" in vars(m) for m in backbone.modules())


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_fused_inference_writes_residual_sums_in_place_without_touching_returned_feature_maps(layer_type):
    """Blocks with an identity shortcut sum into their input in inference; a stage's input may be a returned feature
    map (here the stem's), so only blocks after a stage's first may do it."""
    torch.manual_seed(0)
    resnet = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[3, 2],
        layer_type=layer_type,
        out_features=["stem", "stage1", "stage2"],
    )
    backbone = DetrForObjectDetection(DetrConfig(backbone_config=resnet, **TINY_DETR)).eval().model.backbone
    pixels = torch.randn(2, 3, 64, 64)
    eager = [feature.detach() for feature, _ in backbone(pixels, None)]
    with torch.no_grad():
        fused = [feature for feature, _ in backbone(pixels, None)]
    for got, expected in zip(fused, eager, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    blocks = [b for stage in backbone.model.encoder.stages for b in stage.layers]
    assert [getattr(b, "_input_is_private", False) for b in blocks] == [False, True, True, False, True]


def test_backbone_batch_norm_trains_when_not_frozen(tmp_path):
    """From scratch (RT-DETR's `freeze_backbone_batch_norms=False`): ordinary BatchNorm, statistics and affine trained."""
    config = DetrConfig(
        backbone_config=ResNetConfig(**TINY_RESNET),
        freeze_backbone_batch_norms=False,
        frozen_backbone_stages=-1,
        **TINY_DETR,
    )
    model = DetrForObjectDetection(config).train()
    norms = [m for m in model.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    statistics = norms[0].running_mean.clone()
    pixels, mask = padded_batch([(64, 64), (64, 48)])
    model(pixels, pixel_mask=mask, labels=random_labels([2, 1])).loss.backward()
    assert not torch.equal(statistics, norms[0].running_mean) and norms[0].weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path)
    loaded = DetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert loaded.config.freeze_backbone_batch_norms is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels, pixel_mask=mask).logits, model(pixels, pixel_mask=mask).logits)


def test_training_step_updates_weights_and_learns_a_single_image():
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "dropout": 0.0})
    model = DetrForObjectDetection(config).train()
    pixels, mask = padded_batch([(64, 64)])
    labels = random_labels([2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    stem = model.model.backbone.model.embedder.embedder.convolution.weight.clone()
    losses = []
    for _ in range(60):
        loss = model(pixels, pixel_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(stem, model.model.backbone.model.embedder.embedder.convolution.weight)  # frozen stem


def test_grayscale_model_runs_and_rejects_wrong_channels():
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), num_channels=1, **TINY_DETR)
    model = DetrForObjectDetection(config).eval()
    assert model.model.backbone.model.embedder.embedder.convolution.weight.shape[1] == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).pred_boxes.shape == (1, 10, 4)
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 3, 64, 64))


def test_bf16_autocast_keeps_decoder_and_boxes_in_fp32(twin):
    _, ours = twin
    pixels, mask = padded_batch([(96, 128)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = ours(pixels, pixel_mask=mask)
    assert outputs.pred_boxes.dtype == torch.float32 and outputs.logits.dtype == torch.float32
    with torch.no_grad():
        reference = ours(pixels, pixel_mask=mask)
    assert (outputs.pred_boxes - reference.pred_boxes).abs().max() < 0.02


def test_transformers_config_with_timm_backbone_is_understood():
    config = DetrConfig(use_timm_backbone=True, backbone="resnet50", dilation=False, mask_loss_coefficient=1)
    assert config.backbone_config.depths == [3, 4, 6, 3] and config.backbone is None
    saved = transformers.DetrConfig(use_timm_backbone=True, backbone="resnet101").to_dict()
    assert DetrConfig(**{k: v for k, v in saved.items() if k != "model_type"}).backbone_config.depths[2] == 23
    with pytest.raises(ValueError, match="DC5"):
        DetrConfig(dilation=True)
