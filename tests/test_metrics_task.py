"""Task metrics against scipy/sklearn on fixed predictions: each GLUE task's metrics, image accuracy, segmentation
mean IoU, causal-LM perplexity and generation exact match."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from lowrank_lab.data import GLUE_TASKS
from lowrank_lab.data.task import GenerationProbe, TaskSpec, final_answer
from lowrank_lab.metrics.evaluators import build_evaluator, exact_match
from lowrank_lab.metrics.task_scores import TokenPerplexity, task_metrics

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 200)
PREDS = np.where(RNG.random(200) < 0.7, LABELS, 1 - LABELS)  # ~70 % right
SCORES_TRUE = RNG.uniform(0, 5, 200)
SCORES_PRED = SCORES_TRUE + RNG.normal(0, 1.5, 200)

REFERENCE = {  # metric name -> sklearn/scipy on (truth, prediction)
    "accuracy": skm.accuracy_score,
    "f1": skm.f1_score,
    "mcc": skm.matthews_corrcoef,
    "spearman": lambda t, p: stats.spearmanr(t, p).statistic,
    "pearson": lambda t, p: stats.pearsonr(t, p).statistic,
}


def _glue_spec(name: str) -> TaskSpec:
    task = GLUE_TASKS[name]
    return TaskSpec(name, task.num_labels, task.metric, task.metrics, regression=task.num_labels == 1)


@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_glue_metrics_match_sklearn_scipy(name: str) -> None:
    spec = _glue_spec(name)
    evaluator = build_evaluator(spec, "val/")
    if spec.regression:
        truth, logits = SCORES_TRUE, torch.tensor(SCORES_PRED, dtype=torch.float32)[:, None]  # (n, 1)
        labels, preds = torch.tensor(truth, dtype=torch.float32), SCORES_PRED
    else:
        truth, labels, preds = LABELS, torch.tensor(LABELS), PREDS
        logits = torch.nn.functional.one_hot(torch.tensor(PREDS), 2).float()  # (n, 2)
    for chunk in range(0, 200, 64):  # several batches, as in a validation epoch
        out = SimpleNamespace(logits=logits[chunk : chunk + 64])
        evaluator.update(out, {"labels": labels[chunk : chunk + 64]})
    got = evaluator.compute()
    assert set(got) == {f"val/{m}" for m in spec.metrics} and spec.metric in spec.metrics
    for metric in spec.metrics:
        assert float(got[f"val/{metric}"]) == pytest.approx(REFERENCE[metric](truth, preds), abs=1e-5), metric


def test_glue_paper_metric_names() -> None:
    expected = {"sst2": "accuracy", "qnli": "accuracy", "rte": "accuracy", "mrpc": "f1", "stsb": "spearman"}
    assert {n: GLUE_TASKS[n].metric for n in expected} == expected and GLUE_TASKS["cola"].metric == "mcc"
    assert "accuracy" in GLUE_TASKS["mrpc"].metrics and "pearson" in GLUE_TASKS["stsb"].metrics


def test_image_accuracy_matches_sklearn() -> None:
    spec = TaskSpec("digits", 10, "accuracy", ("accuracy",), kind="image_cls")
    truth, logits = torch.randint(0, 10, (300,)), torch.randn(300, 10)
    evaluator = build_evaluator(spec, "val/")
    evaluator.update(SimpleNamespace(logits=logits), {"labels": truth})
    assert float(evaluator.compute()["val/accuracy"]) == pytest.approx(skm.accuracy_score(truth, logits.argmax(-1)))


def test_segmentation_miou_matches_sklearn_jaccard() -> None:
    """torchmetrics' MeanIoU: per image, the mean IoU of the classes present in truth or prediction."""
    spec = TaskSpec("seg", 4, "miou", ("miou", "pixel_accuracy"), kind="image_seg")
    truth = torch.randint(0, 4, (3, 8, 8))
    truth[2] = truth[2].clamp(max=1)  # an image where classes 2 and 3 are absent from the truth
    logits = torch.randn(3, 4, 8, 8) + 3.0 * torch.nn.functional.one_hot(truth, 4).permute(0, 3, 1, 2)
    preds = logits.argmax(1)
    evaluator = build_evaluator(spec, "val/")
    evaluator.update(SimpleNamespace(logits=logits), {"labels": truth})
    got = evaluator.compute()
    ious = []
    for t, p in zip(truth.flatten(1).numpy(), preds.flatten(1).numpy()):
        present = sorted(set(t) | set(p))
        ious += list(skm.jaccard_score(t, p, labels=present, average=None, zero_division=0))
    assert float(got["val/miou"]) == pytest.approx(np.mean(ious), abs=1e-5)
    assert float(got["val/pixel_accuracy"]) == pytest.approx(skm.accuracy_score(truth.flatten(), preds.flatten()))


def test_token_perplexity_is_exp_mean_token_loss() -> None:
    logits, target = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    target[0, :3] = -100  # masked prompt tokens
    metric = TokenPerplexity()
    metric.update(logits[:1], target[:1])
    metric.update(logits[1:], target[1:])
    keep = target != -100
    nll = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    assert float(metric.compute()) == pytest.approx(float(torch.exp(nll)), rel=1e-5)
    from torchmetrics.text import Perplexity

    assert float(metric.compute()) == pytest.approx(float(Perplexity(ignore_index=-100)(logits, target)), rel=1e-5)


def test_causal_lm_evaluator_shifts_labels() -> None:
    """Position t's logits score token t + 1: a model that puts all its mass on the next token has perplexity 1."""
    spec = TaskSpec("lm", 0, "perplexity", ("perplexity",), kind="causal_lm")
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    logits = torch.full((1, 5, 8), -1e4)
    logits[0, torch.arange(4), ids[0, 1:]] = 0.0  # t predicts ids[t + 1]
    evaluator = build_evaluator(spec, "val/", model=None)
    evaluator.update(SimpleNamespace(logits=logits), {"labels": ids})
    assert task_metrics(spec, "val/").keys() == {"val/perplexity"}
    assert float(evaluator.compute()["val/perplexity"]) == pytest.approx(1.0)


class _Echo(torch.nn.Module):
    """Stands in for a causal LM's `generate`: appends fixed continuation ids (one prompt at a time)."""

    def __init__(self, continuations: list[list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations = iter(continuations)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == 4
        return torch.cat([input_ids, torch.tensor([next(self.continuations)])], dim=1)


def test_exact_match_scores_final_answers() -> None:
    vocab = {0: "#### 1,234", 1: "#### 7.", 2: "the answer is 7"}
    probe = GenerationProbe(
        prompts=((5, 6), (5,), (6,)),
        answers=("1234", "7", "7"),
        decode=lambda ids: " ".join(vocab[i] for i in ids),
        max_new_tokens=4,
    )
    assert final_answer("so 3 + 4 = 7\n#### $1,000.") == "1000" and final_answer("no marker") is None
    assert float(exact_match(_Echo([[0], [1], [2]]), probe)) == pytest.approx(2 / 3)
    spec = TaskSpec("gsm8k", 0, "perplexity", ("perplexity",), kind="causal_lm", probe=probe)
    evaluator = build_evaluator(spec, "test/", model=_Echo([[0], [2], [2]]))
    evaluator.update(SimpleNamespace(logits=torch.zeros(1, 3, 4)), {"labels": torch.tensor([[0, 1, 2]])})
    assert float(evaluator.compute()["test/exact_match"]) == pytest.approx(1 / 3)
