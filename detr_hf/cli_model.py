"""`detr-hf evaluate` and `detr-hf predict`: a trained model's COCO table, and its detections drawn on images.

detr-hf evaluate --model runs/quickstart --data data/mine [--split validation]
detr-hf predict --model runs/quickstart photo.jpg more_photos/ --output predictions/ [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def load_model_and_processor(folder: str):
    """Any detector folder or Hub id detr_hf can load (its own or transformers' DETR family), in eval mode."""
    from .configuration_detr import DetrConfig
    from .image_processing_detr import DetrImageProcessor
    from .training import detector_class

    model_type = DetrConfig.get_config_dict(folder)[0].get("model_type")
    model = detector_class(model_type).from_pretrained(folder).eval()
    processor = DetrImageProcessor.from_pretrained(folder)
    processor.use_focal_loss = model.config.use_focal_loss
    return model, processor


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="COCO metrics of a trained model on a dataset split")
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--data", required=True, help="anything load_detection_dataset reads (folder, COCO json, Hub)")
    p.add_argument("--format", default="auto", help="annotation format of --data (default: auto)")
    p.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", help="also write the metrics (JSON) and the detections (COCO results) here")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from .data import load_detection_dataset
    from .evaluation import evaluate_detector, format_metrics_table
    from .training import eval_dataloader

    model, processor = load_model_and_processor(args.model)
    dataset = load_detection_dataset(args.data, format=args.format, verbose=False)
    if args.split not in dataset:
        raise SystemExit(f"detr-hf evaluate: split {args.split!r} is not in {args.data} (splits: {list(dataset)})")
    loader = eval_dataloader(dataset[args.split], processor, args.batch_size)
    metrics, evaluator = evaluate_detector(model, processor, loader, dataset[args.split])
    print(format_metrics_table(metrics))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        (out / "predictions.json").write_text(json.dumps(evaluator.coco_results()))
    return 0


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="detect objects in images; save them drawn, and as JSON")
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--output", "-o", required=True, help="folder for the drawn images and detections.json")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(run=run_predict)


def _image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise SystemExit(f"detr-hf predict: {item} is neither an image file nor a folder")
    if not paths:
        raise SystemExit(f"detr-hf predict: no images found in {inputs}")
    return paths


def run_predict(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, ImageOps
    from tqdm.auto import tqdm

    from .visualization import draw_detections

    model, processor = load_model_and_processor(args.model)
    paths = _image_paths(args.images)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    detections = {}
    for start in tqdm(range(0, len(paths), args.batch_size), desc="predicting", unit="batch"):
        chunk = paths[start : start + args.batch_size]
        images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in chunk]
        inputs = processor(images=images, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        results = processor.post_process_object_detection(outputs, threshold=args.threshold, target_sizes=sizes)
        for path, image, result in zip(chunk, images, results):
            drawn = draw_detections(image, result["boxes"], result["labels"], result["scores"], model.config.id2label)
            drawn.save(out / f"{path.stem}_detections.png")
            detections[str(path)] = [
                {"label": model.config.id2label[int(label)], "score": round(float(score), 4),
                 "box_xyxy": [round(float(v), 2) for v in box]}
                for label, score, box in zip(result["labels"], result["scores"], result["boxes"])
            ]  # fmt: skip
    (out / "detections.json").write_text(json.dumps(detections, indent=2))
    print(f"{sum(map(len, detections.values()))} detections in {len(paths)} images -> {out}")
    return 0
