"""method=kd: the objective's limits, where gradients go, a frozen untouched teacher, regression and hidden-state
matching; tiny in-process BERTs (no data files)."""

from __future__ import annotations

import copy
import hashlib
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError
from lowrank_lab.losses import JensenShannon, KLDivergence
from lowrank_lab.methods.kd import DistillationModule
from lowrank_lab.teachers.load import weight_delta
from lowrank_lab.teachers.module import Teacher

VOCAB, TARGETS = 100, ["query", "value"]


def tiny_bert(num_labels: int = 2, hidden: int = 32, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        num_labels=num_labels,
        hidden_dropout_prob=0.1,
    )
    return BertForSequenceClassification(config)


def perturbed(base: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """A 'fine-tuned' copy of base: q/v weights moved by a low-rank-ish update plus noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = copy.deepcopy(base)
    with torch.no_grad():
        for name, m in teacher.named_modules():
            if name.endswith(tuple(TARGETS)):
                d_out, d_in = m.weight.shape
                low = torch.randn(d_out, 3, generator=g) @ torch.randn(3, d_in, generator=g)
                m.weight += scale * (low + 0.1 * torch.randn(d_out, d_in, generator=g))
    return teacher


def lora(model: torch.nn.Module, r: int = 4, alpha: float | None = None) -> torch.nn.Module:
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha or r, target_modules=TARGETS)
    return get_peft_model(model, cfg)


def batch(n: int = 4, length: int = 12, num_labels: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one padded row
    labels = torch.rand(n, generator=g) * 5 if num_labels == 1 else torch.randint(0, num_labels, (n,), generator=g)
    return {"input_ids": torch.randint(1, VOCAB, (n, length), generator=g), "attention_mask": mask, "labels": labels}


def fake_datamodule(num_batches: int = 4, seed: int = 0) -> SimpleNamespace:
    batches = [batch(seed=seed + i) for i in range(num_batches)]
    return SimpleNamespace(train_dataloader=lambda: iter(batches))


def task(num_labels: int = 2) -> TaskSpec:
    regression = num_labels == 1
    metric = "spearman" if regression else "accuracy"
    return TaskSpec("t", num_labels, metric, (metric,), regression=regression)


def make_kd(kd_weight: float = 0.5, num_labels: int = 2, sad_teacher: bool = True, cls=DistillationModule, **kw):
    base = tiny_bert(num_labels)
    teacher_model = perturbed(base) if sad_teacher else tiny_bert(num_labels, hidden=48, seed=3)
    names = [n for n, _ in base.named_modules() if n.endswith(tuple(TARGETS))]
    delta = weight_delta(teacher_model, base, names) if sad_teacher else None
    student = lora(base)
    opt = partial(torch.optim.AdamW, lr=1e-2)
    module = cls(
        student=student,
        task=task(num_labels),
        optimizer=opt,
        teacher=Teacher(teacher_model, delta=delta),
        kd_weight=kd_weight,
        **kw,
    )
    module.log = lambda *a, **k: None  # no trainer attached
    return module


def weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_kd_loss_equals_task_loss_when_lambda_is_zero() -> None:
    module = make_kd(kd_weight=0.0)
    b = batch()
    out = module(b)
    assert torch.equal(module.training_loss(b, out), out.loss)


def test_kd_loss_mixes_task_and_t2_kl() -> None:
    module = make_kd(kd_weight=0.3, kd_temperature=2.0)
    module.eval()  # no dropout: the forward below is deterministic
    b = batch()
    out = module(b)
    t = module.teacher(b).logits
    p_t = torch.softmax(t / 2.0, -1)
    kl = (p_t * (torch.log_softmax(t / 2.0, -1) - torch.log_softmax(out.logits / 2.0, -1))).sum(-1).mean()
    expected = 0.7 * out.loss + 0.3 * 4.0 * kl
    torch.testing.assert_close(module.training_loss(b, out), expected, rtol=1e-5, atol=1e-6)


def test_divergence_is_configurable() -> None:
    module = make_kd(kd_weight=1.0, divergence=JensenShannon())
    b = batch()
    out = module(b)
    expected = JensenShannon()(out.logits, module.teacher(b).logits, temperature=module.kd_temperature)
    torch.testing.assert_close(module.training_loss(b, out), expected)
    assert isinstance(make_kd().divergence, KLDivergence)


def test_regression_head_uses_mse_between_outputs() -> None:
    module = make_kd(kd_weight=1.0, num_labels=1)
    b = batch(num_labels=1)
    out = module(b)
    expected = (out.logits - module.teacher(b).logits).square().mean()
    torch.testing.assert_close(module.training_loss(b, out), expected)


def test_gradient_flows_only_to_adapter_and_head() -> None:
    module = make_kd(kd_weight=0.5)
    module.train()
    b = batch()
    module.training_loss(b, module(b)).backward()
    got = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got, "no gradient at all"
    assert all("lora_" in n or "modules_to_save" in n for n in got), sorted(got)
    assert any("lora_B" in n for n in got) and any("modules_to_save" in n for n in got)
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    trainable = {n for n, _ in module.named_parameters() if _.requires_grad}
    assert trainable == {n for n, p in module.named_parameters() if "lora_" in n or "modules_to_save" in n}


def test_teacher_untouched_by_a_training_step_and_stays_in_eval() -> None:
    module = make_kd(kd_weight=0.5)
    before = weights_hash(module.teacher)
    optimizer = module.optimizer_factory(params=module.trainable_parameters())
    module.train()  # Lightning's call: must not switch the teacher's dropout on
    assert not module.teacher.training and not any(m.training for m in module.teacher.modules())
    b = batch()
    student_before = weights_hash(module.student)
    loss = module.training_loss(b, module(b))
    loss.backward()
    optimizer.step()
    assert weights_hash(module.teacher) == before
    assert weights_hash(module.student) != student_before
    t1, t2 = module.teacher(b).logits, module.teacher(b).logits
    assert torch.equal(t1, t2) and not t1.requires_grad


def test_hidden_match_learns_a_map_when_widths_differ() -> None:
    module = make_kd(kd_weight=0.5, sad_teacher=False, hidden_match=[[2, 2], [1, 1]], hidden_weight=0.5)
    assert isinstance(module.hidden_maps[0], torch.nn.Linear)
    assert module.hidden_maps[0].weight.shape == (48, 32) and module.hidden_maps[0].weight.requires_grad
    module.train()
    b = batch()
    module.training_loss(b, module(b)).backward()
    assert module.hidden_maps[0].weight.grad is not None
    assert all(p.grad is None for p in module.teacher.parameters())


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(LabError, match="method.kd_weight=1.5"):
        make_kd(kd_weight=1.5)
    with pytest.raises(LabError, match="method.kd_temperature"):
        make_kd(kd_temperature=0.0)
    with pytest.raises(LabError, match="needs a teacher"):
        DistillationModule(student=lora(tiny_bert()), task=task(), optimizer=torch.optim.AdamW, teacher={"lr": 1})
