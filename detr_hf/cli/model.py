"""`detr-hf evaluate` and `detr-hf predict`: a trained model's COCO table, and its detections drawn on images.

detr-hf evaluate --model runs/quickstart --data data/mine [--split validation] [--report DIR [--save-operating-point]]
detr-hf predict --model runs/quickstart photo.jpg more_photos/ --output predictions/ [--threshold 0.5 | auto]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePath

from ..pretrained import load_detector
from .report import add_report_arguments, run_report, threshold_value
from .slicing import add_slice_arguments, sliced_if_asked

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="COCO metrics of a trained model on a dataset split")
    p.add_argument("--model", required=True, help="model folder or Hub id, or an ONNX export (folder or .onnx)")
    p.add_argument("--data", required=True, help="anything load_detection_dataset reads (folder, COCO json, Hub)")
    p.add_argument("--format", default="auto", help="annotation format of --data (default: auto)")
    p.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", help="also write the metrics (eval_results.json) and the detections here "
                   "(predictions.json: COCO results with the source's category and image ids, so they score against "
                   "the original COCO annotation file)")  # fmt: skip
    add_report_arguments(p)
    add_slice_arguments(p)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..data import load_detection_dataset
    from ..evaluation import eval_dataloader, evaluate_detector, evaluate_images, format_metrics_table, query_budget
    from ..inference import TorchDetector, load_inference_detector
    from ..onnx.runtime import is_onnx_source

    onnx = is_onnx_source(args.model)
    detector = load_inference_detector(args.model) if onnx else TorchDetector(*load_detector(args.model))
    dataset = load_detection_dataset(args.data, format=args.format, verbose=False)
    if args.split not in dataset:
        raise SystemExit(f"detr-hf evaluate: split {args.split!r} is not in {args.data} (splits: {list(dataset)})")
    # COCO's maxDets at the query budget when above 100 (dense scenes); an ONNX artifact keeps post-processing's 100
    budget = query_budget(detector.model.config) if isinstance(detector, TorchDetector) else 100
    if isinstance(detector, TorchDetector) and not args.slice:  # batches resized by the evaluation dataloader
        loader = eval_dataloader(dataset[args.split], detector.processor, args.batch_size)
        metrics, evaluator = evaluate_detector(
            detector.model, detector.processor, loader, dataset[args.split], max_detections=budget
        )
    else:  # any other Detector (ONNX Runtime, sliced inference) resizes or tiles each image itself
        detector = sliced_if_asked(detector, args)
        metrics, evaluator = evaluate_images(detector, dataset[args.split], args.batch_size, max_detections=budget)
    print(format_metrics_table(metrics))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (out / "predictions.json").write_text(json.dumps(evaluator.coco_results()), encoding="utf-8")
    run_report(args, evaluator, dataset[args.split])
    return 0


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="detect objects in images; save them drawn, and as JSON",
        description="Detect objects in images and save each image with its boxes drawn, plus detections.json. "
        "Drawings keep the image's path under the folder it was found in (just its name for an image given as a "
        "file), with '_detections.png' in place of its suffix: photos/a/x.jpg found in photos/ -> a/x_detections.png. "
        "When two images would get the same drawing (x.jpg and x.png, or the same name in two input folders), the "
        "later ones get -2, -3, ... before '_detections'. detections.json holds 'images' (input path -> its drawing "
        "and its detections) and 'errors' (each image that did not decode, with why). An image that does not decode "
        "is named on stderr and skipped; the others are still processed and saved. Exit status: 0, or 1 when any "
        "image did not decode.",
    )
    p.add_argument("--model", required=True, help="model folder or Hub id, or an ONNX export (folder or .onnx)")
    p.add_argument("images", nargs="+", help="image files or folders of images (searched recursively)")
    p.add_argument("--output", "-o", required=True, help="folder for the drawn images and detections.json")
    p.add_argument("--threshold", type=threshold_value, default=0.5,
                   help="minimum score (default 0.5), or 'auto': the per-class thresholds saved by "
                   "`detr-hf evaluate --report DIR --save-operating-point`")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4)
    add_slice_arguments(p)
    p.add_argument("--explain", action="store_true", help="also draw, per detection, what its query looked at in "
                   "each decoder layer (explain/<image>_<rank>_query<q>.png; see docs/explain.md)")  # fmt: skip
    p.set_defaults(run=run_predict)


def _image_paths(inputs: list[str]) -> list[tuple[Path, PurePath]]:
    """Each image to predict (folders searched recursively, each file once) with its path under its input folder."""
    found: list[tuple[Path, PurePath]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(item)) for p in files]
        elif item.is_file():
            found.append((item, PurePath(item.name)))
        else:
            raise SystemExit(f"detr-hf predict: {item} is neither an image file nor a folder")
    if not found:
        raise SystemExit(f"detr-hf predict: no images found in {inputs}")
    seen: set[Path] = set()
    unique = []
    for path, relative in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, relative))
    return unique


def _drawing_names(relative_paths: list[PurePath]) -> list[str]:
    """``a/x.jpg`` -> ``a/x_detections.png``; a name already taken (case-insensitively) gets ``-2``, ``-3``, ..."""
    taken: set[str] = set()
    names = []
    for relative in relative_paths:
        stem = relative.with_suffix("").as_posix()
        name, count = f"{stem}_detections.png", 1
        while name.casefold() in taken:
            count += 1
            name = f"{stem}-{count}_detections.png"
        taken.add(name.casefold())
        names.append(name)
    return names


def run_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.report import DatasetValidationError
    from ..imaging import decode_image, decode_large_image
    from ..inference import load_inference_detector
    from ..visualization import draw_detections

    if args.explain and args.slice:
        raise SystemExit("detr-hf predict: --explain draws one forward pass over the whole image; it can't explain "
                         "detections merged from tiles (--slice). Use one or the other.")  # fmt: skip
    detector = load_inference_detector(args.model)
    explainer = _explainer(detector) if args.explain else None
    detector = sliced_if_asked(detector, args)
    inputs = _image_paths(args.images)
    drawings = _drawing_names([relative for _, relative in inputs])
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict] = {}
    errors: list[dict[str, str]] = []
    jobs = [(path, drawing) for (path, _), drawing in zip(inputs, drawings)]
    for start in tqdm(range(0, len(jobs), args.batch_size), desc="predicting", unit="batch"):
        decoded = []
        for path, drawing in jobs[start : start + args.batch_size]:
            try:
                decoded.append((path, drawing, (decode_large_image if args.slice else decode_image)(path)))
            except DatasetValidationError as error:
                tqdm.write(f"detr-hf predict: skipped {error}", file=sys.stderr)
                errors.append({"image": str(path), "error": str(error)})
        if not decoded:
            continue
        results = detector([image for _, _, image in decoded], threshold=args.threshold)
        for (path, drawing, image), result in zip(decoded, results):
            drawn = draw_detections(image, result["boxes"], result["labels"], result["scores"], detector.id2label)
            (out / drawing).parent.mkdir(parents=True, exist_ok=True)
            drawn.save(out / drawing)
            detections = [
                {"label": detector.id2label[int(label)], "score": round(float(score), 4),
                 "box_xyxy": [round(float(v), 2) for v in box]}
                for label, score, box in zip(result["labels"], result["scores"], result["boxes"])
            ]  # fmt: skip
            found[str(path)] = {"drawing": drawing, "detections": detections}
            if explainer is not None:
                found[str(path)]["explanations"] = explainer(image, out, drawing, args.threshold)
    report = {"images": found, "errors": errors}
    (out / "detections.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    total = sum(len(entry["detections"]) for entry in found.values())
    print(f"{total} detections in {len(found)} images -> {out}")
    if errors:
        print(f"detr-hf predict: {len(errors)} of {len(jobs)} images did not decode (see 'errors' in detections.json)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _explainer(detector):
    """``--explain``: a function writing one picture per detection of an image, for detectors that can explain."""
    from ..explain import explain_detections, explain_detector
    from ..explain.figures import save_query_figures

    try:
        model, processor = explain_detector(detector)
    except TypeError as error:
        raise SystemExit(f"detr-hf predict --explain: {error}") from None

    def explain(image, out: Path, drawing: str, threshold: float) -> list[str]:
        explanation = explain_detections(model, processor, image, top_k=None, threshold=threshold)
        stem = out / "explain" / drawing.removesuffix("_detections.png")
        return [path.relative_to(out).as_posix() for path in save_query_figures(explanation, stem)]

    return explain
