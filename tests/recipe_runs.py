"""Running recipes/finetune.py in tests: the recipe as a module, tiny options, two processes, and kill-and-resume."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from conftest import TINY_DETR, TINY_RESNET, free_port
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"
TINY_MODEL = {
    "backbone_config": {"model_type": "resnet", **TINY_RESNET, "out_features": ["stage4"]},
    **{k: v for k, v in TINY_DETR.items() if k != "num_labels"},
}


def load_recipe() -> ModuleType:
    """A fresh copy of the recipe module (tests may replace its functions)."""
    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_arguments(output_dir: Path, **overrides) -> list[str]:
    """Command-line options of a tiny run: a tiny DETR, 32 + 8 synthetic 64 px images, 2 epochs of 8 steps."""
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
        "operating_point_report": False,  # seconds of plots per run; test_recipe.py's first test keeps it on
        **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", json.dumps(value))]


def launch_two_processes(script: Path, arguments: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``script`` on 2 CPU processes (gloo), one thread each, on a free port."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(script), *arguments]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def kill_and_resume(tmp_path: Path, settings: dict, kill_at: str) -> tuple[dict, dict, Path]:
    """Train straight; train again, SIGKILL the run once checkpoint ``kill_at`` exists, resume it from ``latest``.

    Returns both runs' final weights and the interrupted run's folder.
    """
    load_recipe().main(recipe_arguments(tmp_path / "straight", **settings))
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(RECIPE), *recipe_arguments(interrupted, **settings)],
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
    load_recipe().main(recipe_arguments(interrupted, **settings, resume_from_checkpoint="latest"))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(interrupted / "model.safetensors"))
    return straight, resumed, interrupted
