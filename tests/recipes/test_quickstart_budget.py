"""The recipe's budget and what it tells: the step budget and its bar, the safety time limit's warning, final_loss,
the slow-bf16 warning, and the model card ("-" for absent metrics, embedded curves and predictions)."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_DETR, TINY_RESNET
from PIL import Image
from recipe_runs import ROOT, load_recipe, recipe_arguments
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor, precision
from detr_hf.data import make_synthetic_dataset
from detr_hf.training import TrainingConfig
from detr_hf.training.model_card import PREDICTION_EXAMPLES, save_prediction_examples, write_model_card


def tiny_detr() -> DetrForObjectDetection:
    torch.manual_seed(0)
    return DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)).eval()


def recording_recipe():
    """The recipe, its progress bars recorded in `bars`."""
    recipe = load_recipe()
    bars = []

    class RecordedProgress(recipe.TrainProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    recipe.TrainProgress = RecordedProgress
    return recipe, bars


def test_step_budget_sets_the_bar_and_final_loss_is_the_mean_of_the_last_steps(tmp_path, capsys):
    recipe, bars = recording_recipe()
    out = tmp_path / "run"
    arguments = recipe_arguments(out, num_epochs=100, max_steps=8, max_train_minutes=60, logging_steps=1)
    results = recipe.main(arguments)
    train = json.loads((out / "train_results.json").read_text())
    assert train["steps"] == 8 == results["train"]["steps"] and not train["stopped_by_time_limit"]
    [bar] = bars
    assert not bar.by_time and bar.bar.total == 8 and bar.bar.n == 8  # not num_epochs x steps per epoch
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    assert train["final_loss"] == pytest.approx(np.mean(losses), rel=1e-5) and train["final_loss_steps"] == 8
    assert train["final_loss"] != pytest.approx(losses[0]) and train["final_loss"] != pytest.approx(losses[-1])
    printed = capsys.readouterr().out
    assert f"Results in {out}/" in printed and "AP50" in printed and "STOPPED EARLY" not in printed
    # the model card: "-" for the undefined metric (no object of 64 px images is "large"), curves and predictions
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["map_large"] == -1
    card = (out / "README.md").read_text()
    assert "| map_large | - |" in card and "-1.0000" not in card
    assert "](loss_curve.png)" in card and f"]({PREDICTION_EXAMPLES})" in card
    with Image.open(out / PREDICTION_EXAMPLES) as grid:
        assert grid.width > 64 and grid.height >= 64  # 6 validation images of 64 px, in a grid


def test_the_safety_time_limit_stops_a_step_budget_and_says_so(tmp_path, capsys, caplog):
    recipe, _bars = recording_recipe()
    out = tmp_path / "run"
    recipe.main(recipe_arguments(out, num_epochs=100, max_steps=50, max_train_minutes=0.0001))
    train = json.loads((out / "train_results.json").read_text())
    assert train["steps"] == 1 and train["stopped_by_time_limit"]
    assert any("STOPPED EARLY" in r.getMessage() and "1 of 50" in r.getMessage() for r in caplog.records)
    assert "safety time limit ended the run" in capsys.readouterr().out
    assert "safety time limit stopped this run" in (out / "README.md").read_text()


def test_with_only_a_time_budget_the_bar_counts_time_and_the_end_is_no_surprise(tmp_path, caplog):
    recipe, bars = recording_recipe()
    out = tmp_path / "run"
    recipe.main(recipe_arguments(out, num_epochs=100, max_train_minutes=0.0001))
    [bar] = bars
    assert bar.by_time and bar.bar.total == pytest.approx(0.006)
    train = json.loads((out / "train_results.json").read_text())
    assert train["steps"] == 1 and not train["stopped_by_time_limit"]
    assert not any("STOPPED EARLY" in r.getMessage() for r in caplog.records)


def test_the_quickstart_is_a_step_budget_with_a_safety_time_limit():
    values = yaml.safe_load((ROOT / "recipes" / "configs" / "quickstart.yaml").read_text())
    config = TrainingConfig(**values)
    assert config.max_steps and config.max_train_minutes and not config.eval_every_minutes  # nothing timed


@pytest.fixture
def bf16_support(monkeypatch):
    """Sets what the CPU is said to support; the once-per-process warning and Accelerate's process-wide state (its
    mixed precision is set once per process) are reset, before and after."""
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(precision, "_warned", set())
    AcceleratorState._reset_state(reset_partial_state=True)

    def set_support(kind: str) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_support", lambda: kind)

    yield set_support
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("support", ["none", "emulated"])
def test_mixed_precision_bf16_warns_on_a_cpu_without_native_bf16(tmp_path, bf16_support, support):
    bf16_support(support)
    config = TrainingConfig(output_dir=str(tmp_path / "run"), mixed_precision="bf16", cpu=True)
    with pytest.warns(precision.SlowBf16Warning, match="mixed_precision: bf16 on a CPU without native bf16"):
        load_recipe().setup(config)


def test_bf16_warnings_only_without_native_bf16(tmp_path, bf16_support, recwarn):
    bf16_support("native")
    load_recipe().setup(TrainingConfig(output_dir=str(tmp_path / "run"), mixed_precision="bf16", cpu=True))
    assert not precision.warn_if_bf16_is_slow("bf16 autocast")
    assert not [w for w in recwarn if issubclass(w.category, precision.SlowBf16Warning)]


def test_bf16_autocast_inference_warns_once_on_a_cpu_without_native_bf16(bf16_support):
    bf16_support("none")
    model = tiny_detr()
    pixels = torch.rand(1, 3, 64, 64)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with pytest.warns(precision.SlowBf16Warning, match="bf16 autocast"), torch.no_grad(), autocast:
        model(pixel_values=pixels)
    assert not precision.warn_if_bf16_is_slow("bf16 autocast")  # once per process
    with torch.no_grad():
        model(pixel_values=pixels)  # fp32: nothing to say


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 CPU flags")
def test_cpu_bf16_support_agrees_with_the_cpu_flags():
    precision.cpu_bf16_support.cache_clear()
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert (precision.cpu_bf16_support() == "native") == native
    if not native:
        onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        assert precision.cpu_bf16_support() == ("emulated" if onednn else "none")


def test_model_card_shows_absent_metrics_as_a_dash_and_embeds_only_the_images_it_has(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path))
    metrics = {"map": 0.5, "map_50": 0.75, "map_large": -1.0, "map_per_class": {"circle": 0.25, "square": -1.0}}
    train = {"steps": 8, "epochs": 1, "train_seconds": 60, "final_loss": 1.5, "final_loss_steps": 8}
    arguments = (config, metrics, "accelerate launch recipes/finetune.py", {0: "circle", 1: "square"}, train)
    card = write_model_card(tmp_path, *arguments).read_text()
    assert "| map | 0.5000 |" in card and "| map_large | - |" in card and "| square | - |" in card
    assert "-1.0000" not in card and "![" not in card  # no picture written yet: none linked
    (tmp_path / "loss_curve.png").write_bytes(b"png")
    (tmp_path / PREDICTION_EXAMPLES).write_bytes(b"png")
    card = write_model_card(tmp_path, *arguments).read_text()
    assert card.index("](loss_curve.png)") < card.index(f"]({PREDICTION_EXAMPLES})") < card.index("## Usage")


def test_prediction_examples_draw_the_model_detections(tmp_path):
    from detr_hf.visualization import image_grid

    model = tiny_detr()
    model.config.id2label = {i: f"class {i}" for i in range(model.config.num_labels)}
    validation = make_synthetic_dataset(num_train=0, num_val=4, image_size=64, seed=1)["validation"]
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    path = save_prediction_examples(model, processor, validation, tmp_path / "p.png", count=4, threshold=0.0)
    plain = np.asarray(image_grid([image.convert("RGB") for image in validation["image"]], columns=3))
    drawn = np.asarray(Image.open(path).convert("RGB"))
    assert drawn.shape == plain.shape and (drawn != plain).any()  # at threshold 0 every query is drawn
    assert save_prediction_examples(model, processor, validation.select([]), tmp_path / "none.png") is None
