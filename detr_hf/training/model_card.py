"""The README.md (Hub model card) a run writes next to its model, built from sections: each section is a function of
the run's `CardContext` returning its markdown lines (none when it has nothing to show); `SECTIONS` is their order, so
a new section is one function and one entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..evaluation.report_markdown import model_card_section
from .config import TrainingConfig

LOSS_CURVE = "loss_curve.png"  # written by `plot_history` before the card
PREDICTION_EXAMPLES = "validation_predictions.png"  # written by `save_prediction_examples`
METRIC_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


@dataclass
class CardContext:
    """What the card's sections read."""

    output_dir: Path
    config: TrainingConfig
    metrics: dict[str, Any]
    command: str
    id2label: dict[int, str]
    train_results: dict[str, Any]
    model_type: str | None = None


def format_metric(value: Any) -> str:
    """A COCO metric for the card: 4 decimals, or "-" where it is absent (COCO's -1: no object of that kind)."""
    if value is None or (isinstance(value, (int, float)) and value < 0):
        return "-"
    return f"{value:.4f}"


def header(card: CardContext) -> list[str]:
    config = card.config
    origin = (
        f", starting from `{config.model}`." if config.model else f" from scratch (`{config.model_preset}` preset)."
    )
    return [
        "---",
        "library_name: detr_hf",
        "pipeline_tag: object-detection",
        "tags: [object-detection, detr, detr_hf]",
        "---",
        "",
        f"# {card.output_dir.name}",
        "",
        f"A DETR-family detector fine-tuned with detr_hf on `{config.dataset}`" + origin,
    ]


def architecture(card: CardContext) -> list[str]:
    """The line naming the architecture: detr_hf's own, or a transformers family run through its adapter."""
    if card.model_type is None:
        return []
    from ..families.registry import family_for

    family = family_for(card.model_type)
    if family is None:
        return [f"Architecture: detr_hf's own `{card.model_type}` model."]
    return [
        f"Architecture: {family.name} (transformers `{card.model_type}`, fine-tuned through detr_hf's adapter for it; "
        "loads with `AutoModelForObjectDetection`, no detr_hf needed)."
    ]


def evaluation(card: CardContext) -> list[str]:
    """The COCO metrics table ("-": the validation split has no object of that size) and per-class AP."""
    lines = ["## Evaluation (COCO metrics, validation split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {format_metric(card.metrics[key])} |" for key in METRIC_KEYS if key in card.metrics]
    per_class = card.metrics.get("map_per_class") or {}
    if per_class:
        lines += ["", "| class | AP |", "|---|---|"] + [f"| {n} | {format_metric(ap)} |" for n, ap in per_class.items()]
    if any(card.metrics.get(key, 0) == -1 for key in METRIC_KEYS):
        lines += ["", '"-": no validation object of that kind, so the metric is undefined.']
    names = ", ".join(card.id2label[i] for i in sorted(card.id2label))
    return [*lines, "", f"Classes ({len(card.id2label)}): {names}"]


def operating_point(card: CardContext) -> list[str]:
    """The operating-point report's per-class table with intervals, thresholds and plots, when it was written."""
    lines = model_card_section(card.output_dir)
    while lines and not lines[0]:
        lines = lines[1:]
    return lines


def curves(card: CardContext) -> list[str]:
    if not (card.output_dir / LOSS_CURVE).exists():
        return []
    return ["## Training curves", "", f"![training loss and validation mAP/AP50 over the steps]({LOSS_CURVE})"]


def examples(card: CardContext) -> list[str]:
    if not (card.output_dir / PREDICTION_EXAMPLES).exists():
        return []
    return [
        "## Predictions on validation images",
        "",
        f"![the final model's detections (score >= 0.5) on validation images]({PREDICTION_EXAMPLES})",
    ]


def training(card: CardContext) -> list[str]:
    results = card.train_results
    lines = [
        "## Training",
        "",
        f"{results.get('steps', '?')} optimizer steps, {results.get('epochs', '?')} epochs, "
        f"{results.get('train_seconds', 0) / 60:.1f} minutes; final loss {format_metric(results.get('final_loss'))} "
        f"(mean of the last {results.get('final_loss_steps', '?')} steps).",
    ]
    if results.get("stopped_by_time_limit"):
        lines += [
            "",
            "**The safety time limit stopped this run before its step budget: metrics are below a full run's.**",
        ]
    config_yaml = yaml.safe_dump(card.config.to_dict(), sort_keys=False).strip()
    return [*lines, "", "```", card.command, "```", "", "```yaml", config_yaml, "```"]


def usage(card: CardContext) -> list[str]:
    return [
        "## Usage",
        "",
        "```python",
        "import detr_hf  # registers the model with transformers' Auto classes",
        "from transformers import pipeline",
        f'detector = pipeline("object-detection", model="{card.config.hub_model_id or card.output_dir}")',
        "```",
    ]


SECTIONS: list[Callable[[CardContext], list[str]]] = [
    header,
    architecture,
    evaluation,
    operating_point,
    curves,
    examples,
    training,
    usage,
]


def write_model_card(
    output_dir: str | Path,
    config: TrainingConfig,
    metrics: dict[str, Any],
    command: str,
    id2label: dict[int, str],
    train_results: dict[str, Any],
    model_type: str | None = None,
) -> Path:
    """A README.md for the Hub: data, metrics, curves, example predictions, hyper-parameters and the command."""
    card = CardContext(Path(output_dir), config, metrics or {}, command, id2label, train_results, model_type)
    blocks = [lines for section in SECTIONS if (lines := section(card))]
    path = Path(output_dir) / "README.md"
    path.write_text("\n\n".join("\n".join(lines) for lines in blocks) + "\n", encoding="utf-8")
    return path


def save_prediction_examples(
    model: Any, processor: Any, dataset: Any, path: str | Path, count: int = 6, threshold: float = 0.5
) -> Path | None:
    """A grid of the first `count` images of `dataset` (the package schema's `image` column) with the model's
    detections above `threshold` drawn; None for an empty split. The model is left in eval mode."""
    from ..inference import TorchDetector
    from ..visualization import draw_detections, image_grid

    rows = dataset.select(range(min(count, len(dataset))))
    if len(rows) == 0:
        return None
    images = [image.convert("RGB") for image in rows["image"]]
    detector = TorchDetector(model, processor)
    drawn = []
    for image, found in zip(images, detector(images, threshold=threshold)):
        drawn.append(draw_detections(image, found["boxes"], found["labels"], found["scores"], detector.id2label))
    grid = image_grid(drawn, columns=min(3, len(drawn)))
    grid.save(path)
    return Path(path)
