"""Loading the checkpoints people have (three transformers layouts) and saving our own, all offline."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from conftest import padded_batch, transformers_twin
from safetensors.torch import load_file, save_file

from detr_hf import DetrConfig, DetrForObjectDetection, DetrModel
from detr_hf.configuration_detr import resnet_config_for

# The inverse of the timm -> transformers ResNet renaming, written independently of the package's mapping.
_TO_TIMM = [
    (r"embedder\.embedder\.convolution\.", "conv1."),
    (r"embedder\.embedder\.normalization\.", "bn1."),
    (
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.",
    ),
    (
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.",
    ),
    (
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.",
    ),
    (
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.",
    ),
]


def _save(folder, state_dict: dict, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def resnet50_twin():
    """transformers' DETR with a real ResNet-50 backbone (random weights) and a small transformer."""
    resnet = resnet_config_for("resnet50").to_dict()
    resnet.pop("model_type")
    return transformers_twin(resnet, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128)


def _assert_same_outputs(reference, loaded) -> None:
    pixels, mask = padded_batch([(128, 160), (96, 128)])
    with torch.no_grad():
        expected, actual = reference(pixels, pixel_mask=mask), loaded.eval()(pixels, pixel_mask=mask)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=0)


def test_loads_what_transformers_writes_today(resnet50_twin, tmp_path, caplog):
    reference, _ = resnet50_twin
    reference.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert any(".conv_encoder." in k for k in on_disk) and any(".out_proj." in k for k in on_disk)
    with caplog.at_level(logging.WARNING):
        model, info = DetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert model.config.model_type == "detr_hf" and model.config.auxiliary_loss  # on for fine-tuning
    _assert_same_outputs(reference, model)


def test_loads_the_hub_main_revision_layout_with_timm_keys(resnet50_twin, tmp_path):
    reference, _ = resnet50_twin
    state_dict = {}
    for key, tensor in reference.state_dict().items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        for pattern, replacement in _TO_TIMM:
            key = re.sub(pattern, replacement, key)
        key = key.replace(".o_proj.", ".out_proj.")
        key = re.sub(r"(layers\.\d+)\.mlp\.(fc[12])\.", r"\1.\2.", key)
        state_dict[key] = tensor
    state_dict["model.backbone.conv_encoder.model.layer1.0.downsample.1.num_batches_tracked"] = torch.tensor(0)
    assert "model.backbone.conv_encoder.model.layer2.3.conv3.weight" in state_dict
    config = reference.config.to_dict()
    config.pop("backbone_config")
    config.update(use_timm_backbone=True, backbone="resnet50", model_type="detr")
    _save(tmp_path, state_dict, config)
    model, info = DetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _assert_same_outputs(reference, model)


def test_loads_transformers_in_memory_layout(resnet50_twin, tmp_path):
    reference, _ = resnet50_twin
    config = reference.config.to_dict()
    _save(tmp_path, reference.state_dict(), config)
    model, info = DetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _assert_same_outputs(reference, model)


def test_save_and_load_round_trip_in_safetensors(twin, tmp_path):
    reference, ours = twin
    ours.config.id2label = {i: name for i, name in enumerate(["cell", "nucleus", "debris", "artifact"])}
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "detr_hf" and saved["id2label"]["1"] == "nucleus"
    loaded = DetrForObjectDetection.from_pretrained(tmp_path)
    assert loaded.config.id2label[3] == "artifact"
    _assert_same_outputs(reference, loaded)
    base = DetrModel.from_pretrained(tmp_path)
    torch.testing.assert_close(base.query_position_embeddings.weight, ours.model.query_position_embeddings.weight)


def test_new_label_set_reinitializes_only_the_class_head_with_one_message(twin, tmp_path, caplog):
    reference, _ = twin
    reference.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = DetrForObjectDetection.from_pretrained(tmp_path, id2label={0: "car", 1: "truck"}, label2id=None)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 1 and "class head" in messages[0] and "car, truck" in messages[0]
    assert model.class_labels_classifier.weight.shape == (3, reference.config.d_model)
    torch.testing.assert_close(model.bbox_predictor.layers[0].weight, reference.bbox_predictor.layers[0].weight)
    torch.testing.assert_close(
        model.model.decoder.layers[0].mlp.fc1.weight,
        reference.model.decoder.layers[0].fc1.weight
        if hasattr(reference.model.decoder.layers[0], "fc1")
        else reference.model.decoder.layers[0].mlp.fc1.weight,
    )


def test_rgb_checkpoint_loads_into_a_grayscale_model_by_inflating_the_stem(twin, tmp_path):
    reference, _ = twin
    reference.save_pretrained(tmp_path)
    model = DetrForObjectDetection.from_pretrained(tmp_path, num_channels=1)
    stem = reference.model.backbone.model.embedder.embedder.convolution.weight
    torch.testing.assert_close(
        model.model.backbone.model.embedder.embedder.convolution.weight, stem.sum(1, keepdim=True)
    )
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # a gray image gives the same detections as its RGB copy through the RGB model
        torch.testing.assert_close(
            model.eval()(gray).logits, reference(gray.expand(-1, 3, -1, -1)).logits, atol=1e-4, rtol=0
        )


def test_config_round_trip_keeps_every_option(tmp_path):
    config = DetrConfig(num_queries=300, use_focal_loss=True, frozen_backbone_stages=-1, num_labels=7)
    config.save_pretrained(tmp_path)
    loaded = DetrConfig.from_pretrained(tmp_path)
    for key in ("num_queries", "use_focal_loss", "frozen_backbone_stages", "num_labels"):
        assert getattr(loaded, key) == getattr(config, key)
    assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()


def test_an_incompatible_checkpoint_fails_loudly(twin, tmp_path):
    reference, _ = twin
    reference.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"mismatch|ignore_mismatched_sizes"):
        DetrForObjectDetection.from_pretrained(tmp_path, encoder_ffn_dim=48)


def test_more_object_queries_than_the_checkpoint_reuse_the_trained_ones(twin, tmp_path):
    reference, _ = twin
    reference.save_pretrained(tmp_path)
    model = DetrForObjectDetection.from_pretrained(tmp_path, num_queries=25)
    trained = reference.model.query_position_embeddings.weight
    extended = model.model.query_position_embeddings.weight
    assert extended.shape == (25, trained.shape[1])
    torch.testing.assert_close(extended[:10], trained)
    assert (extended[10:20] - trained).abs().max() < 0.1 * trained.std() and not torch.equal(extended[10:20], trained)
