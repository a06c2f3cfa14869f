"""recipes/finetune.py where runs used to go wrong: several processes, resumes with workers, reused output folders,
diverging training and a process that fails while saving. Tiny models and data, CPU."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from recipe_runs import RECIPE, kill_and_resume, launch_two_processes, load_recipe, recipe_arguments
from safetensors.torch import load_file

from detr_hf.training import TrainingConfig, find_checkpoint

LEARNING_RATE = 1e-3  # _arguments' learning rate, of the backbone too
SMALL_DATA = {"num_train": 16, "num_val": 4, "image_size": 64}


def _train_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_learning_rate_of_every_step_is_the_same_on_one_and_two_processes(tmp_path):
    schedule = {"lr_scheduler": "cosine", "warmup_steps": 2, "num_epochs": 1, "eval_every_epochs": 10}
    # the same global batch of 8: 8 on one process, 2 x 2 x 2 accumulated on two
    load_recipe().main(recipe_arguments(tmp_path / "one", per_device_train_batch_size=8, **schedule))
    completed = launch_two_processes(
        RECIPE,
        recipe_arguments(
            tmp_path / "two", cpu=True, per_device_train_batch_size=2, gradient_accumulation_steps=2, **schedule
        ),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = _train_log(tmp_path / "one"), _train_log(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]  # 32 images / 8
    # warm-up over 2 steps, then a cosine over the last 2: (1 + cos(0)) / 2 at step 3, (1 + cos(pi / 2)) / 2 at 4
    expected = [LEARNING_RATE * f for f in (0.5, 1.0, 1.0, 0.5)]
    for records in (one, two):
        for name in ("transformer", "backbone"):
            assert [r["lr"][name] for r in records] == pytest.approx(expected, rel=1e-6), (records, name)
    assert json.loads((tmp_path / "two" / "train_results.json").read_text())["num_processes"] == 2


def test_resume_with_workers_ema_and_accumulation_ends_with_the_same_weights(tmp_path):
    settings = dict(
        max_steps=8,
        num_epochs=2,
        checkpoint_every_steps=2,
        save_total_limit=10,
        num_workers=2,
        ema_decay=0.9,
        gradient_accumulation_steps=2,
        eval_every_epochs=10,
    )
    straight, resumed, interrupted = kill_and_resume(tmp_path, settings, kill_at="step-00000002")  # EMA weights
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0, msg=key)
    assert [r["step"] for r in _train_log(interrupted)] == list(range(1, 9))  # the killed run's extra lines dropped


def test_a_reused_output_dir_is_refused_unless_asked_and_then_keeps_both_runs_apart(tmp_path):
    out = tmp_path / "run"
    common = dict(synthetic=SMALL_DATA, num_epochs=1, eval_every_epochs=10)
    load_recipe().main(recipe_arguments(out, **common, checkpoint_every_steps=2, save_total_limit=2))  # steps 2 and 4
    old_model = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=f"{re.escape(str(out))} is not empty.*overwrite_output_dir"):
        load_recipe().main(recipe_arguments(out, **common, max_steps=2))
    assert (out / "model.safetensors").read_bytes() == old_model  # refused before anything was written
    (out / "checkpoints" / "step-00000009.partial").mkdir()  # what a save killed half-way leaves
    (out / "best.partial").mkdir()
    load_recipe().main(
        recipe_arguments(
            out, **common, max_steps=3, checkpoint_every_steps=1, save_total_limit=1, overwrite_output_dir=True
        )
    )
    # only the new run's own checkpoints were rotated: its step 3 is kept, the earlier run's step 4 too
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
    assert not list(out.glob("*.partial")) and (out / "best" / "model.safetensors").exists()
    assert (out / "model.safetensors").read_bytes() != old_model
    assert find_checkpoint("latest", out) == out / "checkpoints" / "step-00000003"


def test_save_total_limit_zero_keeps_no_step_checkpoint(tmp_path):
    out = tmp_path / "run"
    load_recipe().main(
        recipe_arguments(
            out, synthetic=SMALL_DATA, num_epochs=1, eval_every_epochs=10, checkpoint_every_steps=1, save_total_limit=0
        )
    )
    assert (out / "model.safetensors").exists()
    assert not list((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else True
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoint("latest", out)


def _poisoning(recipe, poison):
    """Makes the recipe's model pass each training loss through `poison(loss, model, call_number)`."""
    build = recipe.build_detector

    def build_detector(config, class_names):
        model, processor = build(config, class_names)
        forward, calls = model.forward, [0]

        def poisoned_forward(*args, **kwargs):
            outputs = forward(*args, **kwargs)
            if outputs.loss is not None:
                calls[0] += 1
                outputs.loss = poison(outputs.loss, model, calls[0])
            return outputs

        model.forward = poisoned_forward
        return model, processor

    recipe.build_detector = build_detector
    return recipe


def test_a_step_with_a_non_finite_gradient_norm_is_skipped(tmp_path):
    def infinite_gradient_at_the_second_step(loss, model, call):
        if call != 2:
            return loss
        weight = model.class_labels_classifier.weight.sum()
        return loss + torch.sqrt(weight - weight.detach())  # adds 0 to the loss, an infinite gradient to the weight

    out = tmp_path / "run"
    recipe = _poisoning(load_recipe(), infinite_gradient_at_the_second_step)
    recipe.main(recipe_arguments(out, synthetic=SMALL_DATA, num_epochs=1, max_steps=3, eval_every_epochs=10))
    train = json.loads((out / "train_results.json").read_text())
    assert train["skipped_steps"] == 1 and train["steps"] == 3
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert all(r["grad_norm"] is not None and r["grad_norm"] < float("inf") for r in _train_log(out))


def test_training_that_keeps_diverging_aborts_without_saving_a_model(tmp_path):
    out = tmp_path / "run"
    recipe = _poisoning(load_recipe(), lambda loss, model, call: loss * float("nan") if call >= 3 else loss)
    with pytest.raises(RuntimeError, match=r"3 steps in a row were skipped.*non-finite loss"):
        recipe.main(
            recipe_arguments(
                out, synthetic=SMALL_DATA, num_epochs=2, eval_every_epochs=10, max_consecutive_skipped_steps=3
            )
        )
    assert not (out / "model.safetensors").exists() and not (out / "train_results.json").exists()
    assert [r["step"] for r in _train_log(out)] == [1, 2]


FAILING_SAVE = """
from pathlib import Path
import torch
from accelerate import Accelerator
from detr_hf.training import TrainState, save_checkpoint

accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(2, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)
state = TrainState()
state.global_step = 2
save_state = accelerator.save_state

def save_state_out_of_disk(path):
    if accelerator.process_index == 1:
        raise OSError(28, "No space left on device")
    return save_state(path)

accelerator.save_state = save_state_out_of_disk
try:
    save_checkpoint(accelerator, Path({output!r}), state, 2)
    outcome = "saved"
except Exception as error:
    outcome = f"{{type(error).__name__}}: {{error}}"
Path({output!r}, f"rank{{accelerator.process_index}}.txt").write_text(outcome)
"""


def test_a_process_failing_to_save_stops_every_process_with_the_error(tmp_path):
    script = tmp_path / "failing_save.py"
    script.write_text(FAILING_SAVE.format(output=str(tmp_path)))
    try:
        completed = launch_two_processes(script, [], timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a process waited forever for the one that failed to save")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "rank1.txt").read_text() == "OSError: [Errno 28] No space left on device"
    assert "failed on 1 other process" in (tmp_path / "rank0.txt").read_text()
    assert not (tmp_path / "checkpoints" / "step-00000002").exists()


def test_a_dataset_folder_is_split_by_split_seed_not_by_the_training_seed(tmp_path):
    recipe, calls = load_recipe(), []
    recipe.load_detection_dataset = lambda source, **options: calls.append((source, options))
    recipe.load_data(TrainingConfig(dataset=str(tmp_path), seed=3, split_seed=7, val_fraction=0.2))
    assert calls == [(str(tmp_path), {"format": "auto", "val_fraction": 0.2, "split_seed": 7, "group_by": None})]
