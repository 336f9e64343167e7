"""`method=kd`: task knowledge distillation from a frozen teacher into the adapter (KD-LoRA).

    L = (1 − λ)·L_task + λ·T²·D(p_T^T ‖ p_S^T)        (Hinton et al. 2015; D = KL by default)

λ = `kd_weight`, T = `kd_temperature`, D = `divergence` (a lowrank_lab.losses `_target_`, which carries the T²);
regression heads (STS-B) use MSE between the outputs. Optional representation distillation:
`hidden_match=[[layer_T, layer_S], …]` adds `hidden_weight`·MSE(P h_S, h_T), P a learned linear map when widths
differ. When the teacher was fine-tuned from the student's base, per-layer target subspaces are kept as buffers
and the spectral metrics run each validation.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from torch import nn

from lowrank_lab.adapters.wrap import adapted_modules
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.losses import KLDivergence, LogitMSE, kd_loss
from lowrank_lab.methods.base import AdapterModule
from lowrank_lab.teachers.logits import LogitCache, cached_logits
from lowrank_lab.teachers.module import Teacher
from lowrank_lab.teachers.settings import SAD_MISMATCH, digest


class SpectralTarget(nn.Module):
    """The teacher target of one adapted layer, as buffers: u_target (d_out, r), sigma_target (r,),
    sigma_weighted (r,). Saved in checkpoints and moved with .to(), never trained."""

    def __init__(self, u_target: torch.Tensor, sigma_target: torch.Tensor, sigma_weighted: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("u_target", u_target.float().contiguous())
        self.register_buffer("sigma_target", sigma_target.float().contiguous())
        self.register_buffer("sigma_weighted", sigma_weighted.float().contiguous())


class DistillationModule(AdapterModule):
    """L = (1 − λ)·L_task + λ·T²·D(p_T^T ‖ p_S^T) (+ hidden-state matching)."""

    needs_sad_teacher = False  # SAD overrides: its teacher must be fine-tuned from the student's base

    def __init__(
        self,
        student: nn.Module,
        task: TaskSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        teacher: Any = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float | None = None,
        kd_weight: float = 0.5,
        kd_temperature: float = 4.0,
        divergence: nn.Module | None = None,
        hidden_match: list[list[int]] | None = None,
        hidden_weight: float = 1.0,
        n_calib: int = 2048,
        spectral_metrics: bool = True,
        cache_teacher_logits: bool = True,
    ) -> None:
        super().__init__(student, task, optimizer, scheduler, grad_clip)
        if not isinstance(teacher, nn.Module):
            raise LabError(
                f"{type(self).__name__} needs a teacher model (got {type(teacher).__name__}); "
                "lowrank_lab.train builds it from method.teacher"
            )
        if not 0.0 <= kd_weight <= 1.0:
            raise bad_value("method.kd_weight", kd_weight, "a number in [0, 1] (λ: 0 = task loss only)")
        if kd_temperature <= 0:
            raise bad_value("method.kd_temperature", kd_temperature, "a positive number")
        if n_calib <= 0:
            raise bad_value("method.n_calib", n_calib, "a positive number of calibration tokens")
        self.teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
        if self.needs_sad_teacher and not self.teacher.sad_style:
            raise LabError(SAD_MISMATCH)
        self.kd_weight, self.kd_temperature = float(kd_weight), float(kd_temperature)
        self.divergence = divergence if divergence is not None else KLDivergence()
        self.n_calib, self.spectral_metrics = int(n_calib), bool(spectral_metrics)
        self.hidden_match = [tuple(int(i) for i in pair) for pair in (hidden_match or [])]
        self.hidden_weight = float(hidden_weight)
        self.hidden_maps = nn.ModuleList(self._hidden_map() for _ in self.hidden_match)
        self.targets = nn.ModuleDict()  # filled in setup() (buffers) when the teacher is SAD-style
        self.cache_teacher_logits = bool(cache_teacher_logits) and not self.hidden_match
        self.logit_cache: LogitCache | None = None  # filled in setup(): f_T(x) for every training example

    def _hidden_map(self) -> nn.Module:
        d_s, d_t = self.student.config.hidden_size, self.teacher.model.config.hidden_size
        return nn.Identity() if d_s == d_t else nn.Linear(d_s, d_t, bias=False)

    # ----- the objective -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        if self.hidden_match and self.training:
            return self.student(**batch, output_hidden_states=True)
        return self.student(**batch)

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> Any:
        """The teacher on `batch`: its cached logits when every row is in the cache, else a live forward."""
        if self.logit_cache is not None:
            logits = self.logit_cache.lookup(batch)
            if logits is not None:
                return SimpleNamespace(logits=logits.to(self.device), hidden_states=None)
        return self.teacher(batch, hidden=bool(self.hidden_match))

    def training_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        teacher_out = self.teacher_outputs(batch)
        task_loss = outputs.loss
        kd = kd_loss(
            outputs.logits,
            teacher_out.logits,
            temperature=self.kd_temperature,
            regression=self.task.regression,
            divergence=self.divergence,
        )
        loss = (1.0 - self.kd_weight) * task_loss + self.kd_weight * kd  # (1 − λ)·L_task + λ·T²·D
        size = self._bs(batch)
        self.log("train/task_loss", task_loss, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/kd_loss", kd, on_step=True, on_epoch=False, batch_size=size)
        if self.hidden_match:
            hidden = self.hidden_loss(batch, outputs.hidden_states, teacher_out.hidden_states)
            self.log("train/hidden_loss", hidden, on_step=True, on_epoch=False, batch_size=size)
            loss = loss + self.hidden_weight * hidden
        return loss

    def hidden_loss(self, batch: dict[str, torch.Tensor], h_s: tuple, h_t: tuple) -> torch.Tensor:
        """mean over pairs of MSE(P h_S[j], h_T[i]) over real tokens; h: (B, T, d) per layer."""
        mask = batch.get("attention_mask")
        mask = mask.bool() if mask is not None else None
        mse = LogitMSE()
        terms = [mse(p(h_s[j]), h_t[i], mask=mask) for (i, j), p in zip(self.hidden_match, self.hidden_maps)]
        return torch.stack(terms).mean()

    # ----- teacher target subspaces (buffers) ----------------------------------------------------------
    def adapted(self) -> dict[str, nn.Module]:
        """Student module name -> LoRA layer (looked up once: walking every module each step costs ~1 ms)."""
        if not getattr(self, "_adapted", None):
            self.__dict__["_adapted"] = adapted_modules(self.student)  # a plain dict, not registered submodules
        return self.__dict__["_adapted"]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and self.cache_teacher_logits and self.logit_cache is None and datamodule is not None:
            self.logit_cache = self.build_logit_cache(datamodule)
        if len(self.targets) or not self.teacher.sad_style:
            return
        if not (self.needs_sad_teacher or self.spectral_metrics):
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            if self.needs_sad_teacher:
                raise LabError(f"{type(self).__name__} needs the datamodule to calibrate the teacher targets")
            return
        self.attach_targets(self.teacher.targets(datamodule, self.target_rank(), self.n_calib))

    def build_logit_cache(self, datamodule: Any) -> LogitCache:
        """f_T over the training set, once per teacher + data (on disk beside the teacher when it has a cache dir)."""
        from lightning.pytorch.utilities.seed import isolate_rng

        teacher, path = self.teacher, None
        if teacher.cache_dir is not None:
            path = teacher.cache_dir / "logits" / f"{teacher.key}-{digest(teacher.data_key, 12)}.safetensors"
        with isolate_rng():  # iterating a loader draws from the global RNG: same run stream with or without cache
            return cached_logits(teacher, datamodule.train_dataloader(), path)

    def target_rank(self) -> int:
        return max(int(layer.r[layer.active_adapters[0]]) for layer in self.adapted().values())

    def attach_targets(self, targets: dict[str, dict[str, torch.Tensor]]) -> None:
        """Register each adapted layer's teacher target (keys: teacher module names, matched by suffix), cut to
        the layer's own r when a rank_pattern gives it fewer than the target_rank() columns (U_r, σ̃_r and
        sigma_target = σ(U_rᵀ ΔW_T) at that r)."""
        for name, layer in self.adapted().items():
            match = [t for t in targets if name == t or name.endswith("." + t)]
            if not match:
                raise LabError(f"method.teacher: no target for the adapted layer {name}; {SAD_MISMATCH}")
            t, r = targets[match[0]], int(layer.r[layer.active_adapters[0]])
            if r < t["u_target"].shape[1] and self.teacher.delta:  # (d_out, R) -> (d_out, r)
                U, dw = t["u_target"][:, :r], self.teacher.delta[match[0]]
                sigma = torch.linalg.svdvals(U.double().T @ dw.to(U.device, torch.float64))  # (r,)
                t = {"u_target": U, "sigma_target": sigma, "sigma_weighted": t["sigma_weighted"][:r]}
            self.targets[name.replace(".", "/")] = SpectralTarget(t["u_target"], t["sigma_target"], t["sigma_weighted"])

    def spectral_pairs(self) -> list[tuple[str, torch.Tensor, torch.Tensor, float, SpectralTarget]]:
        """(name, B (d_out, r), A (r, d_in), scaling, target) for every adapted layer with a target."""
        pairs = []
        for name, layer in self.adapted().items():
            key = name.replace(".", "/")
            if key in self.targets:
                a = layer.active_adapters[0]
                B, A, scaling = layer.lora_B[a].weight, layer.lora_A[a].weight, float(layer.scaling[a])
                pairs.append((name, B, A, scaling, self.targets[key]))
        return pairs

    def configure_callbacks(self) -> list[L.Callback]:
        if not (self.spectral_metrics and self.teacher.sad_style):
            return []
        from lowrank_lab.metrics.spectral import SpectralMetrics

        return [SpectralMetrics(pairs=self.spectral_pairs)]
