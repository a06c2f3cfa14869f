"""`detr-hf export`: a trained model as an ONNX artifact, checked against the model before it is accepted.

detr-hf export --model runs/aerial --output runs/aerial/onnx [--opset 17] [--dynamic-batch]
               [--image-size 640 640 | --dynamic-size] [--precision fp32|fp16|int8]
               [--validate path/to/dataset [--split validation] [--max-ap-drop 0.001]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX, gated on its accuracy",
        description="Export a trained model to ONNX (model.onnx, preprocessor_config.json, config.json, "
        "export_report.json in --output). The artifact's outputs are compared with the PyTorch model's on sample "
        "images; with --validate, its COCO mAP on a split is compared with the model's. Exit status 1 (and the "
        "outputs that diverged on stderr) when the artifact is not accurate enough; export_report.json is written "
        "either way.",
    )
    p.add_argument("--model", required=True, help="trained model folder or Hub id")
    p.add_argument("--output", "-o", required=True, help="folder for the artifact")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 16 or later (default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                      help="one input size: images are resized to fit and padded (default for Deformable DETR: the "
                      "processor's size box)")  # fmt: skip
    size.add_argument("--dynamic-size", action="store_true", help="any image size (DETR only; its default)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--validate", metavar="DATASET", help="also compare mAP on this dataset (anything "
                   "load_detection_dataset reads)")  # fmt: skip
    p.add_argument("--format", default="auto", help="annotation format of --validate (default: auto)")
    p.add_argument("--split", default="validation", help="split of --validate (default: validation)")
    p.add_argument("--max-ap-drop", type=float, help="largest allowed mAP drop (default: fp32 0.001, fp16 0.005, "
                   "int8 0.01)")  # fmt: skip
    p.add_argument("--tolerance", type=float, nargs=2, metavar=("LOGITS", "BOXES"),
                   help="largest |Δ| of logits and normalized boxes on sample images (default: per precision)")  # fmt: skip
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..onnx import ExportGateError, export_folder, gate_artifact
    from ..pretrained import load_detector

    if Path(args.output).resolve() == Path(args.model).resolve():
        raise SystemExit("detr-hf export: --output must be a folder of its own (the export writes its own processor)")
    model, processor = load_detector(args.model)
    validation = None
    if args.validate:
        from ..data import load_detection_dataset

        dataset = load_detection_dataset(args.validate, format=args.format, verbose=False)
        if args.split not in dataset:
            raise SystemExit(
                f"detr-hf export: split {args.split!r} is not in {args.validate} (splits: {list(dataset)})"
            )
        validation = dataset[args.split]
    settings = export_folder(
        model,
        processor,
        args.output,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        image_size=tuple(args.image_size) if args.image_size else None,
        dynamic_size=args.dynamic_size,
        precision=args.precision,
    )
    tolerance = dict(zip(("logits", "pred_boxes"), args.tolerance)) if args.tolerance else None
    try:
        report = gate_artifact(
            model, args.output, args.precision, validation=validation, max_ap_drop=args.max_ap_drop,
            tolerance=tolerance, settings=settings,
        )  # fmt: skip
    except ExportGateError as error:
        print(f"detr-hf export: {error}", file=sys.stderr)
        return 1
    diff = report["max_abs_diff"]
    line = f"max |Δ| logits {diff['logits']:.2e}, boxes {diff['pred_boxes']:.2e}"
    if report["validation"]:
        v = report["validation"]
        line += f"; mAP {v['model']['map']:.4f} -> {v['artifact']['map']:.4f} (drop {v['map_drop']:+.4f})"
    print(f"exported {args.model} -> {args.output}/model.onnx ({args.precision}, opset {args.opset}): {line}")
    return 0
