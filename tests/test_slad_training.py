"""method=slad under a Lightning Trainer: teacher / student / alignment metrics every validation, the sequential
baseline's two stages and LR schedules, and vision accuracy / segmentation mIoU of both encoders against torchmetrics
on fixed labels and masks."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.methods.lr_schedules import schedule
from lowrank_lab.methods.slad import SLADModule
from lowrank_lab.models import load_backbone
from tests.test_slad import batch, one_thread, text_pair  # noqa: F401 (one_thread: autouse)


class Snapshots(L.Callback):
    """lora_B of each encoder at every epoch end; the learning rate at every step."""

    def __init__(self) -> None:
        self.teacher: list[torch.Tensor] = []
        self.student: list[torch.Tensor] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: L.Trainer, module: SLADModule) -> None:
        for role in ("teacher", "student"):
            params = [p for n, p in getattr(module, role).named_parameters() if "lora_B" in n]
            getattr(self, role).append(torch.cat([p.detach().flatten() for p in params]).clone())


def trainer(epochs: int = 1, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )


def fit(module: SLADModule, epochs: int = 1, callbacks: list | None = None) -> L.Trainer:
    loader = DataLoader([batch(seed=i) for i in range(3)], batch_size=None)
    fitted = trainer(epochs, callbacks)
    del module.log  # the real self.log
    fitted.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return fitted


def test_teacher_student_and_alignment_metrics_are_logged() -> None:
    module, _ = text_pair(share="full", scheduler=partial(schedule, name="linear", warmup_ratio=0.1))
    logged = fit(module).callback_metrics
    for key in ("val/teacher_accuracy", "val/student_accuracy", "val/accuracy", "align/cka", "time/train_s"):
        assert key in logged, key
    assert float(logged["val/accuracy"]) == float(logged["val/student_accuracy"])
    assert 0.0 <= float(logged["align/cka"]) <= 1.0


def test_sequential_training_trains_the_teacher_then_the_student() -> None:
    warmup = partial(schedule, name="linear", warmup_ratio=0.1)
    module, _ = text_pair(share="none", training="sequential", teacher_epochs=1, scheduler=warmup)
    snaps = Snapshots()
    snaps.on_train_epoch_end(None, module)  # the start: index 0
    fit(module, epochs=2, callbacks=[snaps])
    t, s = snaps.teacher, snaps.student
    assert not torch.equal(t[1], t[0]) and torch.equal(s[1], s[0])  # stage 1: the teacher alone
    assert torch.equal(t[2], t[1]) and not torch.equal(s[2], s[1])  # stage 2: KD into the student
    assert snaps.lrs[:3] == snaps.lrs[3:] and snaps.lrs[0] < snaps.lrs[1] > snaps.lrs[2]  # each warms up, decays


def vit_pair(head: str) -> SLADModule:
    """SLAD on a tiny random-init ViT pair (student 1 layer, teacher 2; 16 px, 4 px patches), 3 classes."""
    torch.manual_seed(0)
    vit = {"patch_size": 4, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    kw = {"head": head, "num_labels": 3, "random_init": True, "image_size": 16}
    backbone = load_backbone("config:vit", **kw, config_overrides={**vit, "num_hidden_layers": 1})
    spec = LoraSpec(lora_r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    teacher = {"name_or_path": "config:vit", "random_init": True, "image_size": 16}
    teacher["config_overrides"] = {**vit, "num_hidden_layers": 2}
    pair = {"teacher": teacher, "head": head, "name_or_path": "config:vit", "tokenizer": None}
    seg = head == "image_seg"
    task = TaskSpec(head, 3, *(("miou", ("miou",)) if seg else ("accuracy", ("accuracy",))), kind=head)
    return SLADModule(wrap(backbone, spec), task, partial(torch.optim.AdamW, lr=1e-2), pair=pair, adapter=spec)


@pytest.mark.parametrize("head", ["image_cls", "image_seg"])
def test_vision_metrics_equal_torchmetrics_on_fixed_labels(head: str) -> None:
    """Classification accuracy and segmentation mIoU of both encoders, as logged by validation, against
    torchmetrics' functional metrics on the same predictions and fixed labels."""
    from torchmetrics.functional.classification import multiclass_accuracy
    from torchmetrics.functional.segmentation import mean_iou

    module = vit_pair(head)
    g = torch.Generator().manual_seed(0)
    shape = (4, 16, 16) if head == "image_seg" else (4,)
    batches = [
        {"pixel_values": torch.randn(4, 3, 16, 16, generator=g), "labels": torch.randint(0, 3, shape, generator=g)}
        for _ in range(2)
    ]
    assert torch.isfinite(module.training_step(batches[0], 0))  # (pixel-wise) KD and patch-feature alignment
    logged = trainer().validate(module, DataLoader(batches, batch_size=None), verbose=False)[0]
    module.eval()
    labels = torch.cat([b["labels"] for b in batches])
    metric = "miou" if head == "image_seg" else "accuracy"
    with torch.no_grad():
        for role in ("teacher", "student"):
            preds = torch.cat([getattr(module, role)(**b).logits.argmax(1) for b in batches])  # (B,) or (B, H, W)
            if head == "image_seg":  # (B,) per-image mean IoU
                expected = mean_iou(preds, labels, num_classes=3, include_background=True, input_format="index")
            else:
                expected = multiclass_accuracy(preds, labels, num_classes=3, average="micro")
            assert logged[f"val/{role}_{metric}"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert logged[f"val/{metric}"] == logged[f"val/student_{metric}"] and "align/cka" in logged
