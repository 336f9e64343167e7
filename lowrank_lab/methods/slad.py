"""`method=slad`: a larger (teacher) and a smaller (student) encoder of one family, both with LoRA, trained jointly,
their adapters shared between the two (shared/seeds/slad.txt):

    L = L_task(T) + L_task(S) + λ_kd·T²·KL(p_T^T ‖ p_S^T) + λ_feat·mean_(i,j) MSE(P h_S[j], h_T[i])

λ_kd = `kd_weight`, λ_feat = `feat_weight`, (i, j) the mapped (teacher, student) layers (`layer_map`), P a learned
linear map when the widths differ; the teacher's logits and features are targets (detached). `share` ties the
mapped layers' adapters (lowrank_lab.adapters.shared). `training=sequential` (teacher alone, then KD into the
student) with `teacher_adapter=full|probe|same` gives the seed's baselines (FT / linear-probe / LoRA teacher → KD)
in the same module, so every arm logs the same metrics: val/teacher_<m>, val/student_<m>, val/<m> (= the
student's), align/cka (linear CKA of the last hidden states), time/train_s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.adapters.lora import FullFinetune
from lowrank_lab.adapters.shared import (
    SHARE_MODES,
    base_of,
    map_layers,
    num_layers,
    save_encoder,
    save_joint,
    share_adapters,
)
from lowrank_lab.adapters.wrap import wrap
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value
from lowrank_lab.losses import KLDivergence, LogitMSE, kd_loss
from lowrank_lab.methods.base import AdapterModule
from lowrank_lab.metrics.cka import LinearCKA, feature_rows
from lowrank_lab.metrics.evaluators import build_evaluator
from lowrank_lab.models.backbone import Backbone
from lowrank_lab.teachers.pair import load_pair_teacher

ROLES = ("teacher", "student")
TEACHER_ADAPTERS = ("same", "full", "probe")


def build_teacher(
    pair: dict[str, Any], student: nn.Module, adapter: Any, num_labels: int, teacher_adapter: str = "same"
) -> tuple[nn.Module, nn.Module | None]:
    """(teacher, a copy of its base when random-init) from the pair's `model.teacher` node: with the student's
    `adapter` (same), trained in full (full), or frozen but for its task head (probe: a linear probe)."""
    pair = OmegaConf.to_container(pair, resolve=True) if isinstance(pair, DictConfig) else dict(pair)
    owner = Backbone(base_of(student), pair["name_or_path"], pair.get("tokenizer"), pair["head"], False)
    owner.teacher = pair.get("teacher")
    backbone = load_pair_teacher(owner, num_labels)  # one line if model.teacher is missing, other labels or vocabulary
    family, theirs = base_of(student).config.model_type, backbone.model.config.model_type
    if family != theirs:
        raise bad_value("model.teacher", backbone.name_or_path, f"a {family} model, the student's family, not {theirs}")
    backbone.lora_targets = backbone.lora_targets or list(pair.get("lora_targets") or [])  # default: the student's
    base_copy = copy.deepcopy(backbone.model) if backbone.random_init else None
    if teacher_adapter == "same":
        return wrap(backbone, adapter, Initializer()), base_copy
    teacher = wrap(backbone, FullFinetune())
    if teacher_adapter == "probe":  # only the head's top-level modules train (classifier / score / decode_head)
        heads = set(backbone.modules_to_save) or {"classifier", "score"}
        for name, p in teacher.named_parameters():
            p.requires_grad_(name.split(".")[0] in heads)
    return teacher, base_copy


class SLADModule(AdapterModule):
    """L = L_task(T) + L_task(S) + λ_kd·KD(T → S) + λ_feat·L_feat, adapters shared per `share` (SLAD)."""

    def __init__(
        self,
        student: nn.Module,
        task: TaskSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        pair: dict[str, Any],
        adapter: Any = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float | None = None,
        share: str = "full",
        layer_map: str | list[list[int]] = "uniform",
        kd_weight: float = 1.0,
        kd_temperature: float = 4.0,
        divergence: nn.Module | None = None,
        feat_weight: float = 1.0,
        training: str = "joint",
        teacher_epochs: int = 1,
        teacher_adapter: str = "same",
        teacher_lr: float | None = None,
    ) -> None:
        super().__init__(student, task, optimizer, scheduler, grad_clip)
        joint_lora = (training, teacher_adapter) == ("joint", "same")
        checks = [  # (key, value, ok, allowed): every bad value stops here, before the teacher is loaded
            ("method.share", share, share in SHARE_MODES, f"one of {list(SHARE_MODES)}"),
            ("method.kd_weight", kd_weight, kd_weight >= 0, "a number ≥ 0 (0 switches the term off)"),
            ("method.feat_weight", feat_weight, feat_weight >= 0, "a number ≥ 0 (0 switches the term off)"),
            ("method.kd_temperature", kd_temperature, kd_temperature > 0, "a positive number"),
            ("method.training", training, training in ("joint", "sequential"), "joint or sequential"),
            ("method.teacher_adapter", teacher_adapter, teacher_adapter in TEACHER_ADAPTERS, "same, full or probe"),
            ("method.teacher_epochs", teacher_epochs, training == "joint" or teacher_epochs >= 1, "≥ 1"),
            (
                "method.share",
                share,
                share == "none" or joint_lora,
                "none with training=sequential or teacher_adapter=full / probe (only LoRA teachers share)",
            ),
            ("method.adapter", adapter, adapter is not None or teacher_adapter == "full", "the student's peft= spec"),
            ("data", task.name, not task.generative, "a classification or segmentation task"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise bad_value(key, value, allowed)
        teacher, base_copy = build_teacher(pair, student, adapter, task.num_labels, teacher_adapter)
        self.teacher = teacher.train()
        self.__dict__["teacher_base"] = base_copy  # random-init teacher: saved next to its adapter
        self.share, self.training_mode, self.teacher_epochs = share, training, int(teacher_epochs)
        self.teacher_adapter, self.teacher_lr = teacher_adapter, teacher_lr
        self.pairs = map_layers(layer_map, num_layers(self.teacher), num_layers(self.student))
        self.shared = share_adapters(self.teacher, self.student, self.pairs, share)
        self.weights = {"teacher_task": 1.0, "student_task": 1.0, "kd": float(kd_weight), "feat": float(feat_weight)}
        self.kd_temperature = float(kd_temperature)
        self.divergence = divergence if divergence is not None else KLDivergence()
        d_t, d_s = (self._width(m) for m in (self.teacher, self.student))
        self.feature_maps = nn.ModuleList(
            nn.Identity() if d_s == d_t else nn.Linear(d_s, d_t, bias=False) for _ in self.pairs
        )
        self.evaluators = {f"{s}/{r}": build_evaluator(task, f"{s}/{r}_") for s in ("val", "test") for r in ROLES}
        self.val_metrics = nn.ModuleList(self.evaluators[f"val/{r}"].modules() for r in ROLES)
        self.test_metrics = nn.ModuleList(self.evaluators[f"test/{r}"].modules() for r in ROLES)
        self.cka = LinearCKA(d_t, d_s)  # rows (teacher, student); a torchmetrics state, summed across ranks

    @staticmethod
    def _width(model: nn.Module) -> int:
        config = model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    # ----- the objective -------------------------------------------------------------------------------
    def stage(self) -> str:
        """joint (SLAD) | teacher, then student (training=sequential)."""
        if self.training_mode == "joint":
            return "joint"
        return "teacher" if self.current_epoch < self.teacher_epochs else "student"

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted terms this stage trains; a term whose weight is 0 is not computed."""
        stage, w = self.stage(), self.weights
        hidden = stage != "teacher" and w["feat"] > 0
        if stage == "student" and self.teacher.training:
            self.teacher.eval()  # a frozen target in the KD stage: no dropout
        with torch.set_grad_enabled(stage != "student" and torch.is_grad_enabled()):
            t_out = self.teacher(**batch, output_hidden_states=hidden) if hidden else self.teacher(**batch)
        terms = {} if stage == "student" else {"teacher_task": t_out.loss}
        if stage == "teacher":
            return terms
        s_out = self.student(**batch, output_hidden_states=hidden) if hidden else self.student(**batch)
        terms["student_task"] = s_out.loss
        if w["kd"] > 0:
            terms["kd"] = self.kd(s_out.logits, t_out.logits.detach())
        if hidden:
            terms["feat"] = self.feature_loss(batch, s_out.hidden_states, t_out.hidden_states)
        return terms

    def kd(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T²·D(p_T^T ‖ p_S^T) over examples (B, C) or pixels (B, C, H, W); MSE for regression heads."""
        if self.task.dense:
            student_logits, teacher_logits = student_logits.movedim(1, -1), teacher_logits.movedim(1, -1)
        return kd_loss(
            student_logits,
            teacher_logits,
            temperature=self.kd_temperature,
            regression=self.task.regression,
            divergence=self.divergence,
        )

    def feature_loss(self, batch: dict[str, torch.Tensor], h_s: tuple, h_t: tuple) -> torch.Tensor:
        """mean over mapped (i, j) of MSE(P h_S[j], h_T[i]) over real tokens / patches; h: (B, T, d) per layer,
        index 0 the embeddings (so layer k is h[k + 1])."""
        mask = batch.get("attention_mask")
        mask = mask.bool() if mask is not None else None
        mse = LogitMSE()
        terms = [mse(p(h_s[j + 1]), h_t[i + 1].detach(), mask=mask) for (i, j), p in zip(self.pairs, self.feature_maps)]
        return torch.stack(terms).mean()

    def adapter_models(self) -> list[nn.Module]:
        """Both encoders train adapters (KaSA's regulariser counts a shared layer once per model using it)."""
        return [self.student, self.teacher]

    def forward(self, batch: dict[str, torch.Tensor]) -> None:
        """Nothing ahead of the loss: both encoders run inside `loss_terms`, as the stage needs them."""
        return None

    def training_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """L = Σ weight·term; AdapterModule.training_step then adds the adapters' regularisers (KaSA's kasa_reg)."""
        terms = self.loss_terms(batch)
        size = self._bs(batch)
        for name, value in terms.items():
            self.log(f"train/{name}_loss", value, on_step=True, on_epoch=False, batch_size=size)
        return sum(self.weights[k] * v for k, v in terms.items())  # L = Σ weight·term

    # ----- evaluation: both encoders, and how aligned they are ----------------------------------------
    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> Any:
        hidden, size = stage == "val", self._bs(batch)
        outs = {}
        for role in ROLES:
            model = getattr(self, role)
            outs[role] = model(**batch, output_hidden_states=True) if hidden else model(**batch)
            self.evaluators[f"{stage}/{role}"].update(outs[role], batch)
            self.log(f"{stage}/{role}_loss", outs[role].loss, on_epoch=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}/loss", outs["student"].loss, on_epoch=True, batch_size=size, sync_dist=True)
        if hidden:
            h_t, h_s = outs["teacher"].hidden_states[-1], outs["student"].hidden_states[-1]  # (B, T, d_T), (B, T, d_S)
            self.cka.update(*feature_rows(h_t, h_s, batch.get("attention_mask")))
        return outs["student"]

    def _log_scores(self, stage: str) -> None:
        scores = {}
        for role in ROLES:
            scores.update(self.evaluators[f"{stage}/{role}"].compute())
            self.evaluators[f"{stage}/{role}"].reset()
        plain = {k.replace(f"{stage}/student_", f"{stage}/"): v for k, v in scores.items() if "/student_" in k}
        self.log_dict(scores)
        self.log_dict(plain, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")
        if self.cka.update_called:
            self.log("align/cka", self.cka.compute().float())
        self.cka.reset()

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    # ----- optimisation: shared parameters once; a teacher lr; per-stage schedules --------------------
    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()  # Module.parameters() yields a shared tensor once
        groups: list[dict[str, Any]] = [{"params": params}]
        if self.teacher_lr is not None:
            own = {id(p) for p in self.teacher.parameters()} - {id(p) for p in self.student.parameters()}
            groups = [
                {"params": [p for p in params if id(p) in own], "lr": float(self.teacher_lr)},
                {"params": [p for p in params if id(p) not in own]},
            ]
        optimizer = self.optimizer_factory(params=[g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.training_mode == "joint":
            scheduler = self.scheduler_factory(optimizer, total_steps=total)
        else:  # each stage warms up and decays on its own
            epochs = self.trainer.max_epochs
            if not epochs or epochs <= self.teacher_epochs:
                raise bad_value("trainer.max_epochs", epochs, f"> method.teacher_epochs={self.teacher_epochs}")
            split = total * self.teacher_epochs // epochs
            first = self.scheduler_factory(optimizer, total_steps=split).lr_lambdas[0]
            second = self.scheduler_factory(optimizer, total_steps=max(1, total - split)).lr_lambdas[0]
            scheduler = LambdaLR(optimizer, lambda s: first(s) if s < split else second(s - split))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----- bookkeeping ---------------------------------------------------------------------------------
    def save_adapters(self, directory: str | Path) -> None:
        """`directory`: the student's peft adapter; `teacher/`: the teacher's; `teacher_base/`: a random-init
        teacher's base; `slad_adapters.safetensors`: every trainable tensor once (shared ones' aliases inside)."""
        directory = Path(directory)
        save_encoder(self.student, directory)
        save_encoder(self.teacher, directory / "teacher")
        if self.__dict__.get("teacher_base") is not None:
            self.__dict__["teacher_base"].save_pretrained(directory / "teacher_base")
        meta = {"share": self.share, "layer_map": self.pairs, "shared": [p.name for p in self.shared]}
        save_joint(self, directory / "slad_adapters.safetensors", meta)
