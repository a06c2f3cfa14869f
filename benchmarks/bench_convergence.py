"""Convergence from scratch: COCO mAP against wall-clock time for DETR variants trained with one loop and one budget.

Every variant trains on the same generated shapes (detr_hf.data.synthetic defaults: 128x128, 1-6 objects of 3 classes,
10-44 px; 2000 training images, preloaded as tensors, no augmentation) with the same batches in the same order
(batch 16, AdamW 1e-3, weight decay 1e-4, gradient clipping 0.1), on `--threads` CPU threads, for `--minutes` of
training time each; COCO mAP / AP50 / AP_small on a fixed validation split are measured every `--eval-every` minutes
(the clock stops during evaluation). Each variant runs in its own subprocess, so its peak resident memory is its own.

Variants:
- `detr_hf-detr`: this package's vanilla DETR (softmax + "no object", auxiliary losses);
- `hf-detr`: transformers' DetrForObjectDetection, the same size, auxiliary loss on (its BatchNorm is always frozen);
- `hf-rtdetr`: transformers' RTDetrForObjectDetection (ResNet 32-256 channels, 3 levels, 50 queries, 50 denoising,
  `freeze_backbone_batch_norms=False` like the others: a backbone trained from scratch needs its BatchNorm);
- `dino_like`: `DeformableDetrConfig.dino_like()` sized near RT-DETR's parameter count;
- `hf-rtdetrv2`, `hf-dfine`: transformers' RT-DETRv2 and D-FINE built as the recipe builds them (`model_preset:
  rt_detr_v2 | d_fine` with `model_overrides`, through detr_hf's family adapter), random init, on hf-rtdetr's ResNet
  and sizes, so they differ from it only in decoder and loss;
- ablations, not run by default: `dino_like-no-denoising`; `deformable` (box refinement and focal loss only: no
  two-stage, anchors or denoising); `deformable-softmax` (the same without focal loss).

    python benchmarks/bench_convergence.py --minutes 10 --eval-every 1 [--variants dino_like hf-rtdetr] [--out DIR]

Writes `convergence.json`, `convergence_time.png` and `convergence_images.png` under `--out`, and prints a markdown
table. Timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/

VARIANTS = ("detr_hf-detr", "hf-detr", "hf-rtdetr", "dino_like", "hf-rtdetrv2", "hf-dfine")
# every backbone here trains from scratch: all stages, BatchNorm with batch statistics (transformers' DETR can't)
FROM_SCRATCH = dict(frozen_backbone_stages=-1, freeze_backbone_batch_norms=False)
# the preset with parts of DINO taken away: what each part is worth
PLAIN_DEFORMABLE = dict(two_stage=False, anchor_queries=False, mixed_query_selection=False, look_forward_twice=False)
ABLATIONS = {
    "dino_like": {},
    "dino_like-no-denoising": dict(num_denoising=0),
    "deformable": dict(**PLAIN_DEFORMABLE, num_denoising=0),
    "deformable-softmax": dict(**PLAIN_DEFORMABLE, num_denoising=0, use_focal_loss=False),
}
OPTIONAL_VARIANTS = tuple(name for name in ABLATIONS if name not in VARIANTS)
IMAGE_SIZE = 128
RESNET = dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic")
# transformers families trained through the recipe's model builder: model_preset -> model_overrides
FAMILY_VARIANTS = {"hf-rtdetrv2": "rt_detr_v2", "hf-dfine": "d_fine"}
FAMILY_SIZE = dict(
    backbone_config={"model_type": "rt_detr_resnet", **RESNET, "out_features": ["stage2", "stage3", "stage4"]},
    encoder_in_channels=[64, 128, 256],
    decoder_in_channels=[128, 128, 128],
    d_model=128,
    encoder_hidden_dim=128,
    encoder_ffn_dim=512,
    decoder_ffn_dim=512,
    decoder_layers=3,
    num_queries=50,
    num_denoising=50,
    freeze_backbone_batch_norms=False,
)
DETR_SIZE = dict(
    d_model=128, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=512, decoder_ffn_dim=512, num_queries=30
)
# One encoder layer with an FFN as wide as RT-DETR's: it runs on every feature token, the decoder only on the queries.
# Single-thread 10-minute runs at 1e-3: mAP 0.417 with one encoder layer against 0.284 with two, 34% less per step.
DEFORMABLE_SIZE = dict(
    d_model=192, encoder_layers=1, decoder_layers=3, encoder_ffn_dim=512, decoder_ffn_dim=1024, num_queries=50
)


def build(variant: str, id2label: dict[int, str]) -> tuple[torch.nn.Module, bool]:
    """The model and whether its classification is sigmoid (focal) rather than softmax with "no object"."""
    import transformers

    from detr_hf import DeformableDetrConfig, DeformableDetrForObjectDetection, DetrConfig, DetrForObjectDetection

    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    if variant in FAMILY_VARIANTS:
        from detr_hf.training import TrainingConfig, build_detector

        config = TrainingConfig(model_preset=FAMILY_VARIANTS[variant], model_overrides=FAMILY_SIZE)
        return build_detector(config, [id2label[i] for i in sorted(id2label)])[0], True
    if variant == "detr_hf-detr":
        backbone = {"model_type": "resnet", **RESNET, "out_features": ["stage4"]}
        config = DetrConfig(backbone_config=backbone, **FROM_SCRATCH, **DETR_SIZE, **labels)
        return DetrForObjectDetection(config), False
    if variant == "hf-detr":
        backbone = transformers.ResNetConfig(**RESNET, out_features=["stage4"])
        config = transformers.DetrConfig(backbone_config=backbone, auxiliary_loss=True, **DETR_SIZE, **labels)
        return transformers.DetrForObjectDetection(config), False
    if variant == "hf-rtdetr":
        backbone = transformers.RTDetrResNetConfig(**RESNET, out_features=["stage2", "stage3", "stage4"])
        config = transformers.RTDetrConfig(
            backbone_config=backbone,
            encoder_in_channels=[64, 128, 256],
            decoder_in_channels=[128, 128, 128],
            d_model=128,
            encoder_hidden_dim=128,
            encoder_ffn_dim=512,
            decoder_ffn_dim=512,
            decoder_layers=3,
            num_queries=50,
            num_denoising=50,
            freeze_backbone_batch_norms=False,
            **labels,
        )
        return transformers.RTDetrForObjectDetection(config), True
    backbone = {"model_type": "resnet", **RESNET, "out_features": ["stage2", "stage3", "stage4"]}
    options = {**FROM_SCRATCH, **ABLATIONS[variant]}
    config = DeformableDetrConfig.dino_like(backbone_config=backbone, **DEFORMABLE_SIZE, **options, **labels)
    return DeformableDetrForObjectDetection(config), config.use_focal_loss


def _preload(dataset, processor) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    from detr_hf.evaluation import eval_dataloader

    pixels, labels = [], []
    for batch in eval_dataloader(dataset, processor, batch_size=64):
        pixels.append(batch["pixel_values"])
        labels.extend({"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in batch["labels"])
    return torch.cat(pixels), labels


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """Trains one variant for the budget, evaluating on the way; returns its curve and costs."""
    from detr_hf import DetrImageProcessor
    from detr_hf.data.synthetic import make_synthetic_dataset
    from detr_hf.evaluation import eval_dataloader, evaluate_detector

    torch.set_num_threads(args.threads)
    data = make_synthetic_dataset(num_train=args.num_train, num_val=args.num_val, image_size=IMAGE_SIZE, seed=0)
    names = data["train"].features["objects"]["category"].feature.names
    model, focal = build(variant, dict(enumerate(names)))
    size = {"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}
    processor = DetrImageProcessor(size=size, use_focal_loss=focal)
    train_pixels, train_labels = _preload(data["train"], processor)
    val_loader = eval_dataloader(data["validation"], processor, batch_size=32)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    order = torch.Generator().manual_seed(0)
    budget, every = args.minutes * 60, args.eval_every * 60
    curve, trained, steps, next_eval = [], 0.0, 0, every

    def evaluate(scheduled: float) -> None:
        metrics, _ = evaluate_detector(model, processor, val_loader, data["validation"], show_progress=False)
        point = {"scheduled": scheduled, "seconds": trained, "steps": steps, "images": steps * args.batch_size}
        point.update({k: float(metrics[k]) for k in ("map", "map_50", "map_small")})
        curve.append(point)
        print(f"{variant}: {trained / 60:5.1f} min, {steps} steps, mAP {point['map']:.3f} AP50 {point['map_50']:.3f}")

    model.train()
    while trained < budget:
        indices = torch.randint(len(train_labels), (args.batch_size,), generator=order)
        start = time.perf_counter()
        loss = model(pixel_values=train_pixels[indices], labels=[train_labels[i] for i in indices]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        trained += time.perf_counter() - start
        steps += 1
        if trained >= next_eval:
            evaluate(min(next_eval, budget))
            model.train()
            next_eval += every
    if not curve or curve[-1]["steps"] != steps:
        evaluate(budget)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "parameters": parameters,
        "seconds_per_step": trained / steps,
        "peak_memory_mib": peak_mib,
        "curve": curve,
    }


def _at(curve: list[dict], seconds: float, key: str) -> float:
    """`key` at the evaluation scheduled for `seconds` of training (or the last one before)."""
    reached = [p[key] for p in curve if p["scheduled"] <= seconds]
    return reached[-1] if reached else float("nan")


def _time_to(curve: list[dict], key: str, target: float) -> str:
    hit = [p["scheduled"] for p in curve if p[key] >= target]
    return f"{hit[0] / 60:.1f}" if hit else "-"


def report(results: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convergence.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    for x_key, label, name in (("seconds", "training minutes", "time"), ("images", "images seen", "images")):
        figure, axis = plt.subplots(figsize=(6, 4))
        for result in results:
            xs = [p[x_key] / (60 if x_key == "seconds" else 1) for p in result["curve"]]
            axis.plot(xs, [p["map"] for p in result["curve"]], marker="o", label=result["variant"])
        axis.set_xlabel(label)
        axis.set_ylabel("COCO mAP (validation)")
        axis.set_title(f"From scratch on synthetic shapes, {args.threads} CPU threads")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / f"convergence_{name}.png", dpi=120)
        plt.close(figure)
    budget = args.minutes * 60
    print(f"\n{machine_line()}")
    print(f"{args.threads} threads, batch {args.batch_size}, AdamW {args.lr}, {args.minutes} min per variant")
    print("| variant | parameters (M) | s / step | peak memory (MiB) | mAP | AP50 | AP_small | minutes to AP50 0.5 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        curve = r["curve"]
        print(
            f"| {r['variant']} | {r['parameters'] / 1e6:.2f} | {r['seconds_per_step']:.3f} | "
            f"{r['peak_memory_mib']:.0f} | {_at(curve, budget, 'map'):.3f} | {_at(curve, budget, 'map_50'):.3f} | "
            f"{_at(curve, budget, 'map_small'):.3f} | {_time_to(curve, 'map_50', 0.5)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per variant")
    parser.add_argument("--eval-every", type=float, default=2.0, help="minutes of training between evaluations")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + OPTIONAL_VARIANTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, the same for every variant")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/convergence")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child, args)), flush=True)
        return
    results = []
    for variant in args.variants:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", variant]
        process = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        for line in process.stdout.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT ") :]))
            else:
                print(line, flush=True)
    report(results, args)


if __name__ == "__main__":
    main()
