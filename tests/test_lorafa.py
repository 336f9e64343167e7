"""method=lorafa: L = L_task + λ·D against direct formulas, gradients only to adapters, a frozen teacher, the cyclic
phase sequence (logged and run through Lightning), save.merged loading in plain transformers, and the seed's command
line end to end through run.py into MLflow."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lowrank_lab.errors import LabError
from lowrank_lab.losses import HiddenCosine, JensenShannon
from lowrank_lab.methods.lorafa import ALIGN, TASK, LoRAFAModule, phase
from lowrank_lab.optim import lora_pairs
from lowrank_lab.teachers.module import Teacher
from lowrank_lab.train import save_merged
from tests.conftest import REPO, compose_config, mlflow_runs, run_cli
from tests.test_kd import batch, lora, task, tiny_bert, weights_hash


def make_lorafa(log: bool = False, **kw) -> LoRAFAModule:
    """A LoRA student (32 wide) and a wider teacher (48) with the same label space."""
    teacher = Teacher(tiny_bert(hidden=48, seed=3))
    module = LoRAFAModule(lora(tiny_bert()), task(), partial(torch.optim.AdamW, lr=1e-2), teacher=teacher, **kw)
    if not log:
        module.log = lambda *a, **k: None  # no trainer attached
    return module


def test_loss_is_the_task_loss_when_lambda_is_zero() -> None:
    module = make_lorafa(align_weight=0.0)
    b = batch()
    out = module(b)
    assert torch.equal(module.training_loss(b, out), out.loss)


def test_loss_is_task_plus_lambda_times_divergence_on_logits() -> None:
    module = make_lorafa(align_weight=0.7, kd_temperature=2.0, divergence=JensenShannon()).eval()  # no dropout
    b = batch()
    out = module(b)
    p_s, p_t = (torch.softmax(x / 2.0, -1) for x in (out.logits, module.teacher(b).logits))
    m = (p_s + p_t) / 2
    js = 0.5 * ((p_t * (p_t / m).log()).sum(-1) + (p_s * (p_s / m).log()).sum(-1)).mean()
    torch.testing.assert_close(module.training_loss(b, out), out.loss + 0.7 * 4.0 * js, rtol=1e-5, atol=1e-6)


def test_hidden_representation_learns_a_map_and_only_adapters_get_gradients() -> None:
    module = make_lorafa(align_weight=0.5, representation="hidden", divergence=HiddenCosine())
    assert module.hidden_maps[0].weight.shape == (48, 32)  # P: student width -> teacher width
    module.train()
    b = batch()
    before = weights_hash(module.teacher)
    optimizer = module.optimizer_factory(params=module.trainable_parameters())
    module.training_loss(b, module(b)).backward()
    got = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_B" in n for n in got) and any(n.startswith("hidden_maps") for n in got)
    assert all("lora_" in n or "modules_to_save" in n or n.startswith("hidden_maps") for n in got), sorted(got)
    frozen = [n for n, p in module.student.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
    assert frozen and not any(module.student.get_parameter(n).requires_grad for n in frozen)
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    optimizer.step()
    assert weights_hash(module.teacher) == before and not module.teacher.training


def test_phase_sequence() -> None:
    assert [phase(s, 2, 3) for s in range(10)] == [TASK] * 2 + [ALIGN] * 3 + [TASK] * 2 + [ALIGN] * 3
    assert {phase(s, 0, 0) for s in range(5)} == {ALIGN} and {phase(s, 4, 0) for s in range(5)} == {TASK}


class PhaseLog(L.Callback):
    def __init__(self) -> None:
        self.phases: list[float] = []
        self.lambdas: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.phases.append(float(trainer.callback_metrics["train/phase"]))
        self.lambdas.append(float(trainer.callback_metrics["train/lambda"]))


def test_cycle_through_lightning_runs_the_teacher_only_when_aligning() -> None:
    module = make_lorafa(log=True, align_weight=0.3, cycle={"task_steps": 2, "align_steps": 1})
    calls = []
    forward = module.teacher.forward
    module.teacher.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    seen = PhaseLog()
    trainer = L.Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch(seed=i) for i in range(6)], batch_size=None))
    assert seen.phases == [TASK, TASK, ALIGN] * 2 and seen.lambdas == pytest.approx([0.0, 0.0, 0.3] * 2)
    assert len(calls) == 2


BAD = [
    ({"representation": "embeddings"}, "method.representation='embeddings'"),
    ({"align_weight": -1.0}, "method.align_weight=-1.0"),
    ({"cycle": {"task_steps": -1}}, "method.cycle="),
    ({"cycle": {"task_step": 2}}, "method.cycle="),
    ({"kd_weight": 0.5}, "method.kd_weight=0.5"),
    ({"hidden_match": [[1, 1]]}, "method.hidden_match="),
]


@pytest.mark.parametrize("kw,needle", BAD, ids=[n for _, n in BAD])
def test_bad_settings_are_one_line_errors(kw: dict, needle: str) -> None:
    with pytest.raises(LabError, match=needle.replace(".", r"\.").replace("[", r"\[")) as err:
        make_lorafa(**kw)
    assert "\n" not in str(err.value)


def test_save_merged_loads_in_plain_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    student = lora(tiny_bert()).eval()
    with torch.no_grad():
        for _, b in lora_pairs(student):
            b.normal_(std=0.1)  # ΔW ≠ 0, so the merge matters
    b = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        expect = student(**b).logits
    save_merged(student, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**b).logits, expect, atol=1e-5, rtol=0)


def test_causal_lm_teacher_judged_against_unigram_perplexity() -> None:
    from lowrank_lab.errors import LabError
    from lowrank_lab.teachers.prepare import check_quality
    from lowrank_lab.teachers.settings import TeacherSettings

    # perplexity: lower is better, a teacher must be ≥ 10 % below the unigram model's (metrics.baseline.MARGINS)
    assert check_quality({"metric": "perplexity", "dev": 9.0, "majority": None}, TeacherSettings(), "t") is None
    assert check_quality({"metric": "perplexity", "dev": 9.0, "majority": 100.0}, TeacherSettings(), "t") is None
    with pytest.raises(LabError, match="require_better_than_majority=false"):
        check_quality({"metric": "perplexity", "dev": 95.0, "majority": 100.0}, TeacherSettings(), "t")


ARMS = [("lorafa_math", "init=default"), ("lorafa_math", "init=gradient"), ("init_compare", "init=loraga")]


@pytest.mark.parametrize("experiment,arm", ARMS, ids=[f"{e}-{a}" for e, a in ARMS])
def test_experiments_compose_for_every_arm(experiment: str, arm: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_config(f"experiment={experiment}", arm)
    instantiate(cfg.init)  # the experiment adds no keys an init does not take
    sweep = OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    assert len(sweep.seed.split(",")) >= 3 and "gradient" in sweep.init and experiment in cfg.tags
    if experiment == "lorafa_math":
        assert cfg.model.head == "causal_lm" and cfg.data.format == "gsm8k" and cfg.peft.use_rslora
    else:
        assert set(sweep.init.split(",")) == {"default", "pissa", "loraga", "gradient"}
        assert instantiate(cfg.init).direction == "ArB2r"


# ----- e2e: the seed's command line (its `+` spellings), under method=lorafa with cycle, preconditioning, merge ------
SEED = "+init=gradient ++init.direction=LoRA-FA init.scale=stable ++init.stable_gamma=128 init.bsz=2 init.iters=2 "
SEED += "+peft=qv peft.lora_r=4 peft.use_rslora=true peft.lora_alpha=8"
SMALL = "model=tiny-bert trainer=debug data.train_limit=96 data.batch_size=16 data.val_limit=32 data.max_length=32 "
SMALL += "method.teacher.max_steps=2 method.teacher.require_better_than_majority=false threads=1"
LORAFA = "method=lorafa method.cycle.task_steps=1 method.cycle.align_steps=2 optim.precondition=true save.merged=true"


@pytest.mark.slow
def test_seed_command_line_runs_and_logs_to_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForSequenceClassification

    proc = run_cli([*SEED.split(), *SMALL.split(), *LORAFA.split()], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = mlflow_runs(tmp_path)
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    expect = {"init.direction": "LoRA-FA", "init.scale": "stable", "init.stable_gamma": "128", "init.bsz": "2"}
    expect |= {"peft.lora_r": "4", "peft.use_rslora": "True", "optim.precondition": "True", "save.merged": "True"}
    expect |= {"init.whiten": "True", "init.offset": "False"}  # the seed's LoRA-FA: whitened, no base offset
    assert {k: params.get(k) for k in expect} == expect
    assert "query" in params["peft.target_modules"] and "val/accuracy" in metrics and "train/align_loss" in metrics
    assert "lr-AdamW" in metrics  # preconditioning keeps the LR metric's name, so sweeps over it compare one curve
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    phases = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/phase"), key=lambda m: m.step)]
    assert phases == [TASK, ALIGN, ALIGN, TASK]  # 96 examples / 16, capped at 4 batches by trainer=debug
    (job,) = [p for p in (tmp_path / "runs").glob("*/*") if (p / "adapter").is_dir()]
    assert not (job / "adapter" / "init_offset.safetensors").exists()  # LoRA-FA moves nothing out of the base
    AutoModelForSequenceClassification.from_pretrained(job / "merged")
