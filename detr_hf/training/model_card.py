"""The README.md (Hub model card) a run writes next to its model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..evaluation.report_markdown import model_card_section as operating_point_section
from .config import TrainingConfig


def write_model_card(
    output_dir: str | Path,
    config: TrainingConfig,
    metrics: dict[str, Any],
    command: str,
    id2label: dict[int, str],
    train_results: dict[str, Any],
    model_type: str | None = None,
) -> Path:
    """A README.md for the Hub: data, metrics table, per-class AP, hyper-parameters and the command that made it."""
    lines = [
        "---",
        "library_name: detr_hf",
        "pipeline_tag: object-detection",
        "tags: [object-detection, detr, detr_hf]",
        "---",
        "",
        f"# {Path(output_dir).name}",
        "",
        f"A DETR-family detector fine-tuned with detr_hf on `{config.dataset}`"
        + (
            f", starting from `{config.model}`." if config.model else f" from scratch (`{config.model_preset}` preset)."
        ),
        "",
        *family_lines(model_type),
        "## Evaluation (COCO metrics, validation split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]:.4f} |")
    per_class = metrics.get("map_per_class") or {}
    if per_class:
        lines += ["", "| class | AP |", "|---|---|"] + [f"| {name} | {ap:.4f} |" for name, ap in per_class.items()]
    lines += operating_point_section(output_dir)  # the report's per-class table, thresholds and plots, if written
    lines += [
        "",
        f"Classes ({len(id2label)}): " + ", ".join(id2label[i] for i in sorted(id2label)),
        "",
        "## Training",
        "",
        f"{train_results.get('steps', '?')} optimizer steps, {train_results.get('epochs', '?')} epochs, "
        f"{train_results.get('train_seconds', 0) / 60:.1f} minutes.",
        "",
        "```",
        command,
        "```",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).strip(),
        "```",
        "",
        "## Usage",
        "",
        "```python",
        "import detr_hf  # registers the model with transformers' Auto classes",
        "from transformers import pipeline",
        f'detector = pipeline("object-detection", model="{config.hub_model_id or output_dir}")',
        "```",
        "",
    ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def family_lines(model_type: str | None) -> list[str]:
    """The card's line naming the architecture: detr_hf's own, or a transformers family run through its adapter."""
    if model_type is None:
        return []
    from ..families.registry import family_for

    family = family_for(model_type)
    if family is None:
        return [f"Architecture: detr_hf's own `{model_type}` model.", ""]
    return [
        f"Architecture: {family.name} (transformers `{model_type}`, fine-tuned through detr_hf's adapter for it; "
        "loads with `AutoModelForObjectDetection`, no detr_hf needed).",
        "",
    ]
