"""Per task kind: turn a model's outputs on a labelled batch into metric updates (registry by `TaskSpec.kind`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torchmetrics

from lowrank_lab.data.task import GenerationProbe, TaskSpec, final_answer
from lowrank_lab.errors import bad_value
from lowrank_lab.metrics.task_scores import task_metrics


class SequenceClassificationEvaluator:
    """logits: (n, num_labels) -> class ids, or (n, 1) -> scores for a regression head (text or image inputs)."""

    def __init__(self, task: TaskSpec, prefix: str, model: nn.Module | None = None) -> None:
        self.task, self.prefix, self.model = task, prefix, model
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


class SegmentationEvaluator(SequenceClassificationEvaluator):
    """logits: (B, C, H, W) -> per-pixel class ids (B, H, W) against label masks (B, H, W)."""

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)


@torch.no_grad()
def exact_match(model: nn.Module, probe: GenerationProbe) -> torch.Tensor:
    """Share of probe prompts whose greedy continuation has the reference `#### <answer>` (one prompt at a time,
    so no padding)."""
    device = next(model.parameters()).device
    hits = 0
    for prompt, answer in zip(probe.prompts, probe.answers):
        ids = torch.tensor([prompt], device=device)  # (1, T)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=probe.max_new_tokens,
            do_sample=False,
            eos_token_id=probe.eos_token_id,
            pad_token_id=probe.pad_token_id,
        )  # (1, T + new)
        hits += final_answer(probe.decode(out[0, ids.shape[1] :].tolist())) == answer
    return torch.tensor(hits / len(probe.answers))


class CausalLMEvaluator(SequenceClassificationEvaluator):
    """logits (B, T, V), labels (B, T): perplexity of the labelled next tokens; with a generation probe and the
    model, `exact_match` of greedy generations (computed once per epoch, capped by the probe's size)."""

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        self.metrics.update(outputs.logits[:, :-1], batch["labels"][:, 1:])  # position t predicts token t + 1

    def compute(self) -> dict[str, torch.Tensor]:
        scores = self.metrics.compute()
        if self.task.probe is not None and self.model is not None:
            scores[f"{self.prefix}exact_match"] = exact_match(self.model, self.task.probe)
        return scores


EVALUATORS: dict[str, type] = {
    "seq_cls": SequenceClassificationEvaluator,
    "image_cls": SequenceClassificationEvaluator,
    "image_seg": SegmentationEvaluator,
    "causal_lm": CausalLMEvaluator,
}


def build_evaluator(task: TaskSpec, prefix: str, model: nn.Module | None = None) -> Any:
    """The evaluator registered for `task.kind`; `model` lets generation-based metrics run (causal LM)."""
    if task.kind not in EVALUATORS:
        raise bad_value("task.kind", task.kind, f"one of {sorted(EVALUATORS)}")
    return EVALUATORS[task.kind](task, prefix, model=model)
