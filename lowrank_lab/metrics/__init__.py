"""Task metrics (torchmetrics), spectral and forgetting metrics."""

from lowrank_lab.metrics.task_scores import task_metrics

__all__ = ["task_metrics"]
