"""recipes/finetune.py end to end on tiny settings: outputs, two processes, kill and resume, label sets, bad configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers
from conftest import TINY_DETR, TINY_RESNET, pycocotools_stats
from recipe_runs import RECIPE, ROOT, kill_and_resume, launch_two_processes, load_recipe, recipe_arguments
from safetensors.torch import load_file

from detr_hf import DetrForObjectDetection, DetrImageProcessor
from detr_hf.data import build_transforms, export_coco, make_synthetic_dataset
from detr_hf.evaluation import CocoEvaluator
from detr_hf.pretrained import detector_class
from detr_hf.training import (
    TrainingConfig,
    build_detector,
    build_scheduler,
    check_config,
    load_training_config,
    preset_config,
)

CLASSES = {"circle", "square", "triangle"}


def test_recipe_writes_a_usable_model_metrics_card_and_curve(tmp_path):
    out = tmp_path / "run"
    results = load_recipe().main(recipe_arguments(out, operating_point_report=True))
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "eval_results.json",
        "train_results.json",
        "loss_curve.png",
        "resolved_config.yaml",
        "predictions.json",
    ):
        assert (out / name).exists(), name
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {"map", "map_50", "map_75", "map_small", "map_medium", "map_large", "map_per_class"} <= set(metrics)
    assert set(metrics["map_per_class"]) == {"circle", "square", "triangle"}
    train = json.loads((out / "train_results.json").read_text())
    assert train["steps"] == 16 and train["epochs"] == 2 and train["train_seconds"] > 0
    assert results["train"]["steps"] == 16
    card = (out / "README.md").read_text()
    assert "map_50" in card and "accelerate launch recipes/finetune.py" in card
    report = json.loads((out / "report" / "report.json").read_text())  # the operating-point report, in the card too
    assert report["num_images"] == 8 and "## Operating point" in card
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    # the folder is a pipeline: at threshold 0 every query is a detection, with one of the dataset's classes, in the
    # image, and with the scores of the saved model itself
    image = make_synthetic_dataset(num_train=0, num_val=1, image_size=64, seed=5)["validation"][0]["image"]
    detections = transformers.pipeline("object-detection", model=str(out), threshold=0.0)(image)
    assert len(detections) == TINY_DETR["num_queries"]
    assert {d["label"] for d in detections} <= CLASSES
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 64 and 0 <= d["box"]["ymin"] <= d["box"]["ymax"] <= 64
               for d in detections)  # fmt: skip
    model = DetrForObjectDetection.from_pretrained(out).eval()
    processor = DetrImageProcessor.from_pretrained(out)
    with torch.no_grad():
        outputs = model(**processor(images=[image], return_tensors="pt"))
    expected = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(64, 64)])[0]
    assert sorted(d["score"] for d in detections) == pytest.approx(sorted(expected["scores"].tolist()), abs=1e-4)


def test_recipe_metrics_equal_pycocotools_on_its_own_predictions(tmp_path):
    out = tmp_path / "run"
    load_recipe().main(recipe_arguments(out, num_epochs=1))
    validation = make_synthetic_dataset(num_train=32, num_val=8, image_size=64, seed=0)["validation"]
    export_coco(validation, tmp_path / "gt.json")
    predictions = json.loads((out / "predictions.json").read_text())
    expected = pycocotools_stats(tmp_path / "gt.json", predictions)[0]
    assert json.loads((out / "eval_results.json").read_text())["map"] == pytest.approx(expected, abs=1e-6)


def test_two_processes_train_evaluate_every_image_once_and_checkpoint_once(tmp_path):
    out = tmp_path / "ddp"
    synthetic = {"num_train": 32, "num_val": 9, "image_size": 64}
    options = dict(num_epochs=1, cpu=True, checkpoint_every_steps=1, save_total_limit=2, synthetic=synthetic)
    completed = launch_two_processes(RECIPE, recipe_arguments(out, **options))
    assert completed.returncode == 0, completed.stderr[-3000:]
    train = json.loads((out / "train_results.json").read_text())
    assert train["num_processes"] == 2 and train["steps"] == 4  # 32 images / (2 processes x 4 per batch)
    # a checkpoint at every step, of which save_total_limit=2 are kept: the newest two, each saved once
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
    assert (out / "latest_checkpoint.txt").read_text(encoding="utf-8") == "step-00000004"
    predictions = json.loads((out / "predictions.json").read_text())
    per_image = {}
    for p in predictions:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    # at threshold 0 an image has one detection per query: an image evaluated twice (the sampler pads the 9 images
    # to 10) would show twice as many, a lost one none
    assert per_image == dict.fromkeys(range(1, 10), TINY_DETR["num_queries"])
    validation = make_synthetic_dataset(num_train=32, num_val=9, image_size=64, seed=0)["validation"]
    export_coco(validation, tmp_path / "gt.json")
    expected = pycocotools_stats(tmp_path / "gt.json", predictions)[0]
    assert json.loads((out / "eval_results.json").read_text())["map"] == pytest.approx(expected, abs=1e-6)


def test_killed_run_resumed_from_its_checkpoint_ends_with_the_same_weights(tmp_path):
    settings = dict(max_steps=12, num_epochs=3, checkpoint_every_steps=2, save_total_limit=10)
    straight, resumed, _ = kill_and_resume(tmp_path, settings, kill_at="step-00000004")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0, msg=key)


def test_finetunes_a_transformers_checkpoint_with_another_label_set(tmp_path):
    source = tmp_path / "transformers_detr"
    config = transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 5}
    )
    transformers.DetrForObjectDetection(config).save_pretrained(source)
    out = tmp_path / "run"
    load_recipe().main(recipe_arguments(out, model=str(source), model_overrides={}, num_epochs=1))
    tuned = load_file(str(out / "model.safetensors"))
    assert tuned["class_labels_classifier.weight"].shape[0] == 4  # 3 shapes + no object, not the source's 6
    assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "triangle"


def test_class_head_rows_are_kept_for_classes_the_checkpoint_knows(tmp_path):
    source = tmp_path / "src"
    config = transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 5}
    )
    config.id2label = {0: "dog", 1: "Triangle", 2: "cat", 3: "circle", 4: "square"}
    transformers.DetrForObjectDetection(config).save_pretrained(source)
    original = DetrForObjectDetection.from_pretrained(source).class_labels_classifier.weight
    model, _ = build_detector(TrainingConfig(model=str(source)), ["circle", "square", "triangle"])
    torch.testing.assert_close(model.class_labels_classifier.weight, original[[3, 4, 1, 5]])
    assert model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    with pytest.raises(ValueError, match="does not know"):
        build_detector(TrainingConfig(model=str(source), class_head="reuse"), ["circle", "horse"])


def test_bad_configs_fail_at_start_up_with_a_clear_message(tmp_path):
    recipe = load_recipe()
    with pytest.raises(ValueError, match=r"learning_rat.*did you mean 'learning_rate'"):
        recipe.main(recipe_arguments(tmp_path / "a", learning_rat=1e-4))
    with pytest.raises((FileNotFoundError, ValueError), match="no_such_folder"):
        recipe.main(recipe_arguments(tmp_path / "b", dataset=str(tmp_path / "no_such_folder")))
    with pytest.raises(ValueError, match="split 'test'"):
        recipe.main(recipe_arguments(tmp_path / "c", eval_split="test"))
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("num_epochs: 1\nwarmup: 10\n")
    with pytest.raises(ValueError, match=f"{config_file}.*'warmup'"):
        recipe.main(["--config", str(config_file)])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


SHIPPED_CONFIGS = sorted(path.stem for path in (ROOT / "recipes" / "configs").glob("*.yaml"))
CHECKPOINT_MODEL_TYPES = {"facebook/detr-resnet-50": "detr"}  # the checkpoints shipped configs start from


@pytest.fixture(scope="module")
def metric_names() -> set[str]:
    """The keys evaluation reports (with the default max_detections), which metric_for_best_model must be one of."""
    dataset = make_synthetic_dataset(num_train=0, num_val=1, image_size=64, seed=0)["validation"]
    return set(CocoEvaluator(dataset).compute())


def check_starts(config: TrainingConfig, metric_names: set[str]) -> None:
    """What the recipe builds from a config before it trains, short of the data and a checkpoint download: a value
    no run can use raises here."""
    check_config(config)
    build_transforms("eval" if config.augmentation == "none" else config.augmentation, config.scales, config.max_size)
    build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), config, total_steps=100)
    if config.model is None:
        defaults = preset_config(config.model_preset).to_dict()
        preset_config(config.model_preset, **config.model_overrides)
    else:
        defaults = detector_class(CHECKPOINT_MODEL_TYPES[config.model]).config_class().to_dict()
    unknown = sorted(set(config.model_overrides) - set(defaults))  # a config class takes any key, and ignores it
    assert not unknown, f"model_overrides {unknown} are not model options"
    assert config.class_head in ("auto", "reuse", "new"), config.class_head
    assert config.metric_for_best_model in metric_names, config.metric_for_best_model
    assert config.mixed_precision in ("no", "bf16", "fp16"), config.mixed_precision


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_pass_the_start_up_checks(name, metric_names):
    config = load_training_config(ROOT / "recipes" / "configs" / f"{name}.yaml")
    check_starts(config, metric_names)
    assert config.output_dir.startswith("runs/")  # a folder git ignores


@pytest.mark.parametrize(
    "broken",
    [
        {"augmentation": "aeriel"},
        {"lr_scheduler": "cosin"},
        {"model_preset": "dino"},
        {"model_overrides": {"num_querys": 30}},
        {"class_head": "keep"},
        {"metric_for_best_model": "map_smal"},
        {"mixed_precision": "fp17"},
        {"save_total_limit": -1},
        {"max_consecutive_skipped_steps": 0},
    ],
)
def test_config_checks_catch_a_typo(broken, metric_names):
    config = load_training_config(ROOT / "recipes" / "configs" / "quickstart.yaml")
    check_starts(config, metric_names)
    with pytest.raises((ValueError, KeyError, AssertionError)):
        check_starts(dataclasses.replace(config, **broken), metric_names)
