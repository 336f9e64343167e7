"""The trivial predictor of each task kind, scored on an evaluation split, and whether a job beat it.

A number from a model that did not learn is not a result: every job logs `baseline/<metric>` (majority class for
classification and segmentation, the constant train mean for regression — correlation 0 —, an add-one unigram model's
perplexity for causal LMs) and the tag `lowrank_lab.learned`, true when the task's reported metric beats its
baseline by MARGINS[metric].
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value
from lowrank_lab.metrics.task_scores import task_metrics

# metric -> (margin, higher is better). "learned" needs metric ≥ baseline + margin (≤ baseline·(1 − margin) for
# perplexity). Chosen so that a constant predictor (or one that moved a few examples off it) fails and a model that
# picked up any signal on GLUE dev (n ≈ 300-1500) passes: 2 points of accuracy/F1/pixel accuracy, 0.05 of MCC,
# 0.10 of correlation, 0.02 of mean IoU, 10 % of perplexity, one probe answer in 20 of exact match.
MARGINS: dict[str, tuple[float, bool]] = {
    "accuracy": (0.02, True),
    "f1": (0.02, True),
    "mcc": (0.05, True),
    "spearman": (0.10, True),
    "pearson": (0.10, True),
    "mse": (0.10, False),
    "miou": (0.02, True),
    "pixel_accuracy": (0.02, True),
    "perplexity": (0.10, False),
    "exact_match": (0.05, True),
}


def _labels(loader: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([batch["labels"].reshape(-1) for batch in loader])


def _score(task: TaskSpec, preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    metrics = task_metrics(task, "")
    metrics.update(preds, target)
    return {k: float(v) for k, v in metrics.compute().items()}


def _majority(task: TaskSpec, train: Iterable, evaluation: Iterable, vocab_size: int | None = None) -> dict:
    """Always the train split's most frequent class (regression: the train mean, whose correlation is 0 and
    whose MSE is the eval variance around it)."""
    target = _labels(evaluation)
    if task.regression:
        mean = float(_labels(train).float().mean())
        scores = {m: 0.0 for m in task.metrics or (task.metric,)}  # a constant has no correlation
        if "mse" in scores:
            scores["mse"] = float(((target.float() - mean) ** 2).mean())
        return scores
    majority = Counter(_labels(train).tolist()).most_common(1)[0][0]
    return _score(task, torch.full_like(target, majority), target)


def _majority_pixel(task: TaskSpec, train: Iterable, evaluation: Iterable, vocab_size: int | None = None) -> dict:
    """Every pixel the train masks' most frequent class; scored per image like the model (B, H, W)."""
    counts = Counter(t for t in _labels(train).tolist() if t >= 0)
    majority = counts.most_common(1)[0][0]
    metrics = task_metrics(task, "")
    for batch in evaluation:
        target = batch["labels"]
        metrics.update(torch.full_like(target, majority), target)
    return {k: float(v) for k, v in metrics.compute().items()}


def _unigram(task: TaskSpec, train: Iterable, evaluation: Iterable, vocab_size: int | None = None) -> dict[str, float]:
    """Perplexity of an add-one unigram model of the train split's next tokens:
    p(t) = (c(t) + 1) / (N + V), PPL = exp(−mean log p(t)) over the eval split's labelled next tokens."""

    def next_tokens(loader: Iterable) -> torch.Tensor:
        tokens = torch.cat([batch["labels"][:, 1:].reshape(-1) for batch in loader])  # position t predicts t + 1
        return tokens[tokens != -100]

    seen, target = next_tokens(train), next_tokens(evaluation)
    vocab = int(vocab_size or int(max(seen.max(), target.max())) + 1)
    counts = torch.bincount(seen, minlength=vocab).double()
    log_p = torch.log((counts + 1.0) / (counts.sum() + vocab))
    scores = {"perplexity": math.exp(float(-log_p[target].mean()))}
    if task.probe is not None:
        scores["exact_match"] = 0.0  # a model that ignores the prompt answers no problem
    return scores


BASELINES: dict[str, Callable[..., dict[str, float]]] = {
    "seq_cls": _majority,
    "image_cls": _majority,
    "image_seg": _majority_pixel,
    "causal_lm": _unigram,
}


def trivial_baseline(task: TaskSpec, train: Iterable, evaluation: Iterable, vocab_size: int | None = None) -> dict:
    """metric -> the trivial predictor's score on `evaluation` (a loader of labelled batches), fit on `train`."""
    if task.kind not in BASELINES:
        raise bad_value("task.kind", task.kind, f"one of {sorted(BASELINES)}")
    return BASELINES[task.kind](task, train, evaluation, vocab_size)


def datamodule_baseline(datamodule: Any, split: str = "test") -> dict[str, float]:
    """`trivial_baseline` of a set-up datamodule: fit on its train loader, scored on `split`'s loader."""
    evaluation = getattr(datamodule, f"{split}_dataloader")()
    tokenizer = getattr(datamodule, "tokenizer", None)
    vocab = len(tokenizer) if tokenizer is not None else None
    return trivial_baseline(datamodule.task, datamodule.train_dataloader(), evaluation, vocab)


def learned(task: TaskSpec, scores: dict[str, float], baseline: dict[str, float]) -> tuple[bool | None, str]:
    """Whether the task's reported metric beats its baseline by its margin, and a one-line reason; None when
    either value is missing (e.g. the job did not evaluate)."""
    metric = task.metric
    value, base = scores.get(metric), baseline.get(metric)
    if value is None or base is None or not math.isfinite(value):
        return None if value is None or base is None else False, f"{metric}={value} (baseline {base})"
    margin, higher = MARGINS.get(metric, (0.0, True))
    ok = value >= base + margin if higher else value <= base * (1.0 - margin)
    need = f"≥ {base + margin:.4f}" if higher else f"≤ {base * (1.0 - margin):.4f}"
    return ok, f"{metric}={value:.4f}, baseline {base:.4f}, learned needs {need}"
