"""Fine-tune a DETR-family detector with Accelerate: one CPU, one GPU or many processes, nothing to write by hand.

    accelerate launch recipes/finetune.py          # = --config recipes/configs/quickstart.yaml
    accelerate launch recipes/finetune.py --config recipes/configs/aerial.yaml --model facebook/detr-resnet-50 \\
        --dataset path/to/yolo_export --output_dir runs/aerial --push_to_hub true
    # several CPU processes (accelerate's own --cpu launcher starts only one without MPI):
    accelerate launch --multi_gpu --num_processes 2 recipes/finetune.py --config ... --cpu true

Every option is in `detr_hf.training.TrainingConfig`; `--key value` overrides the YAML file, unknown keys fail.
Outputs in `output_dir` (which must be empty unless resuming or --overwrite_output_dir true): the model and image
processor, README.md (model card), eval_results.json, train_results.json, train_log.jsonl (learning rates and gradient
norm of every optimizer step, the loss every logging_steps), loss_curve.png, validation_predictions.png (the card's
examples), resolved_config.yaml, best/, checkpoints/
(Accelerate states, for --resume_from_checkpoint; latest_checkpoint.txt names the newest one of the run).

This file is the loop: set up, load the data, build the model, prepare the training, then train epoch by epoch
(evaluating and checkpointing on the way) and finish (evaluate, save, publish). The pieces it is made of live in
`detr_hf.training`.
"""

# no `from __future__ import annotations`: tests and notebooks load this file without registering it in sys.modules,
# where dataclasses would look up string annotations
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader

from detr_hf.data import class_names_of, load_detection_dataset, make_synthetic_dataset
from detr_hf.evaluation import eval_dataloader, evaluate_detector, format_metrics_table, query_budget
from detr_hf.evaluation.report import report_after_training
from detr_hf.families.loading import set_input_size
from detr_hf.health import log_dataset_health
from detr_hf.precision import warn_if_bf16_is_slow
from detr_hf.training import (
    LATEST_CHECKPOINT,
    ModelEma,
    SeededTransform,
    StepResult,
    TrainingConfig,
    TrainLog,
    TrainState,
    any_process,
    build_detector,
    build_optimizer,
    build_scheduler,
    check_config,
    check_output_dir,
    find_checkpoint,
    log_step,
    on_all_processes,
    parse_recipe_arguments,
    plot_history,
    prepare_output_dir,
    sanity_check_run,
    save_checkpoint,
    save_model_atomically,
    train_dataloader,
    train_step,
    write_model_card,
)
from detr_hf.training.model_card import PREDICTION_EXAMPLES, save_prediction_examples
from detr_hf.training.progress import (
    RecentLosses,
    TrainProgress,
    results_summary,
    stopped_by_time_limit,
    time_limit_message,
)
from detr_hf.training.tiling import evaluate_sliced, report_scene_density

logger = get_logger("detr_hf.finetune")
QUICKSTART = Path(__file__).parent / "configs" / "quickstart.yaml"  # what runs without any option


@dataclass
class Run:
    """What the steps of the loop share."""

    config: TrainingConfig
    accelerator: Accelerator
    model: Any  # prepared by Accelerate
    processor: Any
    optimizer: Any
    scheduler: Any
    train_loader: DataLoader
    train_transform: SeededTransform
    eval_loader: DataLoader
    ground_truth: Dataset  # the evaluation split
    state: TrainState
    ema: ModelEma | None
    train_log: TrainLog
    total_steps: int
    progress: TrainProgress
    started: float  # time.perf_counter() of the run's start, moved back by the time a resumed run already trained
    last_eval_time: float
    stop: bool = False
    evaluator: Any = None  # the last evaluation's detections, for the operating-point report
    recent_losses: RecentLosses = field(default_factory=RecentLosses)  # train_results.json's final_loss
    time_limited: bool = False  # the safety time limit ended a step budget early

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def eval_model(self) -> Any:
        return self.ema.module if self.ema is not None else self.model  # the EMA copy is updated in place


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_recipe_arguments(argv, default_config=QUICKSTART)
    accelerator = setup(config)
    dataset = load_splits(config, accelerator)
    model, processor = build_model(config, class_names_of(dataset[config.train_split]))
    log_dataset_health(config, accelerator, dataset, model)  # one paragraph: duplicates, leakage, broken labels
    report_scene_density(config, dataset[config.train_split], model)
    prepare_outputs(config, accelerator, dataset, model)
    if config.sanity_check:  # overfit one batch first: fail fast when the loss can't go down
        report = Path(config.output_dir) if accelerator.is_main_process else None
        sanity_check_run(config, model, processor, dataset[config.train_split], report)
    run = prepare_training(config, accelerator, dataset, model, processor)
    while run.state.epoch < config.num_epochs and not run.stop:
        train_epoch(run)
    return finish(run)


# -- set up, data, model ------------------------------------------------------------------------------------------


def setup(config: TrainingConfig) -> Accelerator:
    """The accelerator, logging and seed; everything that can fail on a bad config fails here, before any work."""
    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to or None,
        project_dir=str(Path(config.output_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(config.seed)
    check_config(config)
    check_output_dir(config, Path(config.output_dir))
    if config.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        warn_if_bf16_is_slow("mixed_precision: bf16")
    return accelerator


def load_data(config: TrainingConfig) -> DatasetDict:
    if config.dataset == "synthetic":
        return make_synthetic_dataset(**{"seed": config.seed, **config.synthetic})
    if not os.path.exists(config.dataset) and "/" not in config.dataset:
        raise FileNotFoundError(f"dataset {config.dataset!r}: no such folder or file, and not a Hub dataset name.")
    return load_detection_dataset(
        config.dataset, format=config.dataset_format, val_fraction=config.val_fraction, split_seed=config.split_seed,
        group_by=config.group_by,
    )  # fmt: skip


def load_splits(config: TrainingConfig, accelerator: Accelerator) -> DatasetDict:
    """The dataset (converted once, by the main process first), checked to hold the train and eval splits."""
    with accelerator.main_process_first():
        dataset = load_data(config)
    for split in (config.train_split, config.eval_split):
        if split not in dataset:
            raise ValueError(f"split {split!r} is not in the dataset (splits: {list(dataset)})")
    return dataset


def build_model(config: TrainingConfig, class_names: list[str]) -> tuple[Any, Any]:
    """The model and image processor; the processor resizes at inference as the evaluation does."""
    model, processor = build_detector(config, class_names)
    set_input_size(processor, config.scales, config.max_size)  # fixed-size processors (RT-DETR's) get a square
    return model, processor


def prepare_outputs(config: TrainingConfig, accelerator: Accelerator, dataset: DatasetDict, model: Any) -> None:
    """Main process: the output folder made ready (see `prepare_output_dir`) and the run announced."""
    if accelerator.is_main_process:
        prepare_output_dir(config, Path(config.output_dir))
        logger.info(
            "%d train / %d eval images, %d classes; %.1fM parameters (%.1fM trainable)",
            len(dataset[config.train_split]),
            len(dataset[config.eval_split]),
            len(class_names_of(dataset[config.train_split])),
            sum(p.numel() for p in model.parameters()) / 1e6,
            sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        )
    accelerator.wait_for_everyone()  # the leftovers of killed saves are gone before anyone saves


# -- optimizer, schedule, resume ------------------------------------------------------------------------------------


def prepare_training(
    config: TrainingConfig, accelerator: Accelerator, dataset: DatasetDict, model: Any, processor: Any
) -> Run:
    """Loaders, optimizer, schedule and EMA, prepared by Accelerate and registered for checkpointing, then the
    checkpoint to resume from loaded and the trackers, train log and progress bar started."""
    train_loader, train_transform = train_dataloader(dataset[config.train_split], processor, config)
    eval_loader = eval_dataloader(
        dataset[config.eval_split], processor, config.per_device_eval_batch_size, config.num_workers, config.seed
    )
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes * config.gradient_accumulation_steps))
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    # Counted in optimizer steps and stepped by the loop once per optimizer step. Not prepared: Accelerate steps a
    # prepared scheduler once per process at every optimizer step, which would squeeze the schedule N-fold.
    scheduler = build_scheduler(optimizer, config, total_steps, steps_per_epoch)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(scheduler)
    ema = None
    if config.ema_decay:
        ema = ModelEma(accelerator.unwrap_model(model), config.ema_decay)
        accelerator.register_for_checkpointing(ema)
    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint:
        checkpoint = find_checkpoint(config.resume_from_checkpoint, output_dir)
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state.global_step, state.epoch)
    if config.report_to:
        accelerator.init_trackers("detr_hf", config={k: str(v) for k, v in config.to_dict().items()})
    train_log = TrainLog(output_dir / "train_log.jsonl", state.global_step, accelerator.is_main_process)
    return Run(
        config=config,
        accelerator=accelerator,
        model=model,
        processor=processor,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        train_transform=train_transform,
        eval_loader=eval_loader,
        ground_truth=dataset[config.eval_split],
        state=state,
        ema=ema,
        train_log=train_log,
        total_steps=total_steps,
        started=time.perf_counter() - state.train_seconds,
        last_eval_time=time.perf_counter(),
        progress=TrainProgress(config, total_steps, state, accelerator.is_local_main_process),
    )


# -- train ------------------------------------------------------------------------------------------------------


def train_epoch(run: Run) -> None:
    """One pass over the training data (its rest, when resumed mid-epoch), then the epoch's evaluation; sets
    `run.stop` when the run is out of steps or time, or stops early."""
    config, state = run.config, run.state
    run.train_loader.set_epoch(state.epoch)
    run.train_transform.epoch = state.epoch
    batches = run.train_loader
    if state.step_in_epoch:
        batches = run.accelerator.skip_first_batches(run.train_loader, state.step_in_epoch)
    for batch in batches:
        step = train_step(config, run.accelerator, run.model, run.optimizer, run.scheduler, batch, state)
        state.step_in_epoch += 1
        if step is not None:  # not accumulating gradients, nor skipped
            after_optimizer_step(run, step)
            if run.stop:
                return
    state.epoch += 1
    state.step_in_epoch = 0
    if state.epoch % config.eval_every_epochs == 0 and state.epoch < config.num_epochs:
        evaluate(run)
        if config.early_stopping_patience and state.evals_without_improvement >= config.early_stopping_patience:
            logger.info(
                "early stopping: no %s improvement in %d evaluations",
                config.metric_for_best_model,
                state.evals_without_improvement,
            )
            run.stop = True


def after_optimizer_step(run: Run, step: StepResult) -> None:
    """Counts the step; updates the EMA; logs; saves a checkpoint, decides (with every process) whether to stop, and
    evaluates when `eval_every_minutes` have passed."""
    config, accelerator, state = run.config, run.accelerator, run.state
    state.global_step += 1
    run.recent_losses.append(step.outputs.loss)
    if run.ema is not None:
        run.ema.update(accelerator.unwrap_model(run.model))
    log_step(config, accelerator, state, step, run.train_log, run.progress)
    state.train_seconds = time.perf_counter() - run.started
    run.progress.update(state)
    every = config.checkpoint_every_steps
    if every and config.save_total_limit != 0 and state.global_step % every == 0:
        save_checkpoint(accelerator, run.output_dir, state, config.save_total_limit)
    out_of_time = config.max_train_minutes and state.train_seconds > 60 * config.max_train_minutes
    run.stop = any_process(accelerator, bool(out_of_time or state.global_step >= run.total_steps))
    if run.stop and stopped_by_time_limit(config, state, run.total_steps):
        run.time_limited = True
        logger.warning(time_limit_message(config, state, run.total_steps))
    timed_eval = config.eval_every_minutes and time.perf_counter() - run.last_eval_time > 60 * config.eval_every_minutes
    if timed_eval and not run.stop:
        evaluate(run)
        run.last_eval_time = time.perf_counter()


# -- evaluate -----------------------------------------------------------------------------------------------------


def evaluate(run: Run, predictions: Path | None = None) -> dict[str, Any] | None:
    """COCO metrics of the evaluated model (the EMA's when enabled), printed and logged; the best model so far is
    saved to `best/`; `predictions`: also write the detections there. The metrics on the main process, else None."""
    config, accelerator, state = run.config, run.accelerator, run.state
    if config.tiling:  # full images, by sliced inference
        metrics, evaluator = evaluate_sliced(run.eval_model, run.processor, run.ground_truth, config, accelerator)
    else:
        budget = query_budget(accelerator.unwrap_model(run.eval_model).config)  # maxDets above 100 for dense scenes
        metrics, evaluator = evaluate_detector(
            run.eval_model, run.processor, run.eval_loader, run.ground_truth, accelerator, max_detections=budget
        )
    run.evaluator = evaluator
    if predictions is not None and accelerator.is_main_process:
        predictions.write_text(json.dumps(evaluator.coco_results()), encoding="utf-8")
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
        model = accelerator.unwrap_model(run.eval_model)
        save_model_atomically(accelerator, model, run.processor, run.output_dir / "best")
    return metrics


# -- finish -------------------------------------------------------------------------------------------------------


def finish(run: Run) -> dict[str, Any]:
    """The final evaluation (its detections to predictions.json), then the saved outputs; ends the trackers."""
    accelerator, state = run.accelerator, run.state
    run.progress.close()
    run.train_log.close()
    state.train_seconds = time.perf_counter() - run.started
    accelerator.wait_for_everyone()
    final = run.ema.module if run.ema is not None else accelerator.unwrap_model(run.model)
    metrics = evaluate(run, run.output_dir / "predictions.json")
    results = save(run, final, metrics)
    if accelerator.is_main_process:
        print(results_summary(run.output_dir, metrics, results["train"]), flush=True)
    accelerator.wait_for_everyone()  # no process leaves while another may still need it
    accelerator.end_training()
    return results


def save(run: Run, model: Any, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Saves the model (every process, see `save_model_atomically`), then on the main process the processor, metrics,
    curves and model card, and pushes them when asked. A failure on any process stops every process with the error."""
    accelerator, state, output_dir = run.accelerator, run.state, run.output_dir
    results: dict[str, Any] = {}
    train_results = {
        "train_seconds": round(state.train_seconds, 2),
        "steps": state.global_step,
        "epochs": round(state.epoch + state.step_in_epoch / max(1, len(run.train_loader)), 3),
        "skipped_steps": state.skipped_steps,
        "num_processes": accelerator.num_processes,
        "final_loss": run.recent_losses.mean(accelerator),  # the mean of the last steps' losses
        "final_loss_steps": len(run.recent_losses.values),
        "stopped_by_time_limit": run.time_limited,
    }

    def write() -> None:
        model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process)
        if accelerator.is_main_process:
            write_outputs(run, model, metrics, train_results)
            results.update(eval=metrics, train=train_results)

    on_all_processes(accelerator, f"saving the model to {output_dir}", write)
    return results


def write_outputs(run: Run, model: Any, metrics: dict[str, Any], train_results: dict[str, Any]) -> None:
    config, output_dir = run.config, run.output_dir
    if config.operating_point_report:  # docs/reports.md
        report_after_training(output_dir, model, run.processor, run.ground_truth, run.evaluator)
    run.processor.save_pretrained(output_dir)
    (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (output_dir / "train_results.json").write_text(json.dumps(train_results, indent=2), encoding="utf-8")
    plot_history(run.state, output_dir / "loss_curve.png")
    save_prediction_examples(model, run.processor, run.ground_truth, output_dir / PREDICTION_EXAMPLES)
    command = "accelerate launch recipes/finetune.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_model_card(
        output_dir, config, metrics, command, model.config.id2label, train_results, model.config.model_type
    )
    if config.push_to_hub:
        push_to_hub(config, output_dir)


def push_to_hub(config: TrainingConfig, output_dir: Path) -> None:
    """Uploads the run's outputs, without its checkpoints, to `hub_model_id` (default: the folder's name)."""
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
