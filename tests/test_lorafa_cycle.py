"""experiment=lorafa_math's `cyclic` arm, as composed, through Lightning: the phase sequence is the seed's cycle
(task steps, then teacher realignment, repeated) and a forward hook on the teacher sees no call in a task phase."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from lowrank_lab.methods.lorafa import ALIGN, TASK
from lowrank_lab.teachers.module import Teacher
from tests.conftest import REPO, compose_config
from tests.test_kd import batch, lora, task, tiny_bert


def arm(name: str):
    return compose_config("experiment=lorafa_math", f"arm={name}")


def test_arms_compose_with_their_lambda_and_cycle() -> None:
    got = {a: (arm(a).method.align_weight, dict(arm(a).method.cycle)) for a in ("task_only", "align", "cyclic")}
    assert got == {
        "task_only": (0.0, {"task_steps": 0, "align_steps": 0}),
        "align": (1.0, {"task_steps": 0, "align_steps": 0}),
        "cyclic": (1.0, {"task_steps": 4, "align_steps": 1}),
    }
    sweep = OmegaConf.load(REPO / "conf" / "experiment" / "lorafa_math.yaml").hydra.sweeper.params
    assert sweep.arm.split(",") == ["task_only", "align", "cyclic"]


class StepLog(L.Callback):
    """Per training batch: the logged phase and how many teacher forwards ran inside the step."""

    def __init__(self, calls: list[int]) -> None:
        self.calls, self.phases, self.forwards = calls, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before = len(self.calls)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.phases.append(float(trainer.callback_metrics["train/phase"]))
        self.forwards.append(len(self.calls) - self.before)


def test_cyclic_arm_runs_the_teacher_only_in_align_phases() -> None:
    cfg = arm("cyclic")
    torch.manual_seed(0)
    teacher = Teacher(tiny_bert(hidden=48, seed=3))
    calls: list[int] = []
    teacher.model.register_forward_hook(lambda module, args, out: calls.append(1))  # every teacher forward
    module = instantiate(cfg.method, student=lora(tiny_bert()), task=task(), teacher=teacher)
    task_steps, align_steps = cfg.method.cycle.task_steps, cfg.method.cycle.align_steps
    steps = task_steps + align_steps + 3  # one full cycle and the start of the next
    log = StepLog(calls)
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[log], num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([batch(seed=i) for i in range(steps)], batch_size=None))
    assert log.phases == [TASK] * task_steps + [ALIGN] * align_steps + [TASK] * 3
    assert log.forwards == [0 if p == TASK else 1 for p in log.phases]  # no teacher forward in a task phase
    assert sum(log.forwards) == align_steps == pytest.approx(len(calls))
