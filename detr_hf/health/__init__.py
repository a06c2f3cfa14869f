"""Dataset health before training: duplicates and leakage, groups spanning splits, label health.

from detr_hf.health import check_dataset, save_report
report = check_dataset(dataset, group_by=r"^([^/]+)/")
print(report)                        # a short table; report.ok is False on leakage or broken labels
save_report(report, dataset, "health/")   # health_report.{md,html,json}, plots, duplicate thumbnails

``detr-hf check DATASET`` runs the same; the recipe prints :func:`health_summary` at its start.
"""

from .check import check_dataset, check_source
from .duplicates import DEFAULT_NEAR_THRESHOLD, DEFAULT_THUMB_TOLERANCE
from .render import save_report
from .report import HealthReport, Problem
from .summary import health_summary, log_dataset_health, model_stride

__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "DEFAULT_THUMB_TOLERANCE",
    "HealthReport",
    "Problem",
    "check_dataset",
    "check_source",
    "health_summary",
    "log_dataset_health",
    "model_stride",
    "save_report",
]
