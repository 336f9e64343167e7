"""Per task kind: turn a model's outputs on a labelled batch into metric updates (registry by `TaskSpec.kind`)."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value
from lowrank_lab.metrics.task import task_metrics


class SequenceClassificationEvaluator:
    """logits: (n, num_labels) -> class ids, or (n, 1) -> scores for a regression head."""

    def __init__(self, task: TaskSpec, prefix: str) -> None:
        self.task = task
        self.metrics: torchmetrics.MetricCollection = task_metrics(task, prefix)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1).float() if self.task.regression else logits.argmax(-1)

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        self.metrics.update(self.predictions(outputs.logits), batch["labels"])

    def compute(self) -> dict[str, torch.Tensor]:
        return self.metrics.compute()

    def reset(self) -> None:
        self.metrics.reset()

    def modules(self) -> torchmetrics.MetricCollection:
        """The torchmetrics state to register on the LightningModule (moves with `.to(device)`)."""
        return self.metrics


EVALUATORS: dict[str, type] = {"seq_cls": SequenceClassificationEvaluator}


def build_evaluator(task: TaskSpec, prefix: str) -> Any:
    """The evaluator registered for `task.kind`."""
    if task.kind not in EVALUATORS:
        raise bad_value("task.kind", task.kind, f"one of {sorted(EVALUATORS)}")
    return EVALUATORS[task.kind](task, prefix)
