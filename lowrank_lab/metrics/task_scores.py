"""The metric each task is reported in, as torchmetrics objects keyed by the names the papers use: GLUE accuracy /
F1 / MCC / Spearman / Pearson, image accuracy, segmentation mean IoU, causal-LM perplexity."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics import classification as C
from torchmetrics import regression as R
from torchmetrics.segmentation import MeanIoU

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

# image_seg: preds and target are (B, H, W) class ids; mean IoU averages the IoU of every class present in an image
SEGMENTATION: dict[str, Callable[[int], torchmetrics.Metric]] = {
    "miou": lambda n: MeanIoU(num_classes=n, include_background=True, input_format="index"),
    "pixel_accuracy": lambda n: C.MulticlassAccuracy(n, average="micro"),
}


class TokenPerplexity(torchmetrics.Metric):
    """exp(mean next-token NLL over unmasked tokens); preds (B, T, V) logits aligned with target (B, T), -100
    ignored. Same value as torchmetrics' Perplexity without its softmax copy of the logits."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        nll = F.cross_entropy(preds.flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction="sum")
        self.nll += nll.double()
        self.count += (target != -100).sum()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.count.clamp(min=1)).float()


# causal_lm: preds (B, T, V) next-token logits, target (B, T) with -100 where the loss is masked
LANGUAGE: dict[str, Callable[[], torchmetrics.Metric]] = {"perplexity": TokenPerplexity}


def _pick(table: dict, metrics: tuple[str, ...], kind: str) -> dict:
    unknown = [m for m in metrics if m not in table]
    if unknown:
        raise bad_value("data.metric", unknown[0], f"one of {sorted(table)} for {kind}")
    return {m: table[m] for m in metrics}


def _labels(task: TaskSpec, metrics: tuple[str, ...]) -> dict[str, torchmetrics.Metric]:
    if task.regression:
        return {m: build() for m, build in _pick(REGRESSION, metrics, "regression").items()}
    return {m: _classification(m, task.num_labels) for m in metrics}


BUILDERS: dict[str, Callable[[TaskSpec, tuple[str, ...]], dict[str, torchmetrics.Metric]]] = {
    "seq_cls": _labels,
    "image_cls": _labels,
    "image_seg": lambda t, ms: {m: b(t.num_labels) for m, b in _pick(SEGMENTATION, ms, "image_seg").items()},
    "causal_lm": lambda t, ms: {m: b() for m, b in _pick(LANGUAGE, ms, "causal_lm").items()},
}


def task_metrics(task: TaskSpec, prefix: str) -> torchmetrics.MetricCollection:
    """`prefix` is `val/` or `test/`; metrics take predicted class ids (classification) or scores (regression),
    per-pixel ids (segmentation) or shifted logits and labels (causal LM)."""
    if task.kind not in BUILDERS:
        raise bad_value("task.kind", task.kind, f"one of {sorted(BUILDERS)}")
    return torchmetrics.MetricCollection(BUILDERS[task.kind](task, task.metrics or (task.metric,)), prefix=prefix)
