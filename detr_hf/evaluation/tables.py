"""The metrics as a fixed-width text table, for terminals, logs and notebooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _cell(value: float | None) -> str:
    return "-" if value is None or value < 0 else f"{value:.3f}"


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A fixed-width text table of ``CocoEvaluator.compute()``'s output: overall AP/AR, then AP, AP50, AR per class.

    ``-`` marks an undefined value (-1): no ground truth in that class or area range.
    """
    recall_limits = sorted(int(k[4:]) for k in metrics if k.startswith("mar_") and k[4:].isdigit())
    top = recall_limits[-1] if recall_limits else 100
    overall = [
        ("AP", "map"),
        ("AP50", "map_50"),
        ("AP75", "map_75"),
        ("APs", "map_small"),
        ("APm", "map_medium"),
        ("APl", "map_large"),
        *[(f"AR{limit}", f"mar_{limit}") for limit in recall_limits],
        ("ARs", "mar_small"),
        ("ARm", "mar_medium"),
        ("ARl", "mar_large"),
    ]
    overall = [(title, key) for title, key in overall if key in metrics]
    width = max(6, *(len(title) + 1 for title, _ in overall))
    lines = [
        "".join(f"{title:>{width}}" for title, _ in overall),
        "".join(f"{_cell(metrics[key]):>{width}}" for _, key in overall),
    ]

    per_class = metrics.get("map_per_class")
    if per_class:
        ap50 = metrics.get("map_50_per_class", {})
        ar = metrics.get(f"mar_{top}_per_class", {})
        columns = ("AP", "AP50", f"AR{top}")
        name_width = max(len("class"), len("all"), *(len(name) for name in per_class))
        rule = "-" * (name_width + 2 + width * len(columns))
        lines += ["", f"{'class':<{name_width}}  " + "".join(f"{c:>{width}}" for c in columns), rule]
        for name, value in per_class.items():
            cells = (_cell(value), _cell(ap50.get(name)), _cell(ar.get(name)))
            lines.append(f"{name:<{name_width}}  " + "".join(f"{c:>{width}}" for c in cells))
        lines.append(rule)
        totals = (_cell(metrics.get("map")), _cell(metrics.get("map_50")), _cell(metrics.get(f"mar_{top}")))
        lines.append(f"{'all':<{name_width}}  " + "".join(f"{c:>{width}}" for c in totals))
        if any(v < 0 for v in per_class.values()):
            lines.append("(- : no ground-truth boxes of this class)")
    if top > 100:
        lines.append(f"(maxDets={top}: up to {top} detections per image count, the model's query budget; COCO's default "
                     "100 would cap recall on dense scenes)")  # fmt: skip
    return "\n".join(lines)
