"""Causal-LM data: instruction batches masked to the response token by token, GSM8K's exact-match probe, a user's
jsonl through `data.path`, plain-text blocks, and the reference text for forgetting metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from lowrank_lab.data import InstructDataModule, TextDataModule
from lowrank_lab.data.instruct import encode_pair
from lowrank_lab.errors import LabError

TOKENIZER = "convert:smollm2-tokenizer"  # SmolLM2's tokenizer, converted once from the packaged GGUF


def _instruct(data_dir: Path, **kwargs) -> InstructDataModule:
    options = dict(max_length=96, batch_size=4, eval_batch_size=4, train_limit=12, val_limit=8) | kwargs
    dm = InstructDataModule(tokenizer=TOKENIZER, data_dir=str(data_dir), **options)
    dm.setup("fit")
    return dm


def test_instruct_loss_masked_to_response_token_by_token(data_dir: Path) -> None:
    dm = _instruct(data_dir)
    tok = dm.tokenizer
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape[0] == 4
    checked = 0
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        assert (ids[n:] == tok.pad_token_id).all() and (labels[n:] == -100).all()
        prompt_len = int((labels[:n] == -100).sum())
        assert (labels[:prompt_len] == -100).all() and (labels[prompt_len:n] != -100).all()  # one prompt span
        assert torch.equal(labels[prompt_len:n], ids[prompt_len:n])  # response tokens are their own targets
        prompt = tok.decode(ids[:prompt_len])
        assert "### Response:" in prompt  # a prompt cut to fit max_length keeps its end (the response marker)
        assert "### Instruction:" in prompt or n == dm.max_length
        assert "### Response:" not in tok.decode(ids[prompt_len:n])
        checked += 1
    assert checked == 4


def test_encode_pair_matches_separate_tokenisation(data_dir: Path) -> None:
    tok = _instruct(data_dir, train_limit=1, val_limit=1).tokenizer
    prompt, response = "Question: what is 2 + 3?\nAnswer: ", "2 + 3 = 5\n#### 5"
    row = encode_pair(tok, prompt, response, max_length=64)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"] == p + r and row["labels"] == [-100] * len(p) + r
    long_prompt = tok(prompt * 20, add_special_tokens=False)["input_ids"]
    short = encode_pair(tok, prompt * 20, response, max_length=16)  # prompt's head cut; response keeps >= half
    assert len(r) > 8 and short["input_ids"] == long_prompt[-8:] + r[:8]
    assert short["labels"] == [-100] * 8 + r[:8]


def test_gsm8k_probe_and_splits(data_dir: Path) -> None:
    dm = _instruct(data_dir, folder="gsm8k", format="gsm8k", exact_match_examples=3, max_new_tokens=8)
    probe = dm.task.probe
    assert dm.task.kind == "causal_lm" and dm.task.metric == "perplexity"
    assert len(probe.prompts) == 3 and probe.max_new_tokens == 8
    assert all(a.replace("-", "").replace(".", "").isdigit() for a in probe.answers)
    assert dm.tokenizer.decode(list(probe.prompts[0])).startswith("Question: ")
    assert dm.splits["test"] is dm.splits["val"] and len(dm.splits["val"]) == 8
    reference = next(iter(dm.reference_dataloader()))  # held-out general text, labelled for perplexity
    assert {"input_ids", "attention_mask", "labels"} <= set(reference)


def test_instruct_data_path_prompt_response_jsonl(tmp_path: Path) -> None:
    rows = [{"prompt": f"Say {i}:", "response": f" {i}"} for i in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = _instruct(tmp_path, path=str(path), train_limit=None, val_limit=None)
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (18, 2) and dm.task.probe is None
    first = dm.splits["train"][0]
    response = [t for t, y in zip(first["input_ids"], first["labels"]) if y != -100]
    assert dm.tokenizer.decode(response, skip_special_tokens=True).strip() == "0"


def test_instruct_bad_inputs_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text('{"text": "no prompt here"}\n' * 5)
    with pytest.raises(LabError, match=r"^data\.format='auto': rows need columns"):
        _instruct(tmp_path, path=str(path))
    with pytest.raises(LabError, match=r"^data\.path="):
        InstructDataModule(tokenizer=TOKENIZER, path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(LabError, match=r"^data\.format="):
        InstructDataModule(tokenizer=TOKENIZER, format="chatml")


def test_lm_text_blocks(data_dir: Path) -> None:
    dm = TextDataModule(tokenizer=TOKENIZER, data_dir=str(data_dir), block_size=32, batch_size=4, train_limit=10)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32) and torch.equal(batch["labels"], batch["input_ids"])
    assert batch["attention_mask"].all() and dm.task.kind == "causal_lm"
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train) == 10 and max(train.starts) + 32 <= min(val.starts)  # held-out tail, no overlap
    assert "PETRUCHIO" in dm.tokenizer.decode(torch.cat([val[i]["input_ids"] for i in range(len(val))]))
    with pytest.raises(LabError, match=r"^data\.path="):
        TextDataModule(tokenizer=TOKENIZER, path="/nonexistent/text.txt")


def test_gsm8k_hub_fallback_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No local copy under data_dir: the `datasets` name is tried and fails at once, in one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets  # noqa: F401  (imported before the clock starts: the budget is for the network attempt)

    dm = InstructDataModule(tokenizer=TOKENIZER, data_dir=str(tmp_path), folder="gsm8k", hub_name="openai/gsm8k")
    start = time.perf_counter()
    with pytest.raises(LabError, match=r"^data\.hub_name='openai/gsm8k': no local copy") as err:
        dm.setup("fit")
    assert time.perf_counter() - start < 2.0 and "\n" not in str(err.value) and "make data" in str(err.value)
    with pytest.raises(LabError, match=r"^data\.data_dir=.*make data"):  # no hub name: say where the copy goes
        InstructDataModule(tokenizer=TOKENIZER, data_dir=str(tmp_path), folder="instruct").setup("fit")
