"""Every `peft=` entry through `adapters.wrap` on the tiny BERT: parameter names, save_pretrained →
PeftModel.from_pretrained on a fresh base to equal logits; incompatible choices stop with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate
from peft import PeftModel
from transformers.pytorch_utils import Conv1D

from lowrank_lab.adapters import KasaSpec, LoraSpec, PeftBuiltinInit, load_adapter, wrap
from lowrank_lab.adapters.init import CordaInit, EvaInit
from lowrank_lab.errors import LabError
from lowrank_lab.models.backbone import Backbone
from tests.conftest import compose_config

LORA_FAMILY = ["lora", "dora", "kasa", "qv", "all_linear"]


def tiny_cfg(*overrides: str):
    """The repo's config on the tiny BERT (`overrides` come after, so they may still change the model)."""
    return compose_config("model=tiny-bert", *overrides)


def tiny_bert(cfg):
    torch.manual_seed(0)
    return instantiate(cfg.model, num_labels=2)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(5, 1000, (4, 12), generator=g), "attention_mask": torch.ones(4, 12).long()}


def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch()).logits


@pytest.mark.parametrize("entry", LORA_FAMILY)
def test_lora_parameter_names_work_on_every_lora_entry(entry: str) -> None:
    cfg = tiny_cfg(f"peft={entry}", "peft.lora_r=4", "peft.lora_alpha=16", "peft.lora_dropout=0.1")
    cfg2 = tiny_cfg(f"peft={entry}", "peft.use_rslora=true", "peft.target_modules=[key]")
    config = instantiate(cfg.peft).build("seq_cls", ["query", "value"], {"init_lora_weights": True})
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 16, 0.1)
    config2 = instantiate(cfg2.peft).build("seq_cls", ["query", "value"], {"init_lora_weights": True})
    assert config2.use_rslora and config2.target_modules == {"key"}
    assert config.use_dora == (entry == "dora") and (config.kasa_config is not None) == (entry == "kasa")


@pytest.mark.parametrize("entry", LORA_FAMILY)
def test_save_pretrained_reloads_with_peft_to_equal_logits(tmp_path: Path, entry: str) -> None:
    cfg = tiny_cfg(f"peft={entry}", "peft.lora_r=4")
    backbone = tiny_bert(cfg)
    original = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = wrap(backbone, instantiate(cfg.peft), instantiate(cfg.init))
    with torch.no_grad():  # as after training: every trainable tensor moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    expected = logits(model)
    model.save_pretrained(tmp_path)
    fresh = tiny_bert(cfg).model
    fresh.load_state_dict(original)  # the untouched base (KaSA re-truncates it on load)
    torch.testing.assert_close(logits(PeftModel.from_pretrained(fresh, str(tmp_path))), expected, atol=1e-5, rtol=0)


def test_qv_and_all_linear_targets() -> None:
    qv = wrap(tiny_bert(tiny_cfg("peft=qv")), instantiate(tiny_cfg("peft=qv").peft))
    leaves = {n.split(".")[-1] for n, m in qv.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    assert leaves == {"query", "value"}
    cfg = tiny_cfg("peft=all_linear")
    every = wrap(tiny_bert(cfg), instantiate(cfg.peft))
    adapted = {n for n, m in every.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    assert len(adapted) == 2 * 6 + 1 and not any("classifier" in n for n in adapted)  # 6 per layer + pooler


def test_full_finetune_trains_everything_and_refuses_an_init() -> None:
    cfg = tiny_cfg("peft=none")
    model = wrap(tiny_bert(cfg), instantiate(cfg.peft))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(LabError, match="init='pissa': default with peft=none"):
        wrap(tiny_bert(cfg), instantiate(cfg.peft), PeftBuiltinInit("pissa"))


def test_full_finetune_arm_of_a_lora_experiment() -> None:
    """experiment=slad sets peft.lora_r for its LoRA arms; its time baseline `arm=ft_both peft=none` still builds."""
    cfg = tiny_cfg("experiment=slad", "arm=ft_both", "peft=none", "model=tiny-bert")
    assert cfg.peft.lora_r == 8
    model = wrap(tiny_bert(cfg), instantiate(cfg.peft))
    assert all(p.requires_grad for p in model.parameters())


# ----- incompatible choices: one line naming key, value, what is allowed --------------------------------------------
def seq(*layers: nn.Module) -> Backbone:
    return Backbone(nn.Sequential(*layers), "seq", "", "none", True)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2)


def kasa_spec(targets: list[str], r: int = 2, **kw) -> KasaSpec:
    return KasaSpec(lora_r=r, lora_alpha=r, target_modules=targets, **kw)


BAD = [
    ("kasa on an embedding", lambda: wrap(seq(nn.Embedding(10, 8)), kasa_spec(["0"])), "nn.Linear layers only"),
    ("kasa on a conv", lambda: wrap(seq(nn.Conv1d(4, 4, 3)), kasa_spec(["0"])), "'0' is Conv1d"),
    (
        "kasa on MHA",
        lambda: wrap(Backbone(Attention(), "a", "", "none", True), kasa_spec(["mha"])),
        "MultiheadAttention",
    ),
    ("kasa on Conv1D (fan_in_fan_out)", lambda: wrap(seq(Conv1D(8, 8)), kasa_spec(["0"])), "'0' is Conv1D"),
    ("kasa with fan_in_fan_out", lambda: kasa_spec(["0"], extra={"fan_in_fan_out": True}), "fan_in_fan_out=True"),
    ("kasa + dora", lambda: kasa_spec(["0"], use_dora=True), "peft.use_dora=True: false with peft=kasa"),
    ("kasa r = min(in, out)", lambda: wrap(seq(nn.Linear(8, 6)), kasa_spec(["0"], r=6)), "peft.lora_r=6: less than 6"),
    (
        "pissa r > min(in, out)",
        lambda: wrap(seq(nn.Linear(8, 6)), LoraSpec(lora_r=7, target_modules=["0"]), PeftBuiltinInit("pissa")),
        "peft.lora_r=7: at most 6",
    ),
    (
        "orthogonal with an odd rank",
        lambda: wrap(seq(nn.Linear(8, 6)), LoraSpec(lora_r=3, target_modules=["0"]), PeftBuiltinInit("orthogonal")),
        "peft.lora_r=3: an even rank",
    ),
    ("kasa + eva", lambda: wrap(seq(nn.Linear(8, 6)), kasa_spec(["0"]), EvaInit()), "init='eva'"),
    (
        "corda without data",
        lambda: wrap(seq(nn.Linear(8, 6)), LoraSpec(lora_r=2, target_modules=["0"]), CordaInit()),
        "init='corda': a datamodule",
    ),
    (
        "eva without data",
        lambda: wrap(seq(nn.Linear(8, 6)), LoraSpec(lora_r=2, target_modules=["0"]), EvaInit()),
        "init='eva': a datamodule",
    ),
    ("bad beta", lambda: kasa_spec(["0"], kasa={"beta": -1.0, "gamma": 0.0}), "peft.kasa.beta=-1.0"),
]


@pytest.mark.parametrize("make,needle", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_incompatible_choice_fails_early_with_one_line(make, needle: str) -> None:
    with pytest.raises(LabError) as err:
        make()
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("first,second", [("kasa", "lora"), ("lora", "kasa")])
def test_kasa_does_not_mix_with_other_adapters(tmp_path: Path, first: str, second: str) -> None:
    def make(kind: str) -> nn.Module:
        torch.manual_seed(0)
        spec = kasa_spec(["0"]) if kind == "kasa" else LoraSpec(lora_r=2, target_modules=["0"])
        return wrap(seq(nn.Linear(8, 6)), spec)

    make(second).save_pretrained(tmp_path)
    with pytest.raises(LabError, match="adapters of one kind") as err:
        load_adapter(make(first), tmp_path, adapter_name="other")
    assert "\n" not in str(err.value)


def test_adapter_compare_arms_pick_peft_and_init() -> None:
    """Each arm of experiment=adapter_compare composes to its peft + init pair and builds; the full grid's
    `peft=… init=…` overrides still win over an arm's choice."""
    arms = {"lora": ("lora", "default"), "kasa": ("kasa", "default"), "dora": ("dora", "default")}
    arms |= {"pissa": ("lora", "pissa"), "olora": ("lora", "olora")}
    cfg = compose_config("experiment=adapter_compare", hydra=True)
    params = cfg.hydra.sweeper.params
    assert (params.adapter_arm, params.seed) == (",".join(arms), "0,1,2,3,4")
    assert cfg.data.task == "sst2" and cfg.peft.lora_r == 8 and cfg.data.heldout_fraction > 0
    for arm, choice in arms.items():
        job = compose_config("experiment=adapter_compare", f"adapter_arm={arm}", hydra=True)
        assert (job.hydra.runtime.choices.peft, job.hydra.runtime.choices.init) == choice, arm
        assert job.peft.use_dora == (arm == "dora") and job.peft._target_.endswith("KasaSpec") == (arm == "kasa")
        instantiate(job.peft).build("seq_cls", ["query", "value"], instantiate(job.init).lora_kwargs())
    grid = compose_config("experiment=adapter_compare", "adapter_arm=kasa", "peft=dora", "init=olora")
    assert grid.peft.use_dora and grid.init.init_lora_weights == "olora"
