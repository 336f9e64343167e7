"""Trivial baselines per task kind against hand-computed values, and the learned rule."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.metrics.baseline import MARGINS, learned, trivial_baseline


def _batches(labels: list, size: int = 2) -> list[dict]:
    t = torch.tensor(labels)
    return [{"labels": t[i : i + size]} for i in range(0, len(t), size)]


def test_majority_class_accuracy_f1_mcc_by_hand() -> None:
    task = TaskSpec("t", 2, "f1", ("f1", "accuracy"))
    scores = trivial_baseline(task, _batches([0, 1, 1, 1]), _batches([1, 0, 1, 1, 0]))
    # always 1: 3 of 5 right; precision 3/5, recall 1 -> F1 = 2·0.6·1 / 1.6 = 0.75
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx(0.75)
    mcc = trivial_baseline(TaskSpec("t", 2, "mcc", ("mcc",)), _batches([0, 0, 1]), _batches([0, 1, 1, 0]))
    assert mcc["mcc"] == pytest.approx(0.0)  # a constant predictor has no correlation


def test_majority_class_multiclass() -> None:
    task = TaskSpec("digits", 3, "accuracy", ("accuracy",), kind="image_cls")
    scores = trivial_baseline(task, _batches([2, 2, 1, 0, 2]), _batches([2, 1, 1, 2]))
    assert scores["accuracy"] == pytest.approx(0.5)


def test_regression_constant_mean() -> None:
    task = TaskSpec("stsb", 1, "spearman", ("spearman", "pearson", "mse"), regression=True)
    train, dev = [1.0, 2.0, 3.0, 6.0], [0.0, 4.0, 5.0]
    scores = trivial_baseline(task, _batches(train), _batches(dev))
    assert scores["spearman"] == 0.0 and scores["pearson"] == 0.0
    assert scores["mse"] == pytest.approx(sum((y - 3.0) ** 2 for y in dev) / 3)


def test_unigram_perplexity_by_hand() -> None:
    task = TaskSpec("lm", 0, "perplexity", ("perplexity",), kind="causal_lm")
    # next tokens (position t predicts t + 1): train row [9, 1, 1, 2] -> {1, 1, 2}; -100 is masked
    train = [{"labels": torch.tensor([[9, 1, 1, 2], [9, 2, -100, -100]])}]  # next tokens 1, 1, 2, 2
    dev = [{"labels": torch.tensor([[9, 1, 3]])}]  # next tokens 1, 3
    vocab = 4
    p1, p3 = (2 + 1) / (4 + vocab), (0 + 1) / (4 + vocab)  # add-one over a 4-token vocabulary
    expected = math.exp(-(math.log(p1) + math.log(p3)) / 2)
    assert trivial_baseline(task, train, dev, vocab_size=vocab)["perplexity"] == pytest.approx(expected)


def test_segmentation_majority_pixel() -> None:
    task = TaskSpec("seg", 3, "pixel_accuracy", ("pixel_accuracy",), kind="image_seg")
    train = [{"labels": torch.tensor([[[0, 0], [0, 2]]])}]
    dev = [{"labels": torch.tensor([[[0, 1], [2, 0]]])}]
    assert trivial_baseline(task, train, dev)["pixel_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("metric", "value", "base", "expected"),
    [
        ("accuracy", 0.509, 0.509, False),  # the majority class
        ("accuracy", 0.8, 0.509, True),
        ("f1", 0.815, 0.812, False),  # MRPC's always-"paraphrase" F1 plus noise
        ("mcc", 0.026, 0.0, False),
        ("spearman", 0.128, 0.0, True),
        ("perplexity", 95.0, 100.0, False),  # lower is better: needs ≤ 90
        ("perplexity", 50.0, 100.0, True),
        ("accuracy", float("nan"), 0.5, False),
    ],
)
def test_learned_rule(metric: str, value: float, base: float, expected: bool) -> None:
    task = TaskSpec("t", 2, metric)
    ok, why = learned(task, {metric: value}, {metric: base})
    assert ok is expected and metric in why
    assert metric in MARGINS


def test_learned_unknown_without_values() -> None:
    assert learned(TaskSpec("t", 2, "accuracy"), {}, {"accuracy": 0.5})[0] is None
