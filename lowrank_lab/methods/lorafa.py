"""`method=lorafa`: the LoRA-FA seed's dual objective with cyclic teacher realignment.

    L = L_task + λ·D(f_T(x), f_S(x))          λ = `align_weight`, D = `divergence` (a lowrank_lab.losses `_target_`)

f is the representation the two models are compared on (`representation`):
- `logits`: the outputs, D softened by `kd_temperature` T (T² carried by the divergence; MSE for regression heads);
- `hidden`: hidden states, mean over `hidden_match` pairs [[layer_T, layer_S], …] of D(P·h_S[j], h_T[i]) over real
  tokens, P a learned linear map when the widths differ (default pair: the last layers).

Cyclic optimisation (`cycle.task_steps`, `cycle.align_steps`): task_steps optimizer steps of self-guided task
learning (λ = 0, the teacher is not run), then align_steps steps of teacher realignment (λ), repeated; the phase is
logged as `train/phase` (0 = task, 1 = align) with `train/lambda`. task_steps = 0 aligns on every step.
Preconditioned updates are an optimizer wrapper shared by every method: `optim.precondition=true`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value
from lowrank_lab.losses import kd_loss
from lowrank_lab.methods.kd import DistillationModule

TASK, ALIGN = 0, 1


def phase(step: int, task_steps: int, align_steps: int) -> int:
    """The cycle's phase at optimizer step `step` (from 0): TASK for the first task_steps of each period of
    task_steps + align_steps steps, ALIGN after; no task steps: always ALIGN; no align steps: always TASK."""
    if task_steps == 0:
        return ALIGN
    if align_steps == 0:
        return TASK
    return TASK if step % (task_steps + align_steps) < task_steps else ALIGN


class LoRAFAModule(DistillationModule):
    """L = L_task + λ·D(f_T(x), f_S(x)) with cyclic λ; the teacher plumbing (frozen teacher, hidden maps, spectral
    targets and metrics when the teacher is fine-tuned from the student's base) is DistillationModule's."""

    def __init__(
        self,
        student: nn.Module,
        task: TaskSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        teacher: Any = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float | None = None,
        align_weight: float = 1.0,
        kd_temperature: float = 1.0,
        divergence: nn.Module | None = None,
        representation: str = "logits",
        hidden_match: list[list[int]] | None = None,
        cycle: dict[str, int] | None = None,
        n_calib: int = 2048,
        spectral_metrics: bool = True,
        kd_weight: float | None = None,
        hidden_weight: float | None = None,
        cache_teacher_logits: bool = True,
    ) -> None:
        for key, value in (("method.kd_weight", kd_weight), ("method.hidden_weight", hidden_weight)):
            if value is not None:  # kd's (1 − λ) mix and its extra hidden MSE are not this objective
                raise bad_value(key, value, "null with method=lorafa (L = L_task + λ·D, λ = method.align_weight)")
        if representation not in ("logits", "hidden"):
            raise bad_value("method.representation", representation, "logits or hidden")
        if align_weight < 0:
            raise bad_value("method.align_weight", align_weight, "a non-negative number (λ)")
        cycle = dict(cycle or {})
        steps = {k: cycle.pop(k, 0) for k in ("task_steps", "align_steps")}
        if cycle or any(not isinstance(v, int) or v < 0 for v in steps.values()):
            allowed = "{task_steps: n ≥ 0, align_steps: m ≥ 0} (0 and 0: align on every step)"
            raise bad_value("method.cycle", {**steps, **cycle}, allowed)
        pairs = (hidden_match or [[-1, -1]]) if representation == "hidden" else None
        if representation == "logits" and hidden_match:
            raise bad_value("method.hidden_match", hidden_match, "null with method.representation=logits")
        super().__init__(
            student,
            task,
            optimizer,
            teacher=teacher,
            scheduler=scheduler,
            grad_clip=grad_clip,
            kd_weight=0.0,
            kd_temperature=kd_temperature,
            divergence=divergence,
            hidden_match=pairs,
            n_calib=n_calib,
            spectral_metrics=spectral_metrics,
            cache_teacher_logits=cache_teacher_logits,
        )
        self.align_weight, self.representation = float(align_weight), representation
        self.task_steps, self.align_steps = steps["task_steps"], steps["align_steps"]

    def phase(self) -> int:
        return phase(self.global_step, self.task_steps, self.align_steps)

    # ----- the objective -------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        current = self.phase()
        lam = self.align_weight if current == ALIGN else 0.0
        size = self._bs(batch)
        self.log("train/phase", float(current), on_step=True, on_epoch=False, batch_size=size)
        self.log("train/lambda", lam, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/task_loss", outputs.loss, on_step=True, on_epoch=False, batch_size=size)
        if lam == 0.0:  # self-guided task learning: no teacher forward; maps join the graph at 0 (DDP)
            unused = sum((0.0 * p.sum() for p in self.hidden_maps.parameters()), outputs.loss.new_zeros(()))
            return outputs.loss + unused
        discrepancy = self.discrepancy(batch, outputs)  # D(f_T(x), f_S(x))
        self.log("train/align_loss", discrepancy, on_step=True, on_epoch=False, batch_size=size)
        return outputs.loss + lam * discrepancy  # L_task + λ·D

    def discrepancy(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """D between teacher and student representations of `batch` (teacher under no_grad, in eval mode)."""
        teacher_out = self.teacher_outputs(batch)  # cached logits, or a live forward (hidden states)
        mask = batch.get("attention_mask")
        if self.representation == "logits":
            s, t = outputs.logits, teacher_out.logits  # (B, C) or (B, T, V)
            token_mask = mask.bool() if mask is not None and s.dim() == 3 else None
            kw = {"regression": self.task.regression, "divergence": self.divergence, "mask": token_mask}
            return kd_loss(s, t, temperature=self.kd_temperature, **kw)
        h_s, h_t = outputs.hidden_states, teacher_out.hidden_states  # per layer: (B, T, d_S), (B, T, d_T)
        mask = mask.bool() if mask is not None else None
        terms = [
            self.divergence(p(h_s[j]), h_t[i], temperature=self.kd_temperature, mask=mask)
            for (i, j), p in zip(self.hidden_match, self.hidden_maps)
        ]
        return torch.stack(terms).mean()
