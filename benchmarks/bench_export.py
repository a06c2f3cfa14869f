"""ONNX export: latency and peak memory of eager PyTorch against ONNX Runtime fp32/int8, and each artifact's accuracy.

Speed (random weights, no download), batch 1, `--threads` threads, each case in its own process (peak RSS from
the first warm-up call on: weights and activations): transformers' DETR-R50 eager, ours eager fp32, ours ONNX
Runtime fp32 and int8, at 800x1066; ours eager and ONNX Runtime fp32/int8 for the dino_like preset (R50) at 640x640.
Median of `--repeats` calls after 2 warm-ups. The int8 graphs are converted from the fp32 one, not traced again:
`int8` as `detr-hf export --precision int8` (MatMul/Gemm), and `int8 (+Conv)` with the convolutions quantized too.

Accuracy: a small DETR and a small dino_like trained for `--train-steps` steps on synthetic shapes, exported at fp32,
fp16 and int8 and gated with the validation split: max |Δ| of logits/boxes and the mAP drop of each artifact.

    cd benchmarks && python bench_export.py [--threads 2] [--repeats 5] [--train-steps 300]     # quiet: ~12 min
    cd benchmarks && python bench_export.py --quick                                           # smoke run: ~3 min
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/

SIZES = {"detr": (800, 1066), "dino": (640, 640)}


def build(family: str, impl: str = "ours") -> torch.nn.Module:
    """DETR-R50 (ours or transformers', same random weights) or dino_like R50, in eval mode."""
    if family == "detr":
        from bench_model_speed import build as build_detr

        return build_detr(impl).eval()
    from detr_hf import DeformableDetrConfig, DeformableDetrForObjectDetection
    from detr_hf.configuration_detr import resnet_config_for

    torch.manual_seed(0)
    backbone = resnet_config_for("resnet50", out_features=["stage2", "stage3", "stage4"])
    return DeformableDetrForObjectDetection(
        DeformableDetrConfig.dino_like(backbone_config=backbone, num_labels=91)
    ).eval()


def run_case(family: str, runtime: str, folder: str, threads: int, repeats: int, quick: bool) -> dict:
    """One case, in this process: the median seconds per call and the peak RSS."""
    torch.set_num_threads(threads)
    height, width = SIZES[family] if not quick else (320, 426)
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, height, width, dtype=torch.long)
    if runtime in ("transformers", "eager"):
        model = build(family, "transformers" if runtime == "transformers" else "ours")

        def call():
            with torch.no_grad():
                model(pixel_values=pixels, pixel_mask=mask)
    else:
        from detr_hf.onnx import OnnxDetector

        detector = OnnxDetector(Path(folder) / f"{family}_{runtime}", threads=threads)

        def call():
            detector.run(pixels.numpy(), mask.numpy())

    reset_peak_memory()  # building the models (transformers' one too, for ours) is not what is measured
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mb": peak_memory_mb()}


def reset_peak_memory() -> None:
    """Starts the peak-RSS count again (Linux: VmHWM); elsewhere the process's whole peak is reported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Peak RSS since :func:`reset_peak_memory` (VmHWM), or since the start of the process."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def convert_folder(fp32: Path, target: Path, precision: str) -> None:
    """A copy of the fp32 export folder `fp32` at `precision` (converted from its graph, not traced again)."""
    from detr_hf.onnx.precision import INT8_OPS, convert_precision, to_int8

    shutil.copytree(fp32, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.onnx", "export_report.json"))
    if precision == "int8conv":
        to_int8(fp32 / "model.onnx", target / "model.onnx", op_types=[*INT8_OPS, "Conv"])
    else:
        convert_precision(fp32 / "model.onnx", target / "model.onnx", precision)


def export_speed_artifacts(folder: Path, quick: bool) -> None:
    from detr_hf import DetrImageProcessor
    from detr_hf.onnx import export_folder

    for family in ("detr", "dino"):
        size = SIZES[family] if not quick else (320, 426)
        export_folder(build(family), DetrImageProcessor(), folder / f"{family}_ort-fp32", image_size=size)
        convert_folder(folder / f"{family}_ort-fp32", folder / f"{family}_ort-int8", "int8")
        # int8 convolutions too (ConvInteger): does quantizing the backbone pay on this CPU?
        convert_folder(folder / f"{family}_ort-fp32", folder / f"{family}_ort-int8conv", "int8conv")


def speed_table(args: argparse.Namespace, folder: Path) -> list[str]:
    cases = [("detr", "transformers"), ("detr", "eager"), ("detr", "ort-fp32"), ("detr", "ort-int8"),
             ("detr", "ort-int8conv"), ("dino", "eager"), ("dino", "ort-fp32"), ("dino", "ort-int8"),
             ("dino", "ort-int8conv")]  # fmt: skip
    rows = ["| model | size | runtime | latency (s) | peak RSS (MB) |", "|---|---|---|---|---|"]
    for family, runtime in cases:
        command = [sys.executable, __file__, "--case", family, runtime, str(folder), "--threads", str(args.threads),
                   "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        size = "x".join(map(str, SIZES[family] if not args.quick else (320, 426)))
        name = "DETR-R50" if family == "detr" else "dino_like R50"
        label = {
            "transformers": "transformers eager",
            "eager": "detr_hf eager",
            "ort-int8conv": "ort int8 (+Conv)",
        }.get(runtime, runtime.replace("-", " "))
        rows.append(f"| {name} | {size} | {label} | {result['seconds']:.3f} | {result['peak_mb']:.0f} |")
        print(rows[-1], flush=True)
    return rows


def train_small(family: str, dataset, steps: int) -> tuple:
    """A small DETR or dino_like (ResNet-18) trained `steps` steps on the synthetic train split, with its processor."""
    from detr_hf import (
        DeformableDetrConfig,
        DeformableDetrForObjectDetection,
        DetrConfig,
        DetrForObjectDetection,
        DetrImageProcessor,
    )
    from detr_hf.configuration_detr import resnet_config_for
    from detr_hf.evaluation import eval_dataloader

    torch.manual_seed(0)
    names = dataset["train"].features["objects"]["category"].feature.names
    small = dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=256, decoder_ffn_dim=256,
                 num_queries=20, num_labels=len(names), id2label=dict(enumerate(names)))  # fmt: skip
    if family == "detr":
        config = DetrConfig(backbone_config=resnet_config_for("resnet18"), **small)
        model, processor = (
            DetrForObjectDetection(config),
            DetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 128}),
        )
    else:
        backbone = resnet_config_for("resnet18", out_features=["stage2", "stage3", "stage4"])
        config = DeformableDetrConfig.dino_like(backbone_config=backbone, **small)
        model = DeformableDetrForObjectDetection(config)
        processor = DetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 128}, use_focal_loss=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    model.train()
    step = 0
    while step < steps:
        for batch in eval_dataloader(dataset["train"], processor, batch_size=8, seed=step):
            loss = model(
                pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
            ).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            step += 1
            if step >= steps:
                break
    return model.eval(), processor


def accuracy_table(args: argparse.Namespace, folder: Path) -> list[str]:
    from detr_hf.data import make_synthetic_dataset
    from detr_hf.onnx import ExportGateError, export_folder, gate_artifact

    dataset = make_synthetic_dataset(num_train=64 if args.quick else 512, num_val=16 if args.quick else 100,
                                     image_size=128, seed=0)  # fmt: skip
    rows = ["| model | precision | max \\|Δlogit\\| | max \\|Δbox\\| | mAP model | mAP artifact | ΔmAP | gate |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for family in ("detr", "dino"):
        start = time.perf_counter()
        model, processor = train_small(family, dataset, args.train_steps)
        print(f"trained {family} {args.train_steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
        for precision in ("fp32", "fp16", "int8"):
            out = folder / f"acc_{family}_{precision}"
            if precision == "fp32":
                size = None if family == "detr" else (128, 128)
                settings = export_folder(model, processor, out, dynamic_batch=True, image_size=size)
            else:
                convert_folder(folder / f"acc_{family}_fp32", out, precision)
                settings = {**settings, "precision": precision}
            try:
                report, verdict = (
                    gate_artifact(model, out, precision, validation=dataset["validation"], settings=settings),
                    "pass",
                )
            except ExportGateError:
                report, verdict = json.loads((out / "export_report.json").read_text(encoding="utf-8")), "FAIL"
            v, d = report["validation"], report["max_abs_diff"]
            rows.append(f"| small {family} | {precision} | {d['logits']:.2e} | {d['pred_boxes']:.2e} | "
                        f"{v['model']['map']:.4f} | {v['artifact']['map']:.4f} | {-v['map_drop']:+.4f} | {verdict} |")  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat, 20 training steps")
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case[:2], args.case[2], args.threads, args.repeats, args.quick)))
        return
    if args.quick:
        args.repeats, args.train_steps = 1, 20
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_speed_artifacts(folder, args.quick)
        speed = speed_table(args, folder)
        accuracy = accuracy_table(args, folder)
    print("\n".join(["", *speed, "", *accuracy]))


if __name__ == "__main__":
    main()
