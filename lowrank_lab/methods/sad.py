"""`method=sad`: SAD-LoRA — logit distillation plus alignment of the adapter's column space with the teacher's
data-weighted target subspace U_target (leading left singular vectors of ΔW_T Σ^{1/2}).

    L_SAD = L_KD + α·L_align + β·L_coeff                                            (SAD-LoRA, Eq. 3)
    L_align = Σ_layers Σᵢ sin²θᵢ(colspan B, U_target),  L_coeff = Σ_layers ‖σ(U_targetᵀ·s·BA) − σ_target‖² / ‖σ_target‖²

Step-0 rule: with peft's default init B = 0, colspan(B) is undefined; grassmann_alignment then returns a zero
that stays in the graph, so the KD term moves B off zero and the alignment acts from step 1 on. Its gradient then
grows like 1/σ_min(B) while B is tiny, which under Adam left the student at the majority class in our runs for
any α; conf/method/sad.yaml therefore selects init=spectral (B = U_r, L_align = 0 from step 0).
"""

from __future__ import annotations

import functools
import inspect
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.losses import AlphaSchedule, ConstantSchedule, coefficient_loss, grassmann_alignment
from lowrank_lab.methods.kd import DistillationModule


def alignment(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ over (B (d_out, r), U (d_out, r_t)) pairs of grassmann_alignment(B, U), batched over pairs of one shape:
    one QR and one host sync per shape instead of per layer. Zero or rank-deficient B (or r > d_out) falls back
    to grassmann_alignment, so the value and gradient are the same."""
    groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for B, U in pairs:
        groups[(tuple(B.shape), tuple(U.shape))].append((B, U))
    terms = []
    with torch.autocast(device_type=pairs[0][0].device.type, enabled=False):
        for ((d, r), (_, r_t)), items in groups.items():
            dtype = torch.float64 if any(b.dtype == torch.float64 for b, _ in items) else torch.float32
            Bs = torch.stack([b.to(dtype) for b, _ in items])  # (L, d, r)
            Us = torch.stack([u.to(Bs.device, dtype) for _, u in items])  # (L, d, r_t)
            if r <= d:
                Q, R = torch.linalg.qr(Bs)  # (L, d, r), (L, r, r)
                S = torch.linalg.svdvals(R.detach())  # σ(R) = σ(B), descending
                if bool((S[:, -1] > max(d, r) * torch.finfo(dtype).eps * S[:, 0]).all()):  # the one sync
                    M = Q.transpose(1, 2) @ Us  # (L, r, r_t): cosines of the principal angles
                    residual = Us - Q @ M if r >= r_t else Q - Us @ M.transpose(1, 2)
                    terms.append(residual.square().sum())
                    continue
            terms.extend(grassmann_alignment(b, u) for b, u in items)
    return torch.stack([t.to(terms[0].dtype) for t in terms]).sum()


class SADModule(DistillationModule):
    """L_SAD = L_KD + α·L_align + β·L_coeff (SAD-LoRA, Eq. 3); α = alpha_schedule(step) with peak `alpha_align`."""

    needs_sad_teacher = True

    def __init__(
        self,
        alpha_align: float = 1.0,
        beta_coeff: float = 0.0,
        alpha_schedule: Callable[..., AlphaSchedule] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if alpha_align < 0:
            raise bad_value("method.alpha_align", alpha_align, "a number >= 0 (α, the weight of L_align)")
        if beta_coeff < 0:
            raise bad_value("method.beta_coeff", beta_coeff, "a number >= 0 (β, the weight of L_coeff)")
        self.alpha_align, self.beta_coeff = float(alpha_align), float(beta_coeff)
        self.schedule_factory = alpha_schedule or ConstantSchedule  # `method.alpha_schedule`, a `_partial_`
        self.alpha_schedule: AlphaSchedule | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)  # registers the U_target / sigma_target buffers
        if self.alpha_schedule is None:
            self.alpha_schedule = self._build_schedule()

    def _build_schedule(self) -> AlphaSchedule:
        """Complete the `_partial_` schedule with α and, if it takes one and it is not set, the run's length."""
        factory, kwargs = self.schedule_factory, {"alpha": self.alpha_align}
        bound = factory.keywords if isinstance(factory, functools.partial) else {}
        takes_total = "total_steps" in inspect.signature(factory).parameters and "total_steps" not in bound
        if takes_total and self._trainer is not None:
            kwargs["total_steps"] = max(1, int(self.trainer.estimated_stepping_batches))
        return factory(**kwargs)

    def training_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        loss = super().training_loss(batch, outputs)  # L_KD
        if self.alpha_schedule is None:
            self.alpha_schedule = self._build_schedule()
        pairs = self.spectral_pairs()
        if not pairs:
            raise LabError("method=sad: no teacher targets attached; fit with a datamodule or call attach_targets")
        align = alignment([(B, t.u_target) for _, B, _, _, t in pairs])  # Σ_layers Σᵢ sin²θᵢ
        alpha = self.alpha_schedule(int(self.global_step), alignment=align.detach())
        loss = loss + alpha * align.to(loss.dtype)
        size = self._bs(batch)
        self.log("train/align", align, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/alpha", float(alpha), on_step=True, on_epoch=False, batch_size=size)
        if self.beta_coeff > 0:
            coeff = torch.stack(
                [coefficient_loss(B, A, t.u_target, t.sigma_target, s) for _, B, A, s, t in pairs]
            ).sum()
            loss = loss + self.beta_coeff * coeff.to(loss.dtype)
            self.log("train/coeff", coeff, on_step=True, on_epoch=False, batch_size=size)
        return loss

    # ----- the α schedule's state follows the checkpoint (adaptive α resumes where it stopped) ----------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.alpha_schedule is not None:
            checkpoint["alpha_schedule"] = self.alpha_schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("alpha_schedule")
        if state:
            if self.alpha_schedule is None:
                self.alpha_schedule = self._build_schedule()
            self.alpha_schedule.load_state_dict(state)
