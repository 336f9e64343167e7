"""The metric each task is reported in, as torchmetrics objects keyed by the names the papers use."""

from __future__ import annotations

from collections.abc import Callable

import torchmetrics
from torchmetrics import classification as C
from torchmetrics import regression as R

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value


def _classification(name: str, num_labels: int) -> torchmetrics.Metric:
    binary = num_labels == 2
    table: dict[str, Callable[[], torchmetrics.Metric]] = {
        "accuracy": lambda: C.BinaryAccuracy() if binary else C.MulticlassAccuracy(num_labels, average="micro"),
        "f1": lambda: C.BinaryF1Score() if binary else C.MulticlassF1Score(num_labels, average="macro"),
        "mcc": lambda: C.BinaryMatthewsCorrCoef() if binary else C.MulticlassMatthewsCorrCoef(num_labels),
    }
    if name not in table:
        raise bad_value("data.metric", name, f"one of {sorted(table)} for classification")
    return table[name]()


REGRESSION: dict[str, Callable[[], torchmetrics.Metric]] = {
    "spearman": R.SpearmanCorrCoef,
    "pearson": R.PearsonCorrCoef,
    "mse": R.MeanSquaredError,
}


def task_metrics(task: TaskSpec, prefix: str) -> torchmetrics.MetricCollection:
    """`prefix` is `val/` or `test/`; metrics take predicted class ids (classification) or scores (regression)."""
    metrics = task.metrics or (task.metric,)
    if task.regression:
        unknown = [m for m in metrics if m not in REGRESSION]
        if unknown:
            raise bad_value("data.metric", unknown[0], f"one of {sorted(REGRESSION)} for regression")
        built = {m: REGRESSION[m]() for m in metrics}
    else:
        built = {m: _classification(m, task.num_labels) for m in metrics}
    return torchmetrics.MetricCollection(built, prefix=prefix)
