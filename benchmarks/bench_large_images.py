"""Large images, small objects: tiled training + sliced inference against resizing, and against SAHI.

Data: detr_hf.data.synthetic_scenes (1,536-2,048 px scenes, 50-300 shapes of 6-32 px in 3 classes, textured
backgrounds; deterministic). Model: a small DINO-like detector (1.1M parameters, from scratch, 100 queries), the same
initial weights in both arms.

1. Training with equal compute: the same number of steps, batches of the same pixel count (``--batch`` images of at
   most ``--size`` px a side): full scenes resized to ``--size`` px vs native-resolution ``--size`` px tiles
   (``tile_dataset``, read in ``tile_order``). Both evaluated on the full-resolution validation scenes, the first by
   plain inference (resized to ``--size``), the second by sliced inference. Wall-clock of both trainings reported.
2. Inference with the tiles model: plain, ``sliced_detection`` (batched tiles), SAHI's ``get_sliced_prediction``
   (our detector wrapped as a SAHI DetectionModel; batch 1 as SAHI runs by default, and batch ``--slice-batch``
   through the wrapper's native batching), the same tile size, overlap, merge (greedy NMM, IoS 0.5) and threshold;
   no full-image pass in either. Seconds per scene (image already decoded). Peak memory added by one inference on
   an already decoded 1,024 / 2,048 / 4,096 px image, each in a fresh process (VmHWM).
3. Dense scenes: 300 objects per scene, sliced detections scored with COCO maxDets 100 and maxDets 500.

    python benchmarks/bench_large_images.py [--quick] [--steps 1000] [--threads 2] [--out runs/bench_large_images]

``--quick`` (development, a few minutes): small scenes, few steps. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/

RESNET = dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic")
MODEL_SIZE = dict(d_model=96, encoder_layers=1, decoder_layers=3, encoder_ffn_dim=256, decoder_ffn_dim=512,
                  num_denoising=20)  # fmt: skip
MAX_DETS = 500
# --quick: a model small enough to run the whole script in minutes (its numbers mean nothing)
QUICK_RESNET = dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic")
QUICK_SIZE = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                  num_denoising=10)  # fmt: skip


def build_model(id2label: dict[int, str], num_queries: int, quick: bool = False) -> torch.nn.Module:
    from detr_hf import DeformableDetrConfig, DeformableDetrForObjectDetection

    torch.manual_seed(0)
    resnet, size = (QUICK_RESNET, QUICK_SIZE) if quick else (RESNET, MODEL_SIZE)
    backbone = {"model_type": "resnet", **resnet, "out_features": ["stage2", "stage3", "stage4"]}
    config = DeformableDetrConfig.dino_like(
        backbone_config=backbone, frozen_backbone_stages=-1, freeze_backbone_batch_norms=False,
        num_queries=num_queries, id2label=id2label, label2id={v: k for k, v in id2label.items()}, **size,
    )  # fmt: skip
    return DeformableDetrForObjectDetection(config)


def processor_for(size: int):
    from detr_hf import DetrImageProcessor

    return DetrImageProcessor(size={"shortest_edge": size, "longest_edge": size}, use_focal_loss=True)


def train(model, dataset, processor, args, sampler=None) -> float:
    """``args.steps`` AdamW steps on ``dataset`` (rows ready for the collator); returns the training seconds."""
    from torch.utils.data import DataLoader

    from detr_hf.data import make_collate_fn

    loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler, shuffle=sampler is None, drop_last=len(dataset) >= args.batch,
                        collate_fn=make_collate_fn(processor), generator=torch.Generator().manual_seed(0))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model.train()
    steps, start = 0, time.perf_counter()
    if not len(loader):
        raise ValueError(f"no training batch: {len(dataset)} rows")
    while steps < args.steps:
        for batch in loader:
            loss = model(
                pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
            ).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            steps += 1
            if steps % 25 == 0 or steps == 1:
                print(f"    step {steps}/{args.steps} loss {loss.item():.3f}", flush=True)
            if steps >= args.steps:
                break
    model.eval()
    return time.perf_counter() - start


def score(detector, dataset, max_dets: int = MAX_DETS) -> dict:
    from detr_hf.evaluation import evaluate_images

    metrics, _ = evaluate_images(detector, dataset, batch_size=1, show_progress=False, max_detections=max_dets)
    return metrics


def part_training(data, names, args) -> tuple[dict, torch.nn.Module]:
    import albumentations as A

    from detr_hf.data import make_transform_fn
    from detr_hf.data.tiling import TileSampler, tile_dataset, with_tile_transform
    from detr_hf.data.transforms import bbox_params
    from detr_hf.inference import SlicedDetector, TorchDetector

    processor = processor_for(args.size)
    resize = A.Compose([A.LongestMaxSize(max_size=args.size, area_for_downscale="image")], bbox_params=bbox_params(0.0))
    resized_rows = data["train"].with_transform(make_transform_fn(resize))
    tiles = tile_dataset(data["train"], tile_size=args.size, overlap=args.overlap, min_visibility=0.3,
                         empty_fraction=0.1, seed=0)  # fmt: skip
    print(tiles.tiling_report)
    tile_rows = with_tile_transform(tiles, make_transform_fn(None))
    id2label = dict(enumerate(names))
    results = {}
    models = {}
    for arm, rows, sampler in (("resized", resized_rows, None), ("tiles", tile_rows, TileSampler(tiles, seed=0))):
        print(f"  training on {arm}: {args.steps} steps of {args.batch} x {args.size} px", flush=True)
        model = build_model(id2label, args.queries, args.quick)
        seconds = train(model, rows, processor, args, sampler)
        models[arm] = model
        results[arm] = {"train_seconds": seconds}
    plain = TorchDetector(models["resized"], processor)
    sliced = SlicedDetector(TorchDetector(models["tiles"], processor), tile_size=args.size, overlap=args.overlap,
                            full_image_pass=False, merge="nmm", batch_size=args.slice_batch)  # fmt: skip
    results["resized"]["metrics"] = score(plain, data["validation"])
    results["tiles"]["metrics"] = score(sliced, data["validation"])
    return results, models["tiles"]


class _Stopwatch:
    def __init__(self):
        self.seconds = 0.0


def sahi_model(detector, threshold: float):
    """Our Detector as a SAHI DetectionModel (native batching: a batch of slices is one call)."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class DetrHfSahiModel(DetectionModel):
        def load_model(self) -> None:
            self.model = detector

        def set_model(self, model, **kwargs) -> None:
            self.model = model

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self.model([image], threshold=self.confidence_threshold)

        def perform_batch_inference(self, images: list[np.ndarray]) -> None:
            self._original_predictions = self.model(images, threshold=self.confidence_threshold)
            self._batch_images = None

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=None,
                                                                     full_shape_list=None) -> None:  # fmt: skip
            shifts = shift_amount_list or [[0, 0]]
            shapes = full_shape_list or [None]
            if shifts and not isinstance(shifts[0], (list, tuple)):
                shifts = [shifts]
            if shapes and shapes[0] is not None and not isinstance(shapes[0], (list, tuple)):
                shapes = [shapes]
            per_image = []
            for k, result in enumerate(self._original_predictions):
                shift, shape = shifts[min(k, len(shifts) - 1)], shapes[min(k, len(shapes) - 1)]
                per_image.append([
                    ObjectPrediction(bbox=box, category_id=int(label), category_name=self.model.id2label[int(label)],
                                     score=float(score), shift_amount=list(shift), full_shape=shape)
                    for box, label, score in zip(result["boxes"].tolist(), result["labels"].tolist(),
                                                 result["scores"].tolist())
                    if box[2] > box[0] and box[3] > box[1]
                ])  # fmt: skip
            self._object_prediction_list_per_image = per_image

    return DetrHfSahiModel(model=detector, confidence_threshold=threshold, category_mapping={
        str(k): v for k, v in detector.id2label.items()}, load_at_init=True)  # fmt: skip


class SahiDetector:
    """SAHI's get_sliced_prediction as a Detector, so the same evaluation scores it."""

    def __init__(self, detector, args, batch_size: int):
        self.id2label = detector.id2label
        self.model = sahi_model(detector, args.threshold)
        self.args, self.batch_size = args, batch_size

    def __call__(self, images, threshold=0.5):
        from sahi.predict import get_sliced_prediction

        out = []
        for image in images:
            result = get_sliced_prediction(
                np.asarray(image), self.model, slice_height=self.args.size, slice_width=self.args.size,
                overlap_height_ratio=self.args.overlap, overlap_width_ratio=self.args.overlap,
                perform_standard_pred=False, postprocess_type="GREEDYNMM", postprocess_match_metric="IOS",
                postprocess_match_threshold=0.5, force_postprocess_type=True, verbose=0,
                batch_size=self.batch_size, auto_slice_resolution=False,
            )  # fmt: skip
            predictions = result.object_prediction_list
            out.append({
                "scores": torch.tensor([p.score.value for p in predictions], dtype=torch.float32),
                "labels": torch.tensor([p.category.id for p in predictions], dtype=torch.int64),
                "boxes": torch.tensor([p.bbox.to_xyxy() for p in predictions], dtype=torch.float32).reshape(-1, 4),
            })  # fmt: skip
        return out


class Timed:
    """A Detector that times its calls (threshold fixed for every method compared)."""

    def __init__(self, detector, threshold: float):
        self.detector, self.threshold, self.seconds, self.images = detector, threshold, 0.0, 0
        self.id2label = detector.id2label

    def __call__(self, images, threshold=0.5):
        images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
        for image in images:
            image.load()
        start = time.perf_counter()
        out = self.detector(images, threshold=self.threshold)
        self.seconds += time.perf_counter() - start
        self.images += len(images)
        return out


def part_inference(model, data, args) -> dict:
    from detr_hf.inference import SlicedDetector, TorchDetector

    base = TorchDetector(model, processor_for(args.size))
    methods = {
        "plain (resized)": base,
        "detr_hf sliced_detection": SlicedDetector(base, tile_size=args.size, overlap=args.overlap,
                                                   full_image_pass=False, merge="nmm", batch_size=args.slice_batch),
        "SAHI get_sliced_prediction (batch 1)": SahiDetector(base, args, 1),
        f"SAHI get_sliced_prediction (batch {args.slice_batch})": SahiDetector(base, args, args.slice_batch),
    }  # fmt: skip
    # the methods take turns on each scene, so a change in the machine's load hits them alike
    from detr_hf.evaluation import CocoEvaluator

    val = data["validation"]
    timed = {name: Timed(detector, args.threshold) for name, detector in methods.items()}
    evaluators = {name: CocoEvaluator(val, id2label=base.id2label, max_detections=MAX_DETS) for name in methods}
    for row in val.select_columns(["image", "image_id"]):
        for name, detector in timed.items():
            evaluators[name].update(detector([row["image"]]), image_ids=[row["image_id"]])
    results = {}
    for name in methods:
        metrics = evaluators[name].compute()
        results[name] = {"metrics": metrics, "seconds_per_image": timed[name].seconds / max(timed[name].images, 1)}
        print(f"  {name}: AP {metrics['map']:.3f}, {results[name]['seconds_per_image']:.2f} s/image", flush=True)
    return results


_MEMORY_SCRIPT = r"""
import sys, torch, numpy as np
sys.path.insert(0, sys.argv[4])
from PIL import Image
from bench_large_images import SahiDetector, build_model, processor_for
from detr_hf.inference import SlicedDetector, TorchDetector
import argparse, json
args = argparse.Namespace(**json.loads(sys.argv[3]))
torch.set_num_threads(args.threads)
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
model = build_model({0: "circle", 1: "square", 2: "triangle"}, args.queries, args.quick)
model.load_state_dict(torch.load(args.weights))
base = TorchDetector(model.eval(), processor_for(args.size))
method, side = sys.argv[1], int(sys.argv[2])
detector = {"plain": base,
            "ours": SlicedDetector(base, tile_size=args.size, overlap=args.overlap, full_image_pass=False,
                                   batch_size=args.slice_batch),
            "sahi": SahiDetector(base, args, 1)}[method]
rng = np.random.default_rng(0)
small = Image.fromarray(rng.integers(0, 255, (args.size + 64, args.size + 64, 3), dtype=np.uint8))
detector([small], threshold=args.threshold)  # warm-up: first calls allocate torch's pools
image = Image.fromarray(np.kron(rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8),
                                np.ones((8, 8, 1), dtype=np.uint8)))
before = peak()
detector([image], threshold=args.threshold)
print(peak() - before)
"""


def part_memory(model, args) -> dict:
    weights = Path(args.out) / "tiles_model.pt"
    torch.save(model.state_dict(), weights)
    options = json.dumps({**{k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))},
                          "weights": str(weights)})  # fmt: skip
    results = {}
    for method in ("plain", "ours", "sahi"):
        for side in args.memory_sides:
            out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, method, str(side), options,
                                  str(Path(__file__).parent)], capture_output=True, text=True)  # fmt: skip
            value = float(out.stdout.split()[-1]) if out.returncode == 0 else float("nan")
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
            results[f"{method}/{side}"] = value
            print(f"  peak memory {method} {side} px: +{value:.0f} MiB", flush=True)
    return results


def part_dense(model, args) -> dict:
    from detr_hf.data.synthetic_scenes import make_synthetic_scenes
    from detr_hf.inference import SlicedDetector, TorchDetector

    dense = make_synthetic_scenes(num_train=0, num_val=args.dense_scenes, min_side=args.min_side,
                                  max_side=args.max_side, min_objects=300, max_objects=300, seed=7)["validation"]  # fmt: skip
    sliced = SlicedDetector(TorchDetector(model, processor_for(args.size)), tile_size=args.size, overlap=args.overlap,
                            full_image_pass=False, batch_size=args.slice_batch)  # fmt: skip
    timed = Timed(sliced, args.threshold)
    metrics_100 = score(timed, dense, 100)
    metrics_500 = score(timed, dense, MAX_DETS)
    objects = [len(o["bbox"]) for o in dense["objects"]]
    return {"objects_per_scene": objects, "AR@100": metrics_100["mar_100"], f"AR@{MAX_DETS}": metrics_500[f"mar_{MAX_DETS}"],
            "AP@100": metrics_100["map"], f"AP@{MAX_DETS}": metrics_500["map"]}  # fmt: skip


def report(results: dict, args: argparse.Namespace) -> None:
    print()
    print(machine_line())
    print(f"torch threads: {args.threads}; command: python benchmarks/bench_large_images.py {' '.join(sys.argv[1:])}")
    training = results["training"]
    print(
        f"\n1. Training, {args.steps} steps of {args.batch} x {args.size} px each (equal compute), full-res validation"
    )
    print("| arm | train s | AP | AP50 | AP_small | AR@500 |\n|---|---:|---:|---:|---:|---:|")
    for arm, label in (
        ("resized", "full scenes resized, plain inference"),
        ("tiles", "native tiles, sliced inference"),
    ):
        m = training[arm]["metrics"]
        print(f"| {label} | {training[arm]['train_seconds']:.0f} | {m['map']:.3f} | {m['map_50']:.3f} | "
              f"{m['map_small']:.3f} | {m[f'mar_{MAX_DETS}']:.3f} |")  # fmt: skip
    base = max(training["resized"]["metrics"]["map_small"], 1e-9)
    print(f"AP_small ratio tiles/resized: {training['tiles']['metrics']['map_small'] / base:.1f}x")
    print(f"\n2. Inference, tiles model, {args.size} px tiles, overlap {args.overlap}, threshold {args.threshold}")
    print("| method | AP | AP50 | AP_small | s / scene |\n|---|---:|---:|---:|---:|")
    for name, r in results["inference"].items():
        m = r["metrics"]
        print(f"| {name} | {m['map']:.3f} | {m['map_50']:.3f} | {m['map_small']:.3f} | {r['seconds_per_image']:.2f} |")
    memory = results["memory"]
    print("\npeak memory added by one inference on a decoded image (MiB)")
    print("| method | " + " | ".join(f"{s} px" for s in args.memory_sides) + " |")
    print("|---|" + "---:|" * len(args.memory_sides))
    for method in ("plain", "ours", "sahi"):
        print(f"| {method} | " + " | ".join(f"{memory[f'{method}/{s}']:.0f}" for s in args.memory_sides) + " |")
    dense = results["dense"]
    print(f"\n3. Dense scenes ({dense['objects_per_scene']} objects), sliced detections")
    print(f"| maxDets | AR | AP |\n|---|---:|---:|\n| 100 | {dense['AR@100']:.3f} | {dense['AP@100']:.3f} |")
    print(f"| {MAX_DETS} | {dense[f'AR@{MAX_DETS}']:.3f} | {dense[f'AP@{MAX_DETS}']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scenes and few steps, for development")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="tile side, and the resized arm's longest side")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, default=0.05, help="score threshold of every inference method")
    parser.add_argument("--slice-batch", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-val", type=int, default=6)
    parser.add_argument("--dense-scenes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_large_images")
    args = parser.parse_args()
    args.min_side, args.max_side, args.memory_sides = 1536, 2048, [1024, 2048, 4096]
    if args.quick:
        args.steps, args.num_train, args.num_val, args.dense_scenes = min(args.steps, 4), 2, 1, 1
        args.min_side, args.max_side, args.memory_sides = 512, 640, [512, 1024]
        args.size = min(args.size, 256)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(machine_line(), flush=True)

    from detr_hf.data.synthetic_scenes import make_synthetic_scenes

    start = time.perf_counter()
    data = make_synthetic_scenes(num_train=args.num_train, num_val=args.num_val, min_side=args.min_side,
                                 max_side=args.max_side, seed=0)  # fmt: skip
    names = data["train"].features["objects"]["category"].feature.names
    print(f"scenes generated in {time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    results["training"], tiles_model = part_training(data, names, args)
    results["inference"] = part_inference(tiles_model, data, args)
    results["memory"] = part_memory(tiles_model, args)
    results["dense"] = part_dense(tiles_model, args)
    results["total_seconds"] = time.perf_counter() - start
    (Path(args.out) / "bench_large_images.json").write_text(json.dumps(results, indent=2, default=float))
    report(results, args)
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
