"""The backbone trains the same stages however the model was made: from a config, or loaded from a checkpoint."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from conftest import TINY_DETR, TINY_RESNET
from transformers import ResNetConfig

from detr_hf import DeformableDetrConfig, DeformableDetrForObjectDetection, DetrConfig, DetrForObjectDetection
from detr_hf.training import TrainingConfig, build_detector

MULTI_SCALE_RESNET = {**TINY_RESNET, "out_features": ["stage2", "stage3", "stage4"]}
DEFORMABLE = {"num_feature_levels": 3, "with_box_refine": True}


def _expected_trainable(name: str, frozen_stages: int) -> bool:
    """Outside the backbone everything trains; inside it, stages numbered >= `frozen_stages` (-1: the stem too)."""
    if ".backbone." not in f".{name}":
        return True
    stage = re.search(r"\.encoder\.stages\.(\d+)\.", name)
    return frozen_stages < 0 or (stage is not None and int(stage[1]) >= frozen_stages)


def _assert_frozen_as_configured(model: torch.nn.Module, frozen_stages: int) -> None:
    actual = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {name for name, _ in model.named_parameters() if _expected_trainable(name, frozen_stages)}
    assert actual == expected, f"trains {sorted(actual - expected)[:3]}, frozen {sorted(expected - actual)[:3]}"
    backbone = [n for n, _ in model.named_parameters() if ".backbone." in f".{n}"]
    if frozen_stages >= 0:  # the test can fail: the stem is in the backbone and must be frozen
        assert any("embedder" in n and n not in actual for n in backbone)


def _ours(kind: str, **config) -> torch.nn.Module:
    if kind == "detr":
        return DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR, **config))
    return DeformableDetrForObjectDetection(
        DeformableDetrConfig(backbone_config=ResNetConfig(**MULTI_SCALE_RESNET), **TINY_DETR, **DEFORMABLE, **config)
    )


def _transformers_model(kind: str) -> torch.nn.Module:
    if kind == "detr":
        config = transformers.DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)
        return transformers.DetrForObjectDetection(config)
    config = transformers.DeformableDetrConfig(
        backbone_config=ResNetConfig(**MULTI_SCALE_RESNET), **TINY_DETR, **DEFORMABLE
    )
    return transformers.DeformableDetrForObjectDetection(config)


MODEL_CLASSES = {"detr": DetrForObjectDetection, "deformable": DeformableDetrForObjectDetection}


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_every_loading_path_trains_the_configured_backbone_stages(kind, tmp_path):
    built = _ours(kind)
    _assert_frozen_as_configured(built, 1)

    built.save_pretrained(tmp_path / "ours")
    _assert_frozen_as_configured(MODEL_CLASSES[kind].from_pretrained(tmp_path / "ours"), 1)
    model, info = MODEL_CLASSES[kind].from_pretrained(tmp_path / "ours", output_loading_info=True)
    _assert_frozen_as_configured(model, 1)
    assert not info["missing_keys"]

    _transformers_model(kind).save_pretrained(tmp_path / "transformers")
    _assert_frozen_as_configured(MODEL_CLASSES[kind].from_pretrained(tmp_path / "transformers"), 1)
    # the recipe's path: a transformers checkpoint with another label set
    recipe_model, _ = build_detector(TrainingConfig(model=str(tmp_path / "transformers")), ["a", "b"])
    _assert_frozen_as_configured(recipe_model, 1)


@pytest.mark.parametrize("frozen_stages", [-1, 0, 2])
def test_the_saved_frozen_stages_setting_is_what_a_loaded_model_trains(frozen_stages, tmp_path):
    _ours("detr", frozen_backbone_stages=frozen_stages).save_pretrained(tmp_path)
    _assert_frozen_as_configured(DetrForObjectDetection.from_pretrained(tmp_path), frozen_stages)
    overridden = DetrForObjectDetection.from_pretrained(tmp_path, frozen_backbone_stages=3)
    _assert_frozen_as_configured(overridden, 3)
