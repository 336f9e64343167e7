"""`method=slora` around other methods: a rejected batch runs the student's forward and the gate only (no method
loss, no teacher forward), and SLoRA gates SAD with a non-constant α schedule (its own key, `alpha_schedule`, next
to SLoRA's `lr_clock`), through Lightning and through the composed `method=slora_sad` config."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
from torch.utils.data import DataLoader

from lowrank_lab.losses import LinearWarmup
from lowrank_lab.methods.base import AdapterModule
from lowrank_lab.methods.kd import DistillationModule
from lowrank_lab.methods.sad import SADModule
from lowrank_lab.methods.slora import SLoRAModule
from tests.conftest import compose_config
from tests.test_kd import batch, fake_datamodule, make_kd
from tests.test_slora import GATE, _fit, _loader, _module


class CountingModule(AdapterModule):
    """The task loss, counting how often the method's objective is computed."""

    losses = 0

    def training_loss(self, batch, outputs):
        CountingModule.losses += 1
        return outputs.loss


def test_a_rejected_batch_runs_the_forward_and_the_gate_only():
    CountingModule.losses = 0
    module = _module(inner=CountingModule, gate=dict(GATE, mode="novelty", target_novelty=0.3))
    forwards = []
    module.student.register_forward_hook(lambda *a: forwards.append(1))
    _fit(module, _loader(12))
    gate = module.gate
    assert gate.total_steps == len(forwards) == 12 and 0 < gate.accepted_steps < 12
    assert CountingModule.losses == gate.accepted_steps == module.trainer.global_step  # only accepted batches


def test_rejected_kd_batches_run_no_teacher_forward():
    teacher_calls = []
    gated = partial(SLoRAModule, DistillationModule, gate=dict(GATE, mode="novelty", target_novelty=0.3))
    module = make_kd(cls=gated)
    del module.log  # make_kd silences logging for trainer-less use; here a Trainer runs it
    module.inner.teacher.model.register_forward_hook(lambda *a: teacher_calls.append(1))
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([batch(seed=i) for i in range(10)], batch_size=None))
    assert 0 < module.gate.accepted_steps < 10
    assert len(teacher_calls) == module.gate.accepted_steps  # the KD target only for batches that train


class AlphaLog(L.Callback):
    def __init__(self) -> None:
        self.alphas: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.alphas.append(float(trainer.callback_metrics["train/alpha"]))


def test_slora_gates_sad_with_a_linear_warmup_alpha_schedule():
    warmup = partial(LinearWarmup, warmup_steps=4)
    gated = partial(SLoRAModule, SADModule, lr_clock="accepted", gate=dict(GATE, mode="none"))
    module = make_kd(cls=gated, alpha_align=2.0, alpha_schedule=warmup)
    sad = module.inner
    assert isinstance(sad, SADModule) and module.lr_clock == "accepted"
    sad.attach_targets(sad.teacher.targets(fake_datamodule(), sad.target_rank(), 64))
    del module.log
    seen = AlphaLog()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[seen],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([batch(seed=i) for i in range(6)], batch_size=None))
    assert isinstance(sad.alpha_schedule, LinearWarmup)
    assert seen.alphas == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])  # α = 2·min(1, step/4), step = accepted


def test_method_slora_sad_composes_with_a_warmup_alpha_schedule():
    from hydra.utils import instantiate

    overrides = [
        "method=slora_sad",
        "method.inner.alpha_schedule._target_=lowrank_lab.losses.LinearWarmup",
        "+method.inner.alpha_schedule.warmup_steps=10",
        "method.lr_clock=accepted",
    ]
    cfg = compose_config(*overrides)
    assert cfg.method.inner._target_.endswith("SADModule") and cfg.init._target_.endswith("SpectralInit")
    assert cfg.method.grad_clip is None and cfg.method.inner.grad_clip == 1.0  # the wrapper clips with SAD's value
    lr = compose_config("method=slora_sad", "method.optimizer.lr=3e-4", "method.inner.n_calib=512")
    assert lr.method.inner.optimizer.lr == 3e-4  # the wrapper's optimizer (method.optimizer, as for every method)
    assert lr.init.n_calib == lr.method.inner.n_calib == 512  # init=spectral and SAD extract the same targets
    for other in ("slora", "sad", "slad"):  # `schedule` means nothing anywhere any more
        assert "schedule" not in compose_config(f"method={other}").method
    schedule = instantiate(cfg.method.inner.alpha_schedule)(alpha=3.0)
    assert [schedule(s) for s in (0, 5, 10, 20)] == pytest.approx([0.0, 1.5, 3.0, 3.0])
