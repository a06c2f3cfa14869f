"""Fine-tune a DETR-family detector with Accelerate: one CPU, one GPU or many processes, nothing to write by hand.

    accelerate launch recipes/finetune.py          # = --config recipes/configs/quickstart.yaml
    accelerate launch recipes/finetune.py --config recipes/configs/aerial.yaml --model facebook/detr-resnet-50 \\
        --dataset path/to/yolo_export --output_dir runs/aerial --push_to_hub true
    # several CPU processes (accelerate's own --cpu launcher starts only one without MPI):
    accelerate launch --multi_gpu --num_processes 2 recipes/finetune.py --config ... --cpu true

Every option is in `detr_hf.training.TrainingConfig`; `--key value` overrides the YAML file, unknown keys fail.
Outputs in `output_dir` (which must be empty unless resuming or --overwrite_output_dir true): the model and image
processor, README.md (model card), eval_results.json, train_results.json, train_log.jsonl (learning rates and gradient
norm of every optimizer step, the loss every logging_steps), loss_curve.png, resolved_config.yaml, best/, checkpoints/
(Accelerate states, for --resume_from_checkpoint; latest_checkpoint.txt names the newest one of the run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detr_hf.data import build_transforms, class_names_of, load_detection_dataset, make_synthetic_dataset
from detr_hf.data.transforms import DetectionTransform, make_collate_fn, make_transform_fn
from detr_hf.evaluation import evaluate_detector, format_metrics_table
from detr_hf.training import (
    ModelEma,
    TrainingConfig,
    build_detector,
    build_optimizer,
    build_scheduler,
    eval_dataloader,
    parse_recipe_arguments,
    write_model_card,
)

logger = get_logger("detr_hf.finetune")
QUICKSTART = Path(__file__).parent / "configs" / "quickstart.yaml"  # what runs without any option
LATEST_CHECKPOINT = "latest_checkpoint.txt"  # in output_dir: the name of the run's newest complete checkpoint


class TrainState:
    """What a checkpoint must remember beyond model, optimizer, scheduler and RNGs: where the run is in the data."""

    def __init__(self) -> None:
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.train_seconds, self.best_metric, self.evals_without_improvement = 0.0, -math.inf, 0
        self.skipped_steps, self.consecutive_skipped_steps = 0, 0
        self.loss_history, self.eval_history = [], []
        self.checkpoints: list[str] = []  # this run's step checkpoints, oldest first: the only ones rotation deletes

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class StepResult(NamedTuple):
    """What one optimizer step leaves to log."""

    outputs: Any
    learning_rates: dict[str, float]  # per parameter group kind ("transformer", "backbone"), as used by this step
    grad_norm: float | None  # before clipping


class SeededTransform:
    """Augments a batch with a seed derived from (run seed, epoch, image ids): the same data position always gets the
    same augmentation, so a resumed run replays exactly what an uninterrupted one would have seen. The seed is set on
    every call, in DataLoader workers too (where it replaces the worker's own reseed)."""

    def __init__(self, transform: DetectionTransform, seed: int):
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        key = f"{self.seed}/{self.epoch}/{batch['image_id']}".encode()
        self.transform.set_random_seed(zlib.crc32(key))
        return self.transform(batch)


class TrainLog:
    """`train_log.jsonl`: one line per optimizer step (learning rates, gradient norm, and the loss every
    `logging_steps`), written by the main process. A resumed run first drops the lines past its checkpoint."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool):
        self.file = None
        if not enabled:
            return
        kept = []
        if resumed_step and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # the half-written last line of a killed run
                    continue
        path.write_text("".join(kept), encoding="utf-8")
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def on_all_processes(accelerator: Accelerator, what: str, action: Callable[[], Any]) -> None:
    """Runs `action` on this process, then raises on every process if it failed on any one: a process that failed
    alone (out of disk, say) would otherwise leave the others waiting at the next barrier forever."""
    error = None
    try:
        action()
    except Exception as exc:  # raised again below, once every process knows
        error = exc
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum").item()
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} failed on {int(failed)} other process(es); their error is logged above")


def any_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """True on every process when `flag` is true on any: processes that must skip a step together agree here."""
    flag = torch.as_tensor(flag, dtype=torch.float32, device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def check_output_dir(config: TrainingConfig, output_dir: Path) -> None:
    """A new run refuses a folder that already holds something: its checkpoints would mix with an earlier run's."""
    if config.resume_from_checkpoint or config.overwrite_output_dir:
        return
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(
            f"output_dir {output_dir} is not empty (an earlier run?). Resume it with --resume_from_checkpoint latest, "
            "train a new run there anyway with --overwrite_output_dir true, or choose another output_dir."
        )


def prepare_output_dir(config: TrainingConfig, output_dir: Path) -> None:
    """Main process: creates the folder, removes what killed saves left (`*.partial`), writes the resolved config."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for leftover in [*output_dir.glob("*.partial"), *(output_dir / "checkpoints").glob("*.partial")]:
        shutil.rmtree(leftover, ignore_errors=True)
    config.save(output_dir / "resolved_config.yaml")
    if not config.resume_from_checkpoint and (output_dir / "checkpoints").is_dir():
        write_text_atomically(output_dir / LATEST_CHECKPOINT, "")  # an earlier run's checkpoints are not "latest"


def load_data(config: TrainingConfig):
    if config.dataset == "synthetic":
        return make_synthetic_dataset(**{"seed": config.seed, **config.synthetic})
    if not os.path.exists(config.dataset) and "/" not in config.dataset:
        raise FileNotFoundError(f"dataset {config.dataset!r}: no such folder or file, and not a Hub dataset name.")
    return load_detection_dataset(
        config.dataset, format=config.dataset_format, val_fraction=config.val_fraction, split_seed=config.split_seed
    )


def make_loaders(config: TrainingConfig, dataset, processor):
    preset = "eval" if config.augmentation == "none" else config.augmentation  # "none": resize only
    train_pipeline = build_transforms(preset, config.scales, config.max_size, seed=config.seed)
    train_transform = SeededTransform(make_transform_fn(train_pipeline), config.seed)
    collate = make_collate_fn(processor)
    train = DataLoader(
        dataset[config.train_split].with_transform(train_transform),
        batch_size=config.per_device_train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=config.num_workers,
        drop_last=True,
        # its own generator: creating an iterator must not draw from the global RNG (dropout's), or a resumed run
        # would see other dropout masks than the uninterrupted one
        generator=torch.Generator().manual_seed(config.seed),
    )
    evaluation = eval_dataloader(
        dataset[config.eval_split], processor, config.per_device_eval_batch_size, config.num_workers, config.seed
    )
    return train, evaluation, train_transform


def plot_history(state: TrainState, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if state.loss_history:
        steps, losses = zip(*state.loss_history)
        loss_axis.plot(steps, losses, lw=1)
    loss_axis.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    loss_axis.set_yscale("log")
    if state.eval_history:
        steps, maps, map50s = zip(*state.eval_history)
        map_axis.plot(steps, maps, "o-", label="mAP")
        map_axis.plot(steps, map50s, "s-", label="AP50")
        map_axis.legend()
    map_axis.set(title="validation", xlabel="optimizer step", ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainState, limit: int | None) -> None:
    """Accelerate state saved under a temporary name and renamed when complete, so a kill never leaves a half one.
    Keeps the newest `limit` checkpoints of this run (all if None); another run's are never deleted."""
    name = f"step-{state.global_step:08d}"
    folder = output_dir / "checkpoints" / name
    partial = folder.with_name(name + ".partial")
    previous = [n for n in state.checkpoints if n != name]
    dropped = previous[: max(0, len(previous) + 1 - limit)] if limit is not None else []
    state.checkpoints = [n for n in previous if n not in dropped] + [name]  # saved with the state: resumes keep it
    on_all_processes(accelerator, f"saving checkpoint {partial}", lambda: accelerator.save_state(str(partial)))

    def publish() -> None:
        if not accelerator.is_main_process:
            return
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        write_text_atomically(output_dir / LATEST_CHECKPOINT, name)
        for old in dropped:
            shutil.rmtree(folder.with_name(old), ignore_errors=True)

    on_all_processes(accelerator, f"publishing checkpoint {folder}", publish)


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def replace_folder(new: Path, target: Path) -> None:
    """Moves the complete folder `new` to `target` by renames, so that `target` is never half written."""
    old = target.with_name(target.name + ".previous.partial")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(spec: str, output_dir: Path) -> Path:
    """A checkpoint folder, or for "latest" the newest complete one this output_dir's run saved."""
    if spec != "latest":
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint={spec!r} is not a folder")
        return Path(spec)
    pointer = output_dir / LATEST_CHECKPOINT
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if not name:
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest' but the last run in {output_dir} saved no checkpoint (the ones in "
                f"{output_dir}/checkpoints are an earlier run's: name one to resume it)"
            )
        if (output_dir / "checkpoints" / name).is_dir():
            return output_dir / "checkpoints" / name
    # no pointer (a run of an earlier version, or killed before it was written): the highest step
    done = sorted(p for p in (output_dir / "checkpoints").glob("step-*") if not p.name.endswith(".partial"))
    if not done:
        raise FileNotFoundError(f"resume_from_checkpoint='latest' but {output_dir}/checkpoints has no checkpoint")
    return done[-1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_recipe_arguments(argv, default_config=QUICKSTART)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to or None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(config.seed)
    # Everything that can fail on bad input fails here, before any training.
    check_config(config)
    check_output_dir(config, output_dir)
    with accelerator.main_process_first():
        dataset = load_data(config)
    for split in (config.train_split, config.eval_split):
        if split not in dataset:
            raise ValueError(f"split {split!r} is not in the dataset (splits: {list(dataset)})")
    class_names = class_names_of(dataset[config.train_split])
    model, processor = build_detector(config, class_names)
    processor.size = {"shortest_edge": max(config.scales), "longest_edge": config.max_size}  # inference = eval preset
    if accelerator.is_main_process:
        prepare_output_dir(config, output_dir)
        logger.info(
            "%d train / %d eval images, %d classes; %.1fM parameters (%.1fM trainable)",
            len(dataset[config.train_split]),
            len(dataset[config.eval_split]),
            len(class_names),
            sum(p.numel() for p in model.parameters()) / 1e6,
            sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        )
    accelerator.wait_for_everyone()  # the leftovers of killed saves are gone before anyone saves
    train_loader, eval_loader, train_transform = make_loaders(config, dataset, processor)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes * config.gradient_accumulation_steps))
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    # Counted in optimizer steps and stepped by the loop once per optimizer step. Not prepared: Accelerate steps a
    # prepared scheduler once per process at every optimizer step, which would squeeze the schedule N-fold.
    scheduler = build_scheduler(optimizer, config, total_steps)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(scheduler)
    ema = None
    if config.ema_decay:
        ema = ModelEma(accelerator.unwrap_model(model), config.ema_decay)
        accelerator.register_for_checkpointing(ema)
    if config.resume_from_checkpoint:
        checkpoint = find_checkpoint(config.resume_from_checkpoint, output_dir)
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state.global_step, state.epoch)
    if config.report_to:
        accelerator.init_trackers("detr_hf", config={k: str(v) for k, v in config.to_dict().items()})
    train_log = TrainLog(output_dir / "train_log.jsonl", state.global_step, accelerator.is_main_process)

    eval_model = ema.module if ema is not None else model  # the EMA copy is updated in place
    ground_truth = dataset[config.eval_split]
    metrics: dict[str, Any] | None = None
    started, last_eval_time = time.perf_counter() - state.train_seconds, time.perf_counter()
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    stop = False
    while state.epoch < config.num_epochs and not stop:
        train_loader.set_epoch(state.epoch)
        train_transform.epoch = state.epoch
        batches = (
            accelerator.skip_first_batches(train_loader, state.step_in_epoch) if state.step_in_epoch else train_loader
        )
        for batch in batches:
            step = train_step(config, accelerator, model, optimizer, scheduler, batch, state)
            state.step_in_epoch += 1
            if step is None:  # accumulating gradients, or a skipped step
                continue
            state.global_step += 1
            progress.update(1)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            log_step(config, accelerator, state, step, train_log, progress)
            state.train_seconds = time.perf_counter() - started
            if (
                config.checkpoint_every_steps
                and config.save_total_limit != 0
                and state.global_step % config.checkpoint_every_steps == 0
            ):
                save_checkpoint(accelerator, output_dir, state, config.save_total_limit)
            out_of_time = config.max_train_minutes and state.train_seconds > 60 * config.max_train_minutes
            stop = any_process(accelerator, bool(out_of_time or state.global_step >= total_steps))
            timed_eval = (
                config.eval_every_minutes and time.perf_counter() - last_eval_time > 60 * config.eval_every_minutes
            )
            if timed_eval and not stop:
                metrics = run_eval(config, eval_model, processor, eval_loader, ground_truth, accelerator, state)
                last_eval_time = time.perf_counter()
            if stop:
                break
        else:
            state.epoch += 1
            state.step_in_epoch = 0
            if state.epoch % config.eval_every_epochs == 0 and state.epoch < config.num_epochs:
                metrics = run_eval(config, eval_model, processor, eval_loader, ground_truth, accelerator, state)
                if config.early_stopping_patience and state.evals_without_improvement >= config.early_stopping_patience:
                    logger.info(
                        "early stopping: no %s improvement in %d evaluations",
                        config.metric_for_best_model,
                        state.evals_without_improvement,
                    )
                    stop = True
    progress.close()
    train_log.close()
    state.train_seconds = time.perf_counter() - started
    final = unwrap_for_saving(accelerator, model, ema)
    metrics = run_eval(
        config, eval_model, processor, eval_loader, ground_truth, accelerator, state, output_dir / "predictions.json"
    )
    results = finish(config, accelerator, final, processor, metrics, state, output_dir, len(train_loader))
    accelerator.wait_for_everyone()  # no process leaves while another may still need it
    accelerator.end_training()
    return results


def check_config(config: TrainingConfig) -> None:
    if config.save_total_limit is not None and config.save_total_limit < 0:
        raise ValueError(f"save_total_limit={config.save_total_limit}: use a count >= 0, or null to keep every one")
    if config.max_consecutive_skipped_steps is not None and config.max_consecutive_skipped_steps < 1:
        raise ValueError(
            f"max_consecutive_skipped_steps={config.max_consecutive_skipped_steps}: use a count >= 1, or null to "
            "never abort"
        )


def train_step(
    config: TrainingConfig, accelerator: Accelerator, model, optimizer, scheduler, batch, state: TrainState
) -> StepResult | None:
    """One batch: forward and backward, and at the end of a gradient accumulation the optimizer and scheduler step.
    None while accumulating, or when the step is skipped for a non-finite loss or gradient norm."""
    with accelerator.accumulate(model):
        outputs = model(**batch)
        # every process skips together, or distributed training would hang
        if any_process(accelerator, ~torch.isfinite(outputs.loss.detach())):
            skip_step(config, optimizer, state, f"non-finite loss {outputs.loss.item()}")
            return None
        accelerator.backward(outputs.loss)
        if not accelerator.sync_gradients:
            return None
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
        # with fp16, the gradient scaler skips overflowing steps itself (and lowers its scale)
        if grad_norm is not None and accelerator.scaler is None:
            grad_norm = grad_norm.detach()
            if any_process(accelerator, ~torch.isfinite(grad_norm)):
                skip_step(config, optimizer, state, f"non-finite gradient norm {grad_norm.item()}")
                return None
        learning_rates = {group["name"].removesuffix("_no_decay"): group["lr"] for group in optimizer.param_groups}
        optimizer.step()
        if not optimizer.step_was_skipped:
            scheduler.step()
        optimizer.zero_grad()
    state.consecutive_skipped_steps = 0
    return StepResult(outputs, learning_rates, None if grad_norm is None else grad_norm.item())


def skip_step(config: TrainingConfig, optimizer, state: TrainState, reason: str) -> None:
    """Drops the step's gradients; aborts once `max_consecutive_skipped_steps` steps in a row were skipped."""
    optimizer.zero_grad()
    state.skipped_steps += 1
    state.consecutive_skipped_steps += 1
    logger.warning("step %d: %s, step skipped", state.global_step + 1, reason)
    limit = config.max_consecutive_skipped_steps
    if limit and state.consecutive_skipped_steps >= limit:
        raise RuntimeError(
            f"training diverged: {state.consecutive_skipped_steps} steps in a row were skipped (the last for a "
            f"{reason}) after {state.global_step} optimizer steps; no model was saved. Lower learning_rate, add "
            "warmup_steps, or resume from an earlier checkpoint (max_consecutive_skipped_steps sets this limit)."
        )


def log_step(
    config: TrainingConfig, accelerator: Accelerator, state: TrainState, step: StepResult, train_log: TrainLog, progress
) -> None:
    """Every step: learning rates and gradient norm to train_log.jsonl; every `logging_steps`: the loss too, averaged
    over processes, to the trackers and the progress bar."""
    record: dict[str, Any] = {"step": state.global_step, "lr": step.learning_rates, "grad_norm": step.grad_norm}
    if state.global_step % config.logging_steps == 0 or state.global_step == 1:
        value = accelerator.reduce(step.outputs.loss.detach(), "mean").item()
        state.loss_history.append((state.global_step, value))
        lr = step.learning_rates.get("transformer", next(iter(step.learning_rates.values())))
        progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}")
        terms = {
            k: accelerator.reduce(v.detach(), "mean").item()
            for k, v in step.outputs.loss_dict.items()
            if "_" in k and not k[-1].isdigit()
        }
        record.update(loss=value, **terms)
        accelerator.log(
            {"train/loss": value, "train/lr": lr, **{f"train/{k}": v for k, v in terms.items()}}, step=state.global_step
        )
    train_log.write(record)


def run_eval(
    config, model, processor, loader, ground_truth, accelerator, state: TrainState, predictions: Path | None = None
):
    metrics, evaluator = evaluate_detector(model, processor, loader, ground_truth, accelerator)
    if predictions is not None and accelerator.is_main_process:
        predictions.write_text(json.dumps(evaluator.coco_results()))
    if accelerator.is_main_process:
        print("\n" + format_metrics_table(metrics), flush=True)
        state.eval_history.append((state.global_step, metrics["map"], metrics["map_50"]))
        accelerator.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=state.global_step)
        current = metrics.get(config.metric_for_best_model, -1)
        if current > state.best_metric:
            state.best_metric, state.evals_without_improvement = current, 0
        else:
            state.evals_without_improvement += 1
    shared = [state.best_metric, state.evals_without_improvement, state.eval_history]
    state.best_metric, state.evals_without_improvement, state.eval_history = broadcast_object_list(shared)
    if state.evals_without_improvement == 0:
        save_best(accelerator, accelerator.unwrap_model(model), processor, Path(config.output_dir) / "best")
    return metrics


def save_best(accelerator: Accelerator, model, processor, folder: Path) -> None:
    """Writes the model and processor to a temporary folder, then renames it to `folder`: never half written."""
    partial = folder.with_name(folder.name + ".partial")

    def write() -> None:
        # every process calls save_pretrained (transformers may gather across them); only the main one writes
        model.save_pretrained(partial, is_main_process=accelerator.is_main_process)
        if accelerator.is_main_process:
            processor.save_pretrained(partial)

    def publish() -> None:
        if accelerator.is_main_process:
            replace_folder(partial, folder)

    on_all_processes(accelerator, f"saving {partial}", write)
    on_all_processes(accelerator, f"renaming {partial}", publish)  # after every process left save_pretrained


def unwrap_for_saving(accelerator: Accelerator, model, ema):
    accelerator.wait_for_everyone()
    return ema.module if ema is not None else accelerator.unwrap_model(model)


def finish(
    config, accelerator, model, processor, metrics, state: TrainState, output_dir: Path, batches_per_epoch: int
) -> dict[str, Any]:
    """Saves the model (every process, see save_best), then on the main process the processor, metrics, curves and
    model card, and pushes them when asked. A failure on any process stops every process with the error."""
    results: dict[str, Any] = {}
    train_results = {
        "train_seconds": round(state.train_seconds, 2),
        "steps": state.global_step,
        "epochs": round(state.epoch + state.step_in_epoch / max(1, batches_per_epoch), 3),
        "skipped_steps": state.skipped_steps,
        "num_processes": accelerator.num_processes,
        "final_loss": state.loss_history[-1][1] if state.loss_history else None,
    }

    def save() -> None:
        model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process)
        if accelerator.is_main_process:
            write_outputs(config, model, processor, metrics, state, output_dir, train_results)
            results.update(eval=metrics, train=train_results)

    on_all_processes(accelerator, f"saving the model to {output_dir}", save)
    return results


def write_outputs(config, model, processor, metrics, state: TrainState, output_dir: Path, train_results) -> None:
    processor.save_pretrained(output_dir)
    (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    (output_dir / "train_results.json").write_text(json.dumps(train_results, indent=2))
    plot_history(state, output_dir / "loss_curve.png")
    command = "accelerate launch recipes/finetune.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_model_card(output_dir, config, metrics, command, model.config.id2label, train_results)
    if config.push_to_hub:
        from huggingface_hub import HfApi

        repo_id = config.hub_model_id or output_dir.name
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True, private=config.hub_private)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            ignore_patterns=["checkpoints/*", "best/*", "*.partial/*", LATEST_CHECKPOINT],
        )
        logger.info("pushed to https://huggingface.co/%s", repo_id)


if __name__ == "__main__":
    main()
