"""The quickstart's training step: where its time goes, and the current preset against the one it replaced.

Each configuration trains through the recipe's own pieces (`train_dataloader`, `build_detector`, AdamW over the
recipe's parameter groups) on the quickstart's data (synthetic 128 px shapes, batch 16): a few warm-up steps, then
`--steps` timed steps, split into waiting for the batch (loading, decoding, augmentation, collation: the data path on
the critical path with `num_workers: 0`) and the model's forward, backward and optimizer step. All configurations
run in this process, interleaved round by round, so they see the same machine load; ratios are against "before"
(the quickstart preset before issue 16: two encoder layers, data decoded every step).

    python benchmarks/bench_quickstart_step.py                       # ~2 minutes on a quiet 2-core machine
    python benchmarks/bench_quickstart_step.py --profile             # + torch.profiler's top operators per config
    python benchmarks/bench_quickstart_step.py --threads 1 --steps 10

Prints the machine, a table (seconds per step, data share, speed-up) and the expected `make quickstart` time at
the preset's step budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUICKSTART = ROOT / "recipes" / "configs" / "quickstart.yaml"
XEON_BEFORE_STEP = 0.88  # s a step of "before" on a quiet 2-core Intel Xeon 2.6 GHz without bf16 (issue 16)

# The quickstart before issue 16 (its model; it trained for 9 minutes of wall clock, 0.53 s a step on a Zen4).
BEFORE = dict(
    model_overrides=dict(
        backbone_config=dict(
            model_type="resnet",
            embedding_size=32,
            hidden_sizes=[32, 64, 128, 256],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            out_features=["stage2", "stage3", "stage4"],
        ),
        d_model=128,
        encoder_layers=2,
        decoder_layers=3,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        num_queries=30,
        frozen_backbone_stages=-1,
        freeze_backbone_batch_norms=False,
    ),
)


def load_config(overrides: dict):
    from detr_hf.training import TrainingConfig

    values = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    values.update(overrides)
    known = set(TrainingConfig.keys())
    values = {k: v for k, v in values.items() if k in known}
    return TrainingConfig(**values)


class Case:
    """One configuration's model, optimizer and endless batch iterator, stepped on demand."""

    def __init__(self, name: str, config, dataset, channels_last: bool = False):
        from detr_hf.data import class_names_of
        from detr_hf.training import build_detector, build_optimizer, train_dataloader

        self.name, self.config = name, config
        torch.manual_seed(config.seed)
        self.model, processor = build_detector(config, class_names_of(dataset["train"]))
        processor.size = {"shortest_edge": max(config.scales), "longest_edge": config.max_size}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = build_optimizer(self.model, config)
        loader = train_dataloader(dataset["train"], processor, config)[0]
        self.loader = loader
        self.batches = iter(loader)
        self.channels_last = channels_last
        self.data_seconds: list[float] = []
        self.step_seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # process CPU time: with 1 thread, the work itself even on a busy machine

    def next_batch(self) -> dict:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self, record: bool = True) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = self.next_batch()
        if self.channels_last:
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        loaded = time.perf_counter()
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        end = time.perf_counter()
        if record:
            self.data_seconds.append(loaded - start)
            self.step_seconds.append(end - start)
            self.cpu_seconds.append(time.process_time() - cpu_start)


def profile(case: Case, steps: int = 3) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            case.step(record=False)
    print(f"\n### {case.name}: top operators over {steps} steps (self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top operators of each config")
    parser.add_argument("--channels-last", action="store_true", help="also time the current preset channels-last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from detr_hf.data import make_synthetic_dataset

    current = load_config({})
    synthetic = {**current.synthetic, "num_train": 256, "num_val": 0}
    dataset = make_synthetic_dataset(**{"seed": current.seed, **synthetic})
    cases = [
        Case("before (2 encoder layers, decode every step)", load_config(BEFORE), dataset),
        Case("current quickstart.yaml", current, dataset),
    ]
    if args.channels_last:
        cases.append(Case("current, channels-last", current, dataset, channels_last=True))
    for case in cases:
        for _ in range(args.warmup):
            case.step(record=False)
    for _ in range(args.rounds):
        for case in cases:
            for _ in range(args.steps):
                case.step()
    if args.profile:
        for case in cases:
            profile(case)

    print(f"\n{machine_line()}, {args.threads} threads, bf16 native: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"{args.rounds} rounds of {args.steps} steps per configuration, interleaved; medians\n")
    print(
        "| configuration | parameters (M) | s / step | data s / step | data share | CPU s / step | speed-up vs before |"
    )
    print("|---|---|---|---|---|---|---|")
    reference = statistics.median(cases[0].step_seconds)
    for case in cases:
        step, data = statistics.median(case.step_seconds), statistics.median(case.data_seconds)
        cpu = statistics.median(case.cpu_seconds)
        parameters = sum(p.numel() for p in case.model.parameters()) / 1e6
        print(f"| {case.name} | {parameters:.2f} | {step:.3f} | {data:.4f} | {data / step:.0%} | {cpu:.3f} | "
              f"{reference / step:.2f}x |")  # fmt: skip
    cpu_ratio = statistics.median(cases[0].cpu_seconds) / statistics.median(cases[1].cpu_seconds)
    print(f"\nCPU time per step, before / current: {cpu_ratio:.2f}x (the work itself; wall time includes waiting)")
    steps = current.max_steps
    if steps:
        per_step = statistics.median(cases[1].step_seconds)
        print(f"quickstart: {steps} steps x {per_step:.3f} s = {steps * per_step / 60:.1f} min of training here")
        xeon = XEON_BEFORE_STEP * per_step / reference
        print(f"on the 2-core Xeon 2.6 GHz where 'before' took {XEON_BEFORE_STEP} s a step: ~{xeon:.2f} s a step, "
              f"{steps * xeon / 60:.1f} min of training (scaled by this run's ratio)")  # fmt: skip


if __name__ == "__main__":
    main()
