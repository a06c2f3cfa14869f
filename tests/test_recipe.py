"""recipes/finetune.py end to end on tiny settings: outputs, two processes, kill and resume, label sets, bad configs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TINY_DETR, TINY_RESNET
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from safetensors.torch import load_file

from detr_hf.data import export_coco, make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"
TINY_MODEL = {
    "backbone_config": {"model_type": "resnet", **TINY_RESNET, "out_features": ["stage4"]},
    **{k: v for k, v in TINY_DETR.items() if k != "num_labels"},
}


def _recipe():
    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arguments(output_dir: Path, **overrides) -> list[str]:
    options = {
        "dataset": "synthetic",
        "synthetic": {"num_train": 32, "num_val": 8, "image_size": 64},
        "model_overrides": TINY_MODEL,
        "scales": [64],
        "max_size": 96,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "num_epochs": 2,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "backbone_learning_rate": 1e-3,
        **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", json.dumps(value))]


def launch_two_processes(script: Path, arguments: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``script`` on 2 CPU processes (gloo), one thread each."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *arguments]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def kill_and_resume(tmp_path: Path, settings: dict, kill_at: str) -> tuple[dict, dict, Path]:
    """Train straight; train again, SIGKILL the run once checkpoint ``kill_at`` exists, resume it from ``latest``.

    Returns both runs' final weights and the interrupted run's folder.
    """
    _recipe().main(_arguments(tmp_path / "straight", **settings))
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(RECIPE), *_arguments(interrupted, **settings)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (interrupted / "checkpoints" / kill_at).exists():
        assert process.poll() is None and time.time() < deadline, f"the run ended before its checkpoint {kill_at}"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(p.name for p in (interrupted / "checkpoints").glob("step-*") if not p.name.endswith(".partial"))
    last = f"step-{settings['max_steps']:08d}"
    assert done and done[-1] < last and not (interrupted / "model.safetensors").exists()
    _recipe().main(_arguments(interrupted, **settings, resume_from_checkpoint="latest"))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(interrupted / "model.safetensors"))
    return straight, resumed, interrupted


def _pycocotools_map(ground_truth: dict, predictions: list) -> float:
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(predictions) if predictions else COCO(), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[0]


def test_recipe_writes_a_usable_model_metrics_card_and_curve(tmp_path):
    out = tmp_path / "run"
    results = _recipe().main(_arguments(out))
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
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    pipe = transformers.pipeline("object-detection", model=str(out), threshold=0.0)
    assert len(pipe(str(out / "loss_curve.png"))) > 0


def test_recipe_metrics_equal_pycocotools_on_its_own_predictions(tmp_path):
    out = tmp_path / "run"
    _recipe().main(_arguments(out, num_epochs=1))
    validation = make_synthetic_dataset(num_train=32, num_val=8, image_size=64, seed=0)["validation"]
    export_coco(validation, tmp_path / "gt.json")
    predictions = json.loads((out / "predictions.json").read_text())
    expected = _pycocotools_map(json.loads((tmp_path / "gt.json").read_text()), predictions)
    assert json.loads((out / "eval_results.json").read_text())["map"] == pytest.approx(expected, abs=1e-6)


def test_two_processes_train_evaluate_every_image_once_and_checkpoint_once(tmp_path):
    out = tmp_path / "ddp"
    synthetic = {"num_train": 32, "num_val": 9, "image_size": 64}
    completed = launch_two_processes(
        RECIPE, _arguments(out, num_epochs=1, cpu=True, checkpoint_every_steps=2, synthetic=synthetic)
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    train = json.loads((out / "train_results.json").read_text())
    assert train["num_processes"] == 2 and train["steps"] == 4  # 32 images / (2 processes x 4 per batch)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"][-2:]
    predictions = json.loads((out / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} <= set(range(1, 10)) and len({p["image_id"] for p in predictions}) == 9
    per_image = {}
    for p in predictions:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert max(per_image.values()) <= 100  # an image evaluated twice would show twice the detections
    validation = make_synthetic_dataset(num_train=32, num_val=9, image_size=64, seed=0)["validation"]
    export_coco(validation, tmp_path / "gt.json")
    expected = _pycocotools_map(json.loads((tmp_path / "gt.json").read_text()), predictions)
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
    _recipe().main(_arguments(out, model=str(source), model_overrides={}, num_epochs=1))
    tuned = load_file(str(out / "model.safetensors"))
    assert tuned["class_labels_classifier.weight"].shape[0] == 4  # 3 shapes + no object, not the source's 6
    assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "triangle"


def test_class_head_rows_are_kept_for_classes_the_checkpoint_knows(tmp_path):
    from detr_hf import DetrForObjectDetection
    from detr_hf.training import TrainingConfig, build_detector

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
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"learning_rat.*did you mean 'learning_rate'"):
        recipe.main(_arguments(tmp_path / "a", learning_rat=1e-4))
    with pytest.raises((FileNotFoundError, ValueError), match="no_such_folder"):
        recipe.main(_arguments(tmp_path / "b", dataset=str(tmp_path / "no_such_folder")))
    with pytest.raises(ValueError, match="split 'test'"):
        recipe.main(_arguments(tmp_path / "c", eval_split="test"))
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("num_epochs: 1\nwarmup: 10\n")
    with pytest.raises(ValueError, match=f"{config_file}.*'warmup'"):
        recipe.main(["--config", str(config_file)])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["quickstart", "aerial", "medical", "finetune_coco_format"])
def test_shipped_configs_are_valid(name):
    from detr_hf.training import load_training_config

    config = load_training_config(ROOT / "recipes" / "configs" / f"{name}.yaml")
    assert config.output_dir.startswith("runs/")
