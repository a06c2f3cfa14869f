"""Fine-tune a DETR-family detector with Accelerate: one CPU, one GPU or many processes, nothing to write by hand.

    accelerate launch recipes/finetune.py          # = --config recipes/configs/quickstart.yaml
    accelerate launch recipes/finetune.py --config recipes/configs/aerial.yaml --model facebook/detr-resnet-50 \\
        --dataset path/to/yolo_export --output_dir runs/aerial --push_to_hub true
    # several CPU processes (accelerate's own --cpu launcher starts only one without MPI):
    accelerate launch --multi_gpu --num_processes 2 recipes/finetune.py --config ... --cpu true

Every option is in `detr_hf.training.TrainingConfig`; `--key value` overrides the YAML file, unknown keys fail.
Outputs in `output_dir`: the model and image processor, README.md (model card), eval_results.json,
train_results.json, loss_curve.png, resolved_config.yaml, checkpoints/ (Accelerate states, for --resume_from_checkpoint).
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
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detr_hf.data import build_transforms, class_names_of, load_detection_dataset, make_synthetic_dataset
from detr_hf.data.transforms import make_collate_fn, make_transform_fn
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


class TrainState:
    """What a checkpoint must remember beyond model, optimizer, scheduler and RNGs: where the run is in the data."""

    def __init__(self) -> None:
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.train_seconds, self.best_metric, self.evals_without_improvement = 0.0, -math.inf, 0
        self.skipped_steps, self.loss_history, self.eval_history = 0, [], []

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class SeededTransform:
    """Augments a batch with a seed derived from (run seed, epoch, image ids): the same data position always gets the
    same augmentation, so a resumed run replays exactly what an uninterrupted one would have seen."""

    def __init__(self, transform, pipeline, seed: int):
        self.transform, self.pipeline, self.seed, self.epoch = transform, pipeline, seed, 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.pipeline is not None:
            key = f"{self.seed}/{self.epoch}/{batch['image_id']}".encode()
            self.pipeline.set_random_seed(zlib.crc32(key))
        return self.transform(batch)


def load_data(config: TrainingConfig):
    if config.dataset == "synthetic":
        return make_synthetic_dataset(**{"seed": config.seed, **config.synthetic})
    if not os.path.exists(config.dataset) and "/" not in config.dataset:
        raise FileNotFoundError(f"dataset {config.dataset!r}: no such folder or file, and not a Hub dataset name.")
    return load_detection_dataset(
        config.dataset, format=config.dataset_format, val_fraction=config.val_fraction, seed=config.seed
    )


def make_loaders(config: TrainingConfig, dataset, processor):
    preset = "eval" if config.augmentation == "none" else config.augmentation  # "none": resize only
    train_pipeline = build_transforms(preset, config.scales, config.max_size, seed=config.seed)
    train_transform = SeededTransform(make_transform_fn(train_pipeline), train_pipeline, config.seed)
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


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainState, limit: int) -> None:
    """Accelerate state saved under a temporary name and renamed when complete, so a kill never leaves a half one."""
    folder = output_dir / "checkpoints" / f"step-{state.global_step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        for old in sorted(p for p in folder.parent.glob("step-*") if not p.name.endswith(".partial"))[:-limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def find_checkpoint(spec: str, output_dir: Path) -> Path:
    if spec != "latest":
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint={spec!r} is not a folder")
        return Path(spec)
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
    with accelerator.main_process_first():
        dataset = load_data(config)
    for split in (config.train_split, config.eval_split):
        if split not in dataset:
            raise ValueError(f"split {split!r} is not in the dataset (splits: {list(dataset)})")
    class_names = class_names_of(dataset[config.train_split])
    model, processor = build_detector(config, class_names)
    processor.size = {"shortest_edge": max(config.scales), "longest_edge": config.max_size}  # inference = eval preset
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.save(output_dir / "resolved_config.yaml")
        logger.info(
            "%d train / %d eval images, %d classes; %.1fM parameters (%.1fM trainable)",
            len(dataset[config.train_split]),
            len(dataset[config.eval_split]),
            len(class_names),
            sum(p.numel() for p in model.parameters()) / 1e6,
            sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        )
    train_loader, eval_loader, train_transform = make_loaders(config, dataset, processor)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes * config.gradient_accumulation_steps))
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, config, total_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    state = TrainState()
    accelerator.register_for_checkpointing(state)
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
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                not_finite = accelerator.reduce((~torch.isfinite(loss.detach())).float(), "sum")
                if not_finite > 0:  # every process skips together, or distributed training would hang
                    state.skipped_steps += 1
                    logger.warning("step %d: non-finite loss %s, step skipped", state.global_step, loss.item())
                    optimizer.zero_grad()
                    state.step_in_epoch += 1
                    continue
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.step_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            if state.global_step % config.logging_steps == 0 or state.global_step == 1:
                value = accelerator.reduce(loss.detach(), "mean").item()
                state.loss_history.append((state.global_step, value))
                progress.set_postfix(loss=f"{value:.3f}", lr=f"{scheduler.get_last_lr()[-1]:.1e}")
                terms = {
                    k: accelerator.reduce(v.detach(), "mean").item()
                    for k, v in outputs.loss_dict.items()
                    if "_" in k and not k[-1].isdigit()
                }
                accelerator.log(
                    {"train/loss": value, **{f"train/{k}": v for k, v in terms.items()}}, step=state.global_step
                )
            state.train_seconds = time.perf_counter() - started
            if config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0:
                save_checkpoint(accelerator, output_dir, state, config.save_total_limit)
            out_of_time = config.max_train_minutes and state.train_seconds > 60 * config.max_train_minutes
            stop = bool(
                accelerator.reduce(
                    torch.tensor(
                        float(bool(out_of_time or state.global_step >= total_steps)), device=accelerator.device
                    ),
                    "sum",
                )
            )
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
    state.train_seconds = time.perf_counter() - started
    final = unwrap_for_saving(accelerator, model, ema)
    metrics = run_eval(
        config, eval_model, processor, eval_loader, ground_truth, accelerator, state, output_dir / "predictions.json"
    )
    results = finish(config, accelerator, final, processor, metrics, state, output_dir, len(train_loader))
    accelerator.wait_for_everyone()  # no process leaves while another may still need it
    accelerator.end_training()
    return results


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
        # every process calls save_pretrained (transformers may gather across them); only the main one writes
        best = Path(config.output_dir) / "best"
        accelerator.unwrap_model(model).save_pretrained(best, is_main_process=accelerator.is_main_process)
        if accelerator.is_main_process:
            processor.save_pretrained(best)
    return metrics


def unwrap_for_saving(accelerator: Accelerator, model, ema):
    accelerator.wait_for_everyone()
    return ema.module if ema is not None else accelerator.unwrap_model(model)


def finish(
    config, accelerator, model, processor, metrics, state: TrainState, output_dir: Path, batches_per_epoch: int
) -> dict[str, Any]:
    """Saves the model, processor, metrics, curves and model card (main process), and pushes them when asked."""
    model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process)  # on every process, see run_eval
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    processor.save_pretrained(output_dir)
    train_results = {
        "train_seconds": round(state.train_seconds, 2),
        "steps": state.global_step,
        "epochs": round(state.epoch + state.step_in_epoch / max(1, batches_per_epoch), 3),
        "skipped_steps": state.skipped_steps,
        "num_processes": accelerator.num_processes,
        "final_loss": state.loss_history[-1][1] if state.loss_history else None,
    }
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
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), ignore_patterns=["checkpoints/*", "best/*"])
        logger.info("pushed to https://huggingface.co/%s", repo_id)
    return {"eval": metrics, "train": train_results}


if __name__ == "__main__":
    main()
