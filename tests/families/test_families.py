"""Every transformers DETR family through detr_hf: fine-tuned by the recipe from a tiny saved checkpoint with another
label set (the loss of one batch overfitted must fall by 30% in 50 steps), evaluated, and drawn by `detr-hf predict`;
class heads mapped by name; options that don't apply refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from recipe_runs import load_recipe, recipe_arguments
from tiny_families import save_tiny_checkpoint, tiny_options

from detr_hf.cli import main as detr_hf_cli
from detr_hf.data import make_synthetic_dataset
from detr_hf.families import FAMILIES, family_for
from detr_hf.families.loading import build_family_model, load_family_detector
from detr_hf.training import TrainingConfig, sanity_check
from detr_hf.training.sanity import batch_problems

# transformers' detr and deformable_detr checkpoints load into detr_hf's own classes (the native path)
MODEL_TYPES = ["detr", "deformable_detr", *sorted(t for f in FAMILIES for t in f.model_types if t != "detr")]
CHECKPOINT_LABELS = ["cat", "dog", "car", "tree", "boat"]  # the synthetic data's are circle, square, triangle


def fine_tune(model_type: str, root: Path) -> Path:
    save_tiny_checkpoint(model_type, root / "checkpoint", CHECKPOINT_LABELS)
    out = root / "run"
    # the denoising families' many loss terms (per layer, encoder, denoising groups) need a larger step to overfit
    # one batch in 50 steps
    learning_rate = 1e-2 if family_for(model_type, native_too=True).denoising else 3e-3
    arguments = recipe_arguments(
        out,
        model=str(root / "checkpoint"),
        model_overrides={},
        synthetic={"num_train": 8, "num_val": 4, "image_size": 64},
        num_epochs=1,
        augmentation="none",
        per_device_train_batch_size=2,
        learning_rate=learning_rate,
        backbone_learning_rate=learning_rate,
        sanity_check=50,
        ema_decay=0.99,
        warmup_epochs=0.5,
    )
    load_recipe().main(arguments)
    return out


@pytest.mark.parametrize("model_type", sorted(set(MODEL_TYPES)))
def test_recipe_fine_tunes_evaluates_and_predicts_each_family(model_type, tmp_path):
    out = fine_tune(model_type, tmp_path)
    sanity = json.loads((out / "sanity_check.json").read_text())
    assert len(sanity["losses"]) == 50 and sanity["drop"] >= 0.3, sanity["losses"][::10]
    config = json.loads((out / "config.json").read_text())
    native = {"detr": "detr_hf", "deformable_detr": "detr_hf_deformable"}  # transformers' checkpoints load natively
    assert config["model_type"] == native.get(model_type, model_type)
    assert config["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0 <= metrics["map"] <= 1 and set(metrics["map_per_class"]) == {"circle", "square", "triangle"}
    family = family_for(model_type)
    if family is not None:
        assert family.name in (out / "README.md").read_text()
    image = np.asarray(make_synthetic_dataset(num_train=0, num_val=1, image_size=64, seed=3)["validation"][0]["image"])
    Image.fromarray(image).save(tmp_path / "photo.png")
    drawn = tmp_path / "drawn"
    argv = ["predict", "--model", str(out), str(tmp_path / "photo.png"), "--output", str(drawn), "--threshold", "0"]
    assert detr_hf_cli(argv) == 0
    detections = json.loads((drawn / "detections.json").read_text())["images"][str(tmp_path / "photo.png")]
    boxes = detections["detections"]
    assert {d["label"] for d in boxes} <= {"circle", "square", "triangle"}
    assert all(-1 <= v <= 65 for d in boxes for v in d["box_xyxy"])
    drawing = np.asarray(Image.open(drawn / detections["drawing"]).convert("RGB"))
    assert drawing.shape == image.shape and (drawing != image).any()  # boxes were drawn


def test_detr_hf_evaluate_runs_a_fixed_size_family(tmp_path):
    save_tiny_checkpoint("rt_detr_v2", tmp_path / "model", ["circle", "square", "triangle"])
    make_synthetic_dataset(num_train=2, num_val=4, image_size=64, seed=1).save_to_disk(tmp_path / "data")
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--output",
            str(tmp_path / "ev")]  # fmt: skip
    assert detr_hf_cli(argv) == 0
    metrics = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert set(metrics["map_per_class"]) == {"circle", "square", "triangle"}
    predictions = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} == set(range(1, 5))


@pytest.mark.parametrize("model_type", ["table-transformer", "yolos", "rt_detr_v2", "d_fine", "lw_detr"])
def test_class_heads_are_mapped_by_name(model_type, tmp_path):
    """The dataset's classes known to the checkpoint keep their rows in every head (per layer, encoder, group heads,
    denoising label embedding with its padding row last); every other weight is the checkpoint's."""
    labels = ["x", "circle", "y", "square", "triangle"]
    save_tiny_checkpoint(model_type, tmp_path, labels)
    original, _ = load_family_detector(str(tmp_path))
    mapped, _ = build_family_model(str(tmp_path), "", {}, "auto", ["triangle", "circle"])
    assert mapped.config.id2label == {0: "triangle", 1: "circle"}
    family, before, after = family_for(model_type), original.state_dict(), mapped.state_dict()
    assert before.keys() == after.keys()
    heads = 0
    for key, value in before.items():
        if family.is_class_head(key.rsplit(".", 1)[0]) and value.shape[0] in (5, 6):
            rows = [4, 1] + ([5] if value.shape[0] == 6 else [])  # "no object" or the denoising padding label
            torch.testing.assert_close(after[key], value[rows])
            heads += 1
        else:
            torch.testing.assert_close(after[key], value)
    assert heads >= (6 if family.denoising else 2)
    if model_type in ("table-transformer", "yolos"):  # one stage: the logits are the checkpoint's for those classes
        pixels = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            logits, mapped_logits = (
                original.eval()(pixel_values=pixels).logits,
                mapped.eval()(pixel_values=pixels).logits,
            )
        torch.testing.assert_close(mapped_logits, logits[..., [4, 1, 5]])


def test_overrides_that_do_not_apply_are_refused(tmp_path):
    save_tiny_checkpoint("conditional_detr", tmp_path / "cdetr", ["a", "b"])
    save_tiny_checkpoint("d_fine", tmp_path / "dfine", ["a", "b"])
    with pytest.raises(ValueError, match="without denoising"):
        build_family_model(str(tmp_path / "cdetr"), "", {"num_denoising": 100}, "auto", ["a"])
    with pytest.raises(ValueError, match="shape of the checkpoint"):
        build_family_model(str(tmp_path / "dfine"), "", {"d_model": 64}, "auto", ["a"])
    with pytest.raises(ValueError, match="no such option"):
        build_family_model(str(tmp_path / "dfine"), "", {"num_querys": 64}, "auto", ["a"])
    with pytest.raises(ValueError, match="class_head='reuse'"):
        build_family_model(str(tmp_path / "dfine"), "", {}, "reuse", ["a", "zebra"])
    model, _ = build_family_model(str(tmp_path / "dfine"), "", {"num_queries": 20, "num_denoising": 4}, "new", ["z"])
    assert model.config.num_queries == 20 and model.config.num_denoising == 4 and model.config.num_labels == 1
    with pytest.raises(ValueError, match="model_type 'owlvit' are not supported"):
        family_for("owlvit")


def test_a_random_family_model_is_built_from_a_preset():
    options = tiny_options("rt_detr_v2")
    model, processor = build_family_model(None, "rt_detr_v2", options, "auto", ["a", "b"])
    assert type(model).__name__ == "RTDetrV2ForObjectDetection" and model.config.num_labels == 2
    assert processor.size["height"] == 640  # RT-DETR's fixed square until the recipe sets its scales


def test_sanity_check_fails_fast_with_what_to_look_at():
    model, _ = build_family_model(None, "rt_detr_v2", tiny_options("rt_detr_v2"), "auto", ["a", "b"])
    batch = {
        "pixel_values": torch.rand(2, 3, 64, 64),
        "labels": [{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 2)}] * 2,
    }
    wrong = {**batch, "labels": [{"class_labels": torch.tensor([5]), "boxes": torch.tensor([[10.0, 5, 4, 4]])}]}
    problems = batch_problems(model, wrong)
    assert any("outside the model's 2 classes" in p for p in problems) and any("normalized" in p for p in problems)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not ("class_embed" in name or "score_head" in name))
    assert batch_problems(model, batch) == ["a frozen class head (no class parameter requires a gradient)"]
    with pytest.raises(RuntimeError, match="before training on the first batch: a frozen class head"):
        sanity_check(model, batch, TrainingConfig(sanity_check=True), None)
    model.requires_grad_(True)
    config = TrainingConfig(learning_rate=0.0, backbone_learning_rate=0.0, sanity_check=3)
    with pytest.raises(RuntimeError, match=r"sanity check failed: .* in 3 steps .*learning_rate=0.0"):
        sanity_check(model, batch, config, None)
