"""GLUE as one LightningDataModule: a task table (text keys, labels, metric), three sources (local files from
`make data`, a user's `data.path`, `datasets.load_dataset("glue", task)`), cached tokenisation."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader

from lowrank_lab.data.base import SplitDataModule, check_limits, load_tokenizer
from lowrank_lab.data.collate import PadCollator
from lowrank_lab.data.sources import load_table, tokenize_cached
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError, bad_value


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its TSVs live, how their columns map to the `datasets` names, how it is scored."""

    folder: str
    text_keys: tuple[str, ...]
    columns: dict[str, str] = field(default_factory=dict)  # TSV header -> datasets column name
    names: tuple[str, ...] | None = None  # for header-less TSVs (CoLA)
    label_map: dict[str, int] | None = None
    num_labels: int = 2
    metric: str = "accuracy"
    metrics: tuple[str, ...] = ("accuracy",)


GLUE_TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask("SST-2", ("sentence",)),
    "mrpc": GlueTask(
        "MRPC",
        ("sentence1", "sentence2"),
        {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
        metric="f1",
        metrics=("f1", "accuracy"),
    ),
    "stsb": GlueTask(
        "STS-B",
        ("sentence1", "sentence2"),
        {"score": "label"},
        num_labels=1,
        metric="spearman",
        metrics=("spearman", "pearson"),
    ),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), label_map={"entailment": 0, "not_entailment": 1}),
    "cola": GlueTask(
        "CoLA", ("sentence",), names=("source", "label", "marker", "sentence"), metric="mcc", metrics=("mcc",)
    ),
    "qnli": GlueTask("QNLI", ("question", "sentence"), label_map={"entailment": 0, "not_entailment": 1}),
}


class GlueDataModule(SplitDataModule):
    """Train / val / test loaders for one GLUE task. GLUE test labels are hidden, so `test` is the labelled dev
    split; with `heldout_fraction > 0`, `val` is carved from train (seeded) for model selection."""

    def __init__(
        self,
        task: str,
        tokenizer: str,
        data_dir: str = "outputs/data",
        path: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        heldout_fraction: float = 0.0,
        seed: int = 0,
        group_by_length: bool = True,
        epochs: int = 1,
    ) -> None:
        if task not in GLUE_TASKS:
            raise bad_value("data.task", task, f"one of {sorted(GLUE_TASKS)}")
        if path is not None and not Path(path).expanduser().exists():
            raise bad_value("data.path", path, "a local csv/tsv/json/jsonl/parquet file or a folder of them")
        if max_length < 8:
            raise bad_value("data.max_length", max_length, "an integer >= 8")
        check_limits(train_limit=train_limit, val_limit=val_limit)
        super().__init__(batch_size, eval_batch_size, num_workers, seed, reference_examples=64)
        self.name, self.spec = task, GLUE_TASKS[task]
        self.tokenizer_name, self.data_dir, self.path = tokenizer, Path(data_dir), path
        self.max_length = max_length
        self.group_by_length = group_by_length  # train batches of similar length: less padding, same examples
        self.epochs = epochs  # the budget this task needs to learn with the default model (trainer.max_epochs)
        self.train_limit, self.val_limit, self.heldout_fraction = train_limit, val_limit, heldout_fraction
        self.task = TaskSpec(
            name=task,
            num_labels=self.spec.num_labels,
            metric=self.spec.metric,
            metrics=self.spec.metrics,
            regression=self.spec.num_labels == 1,
        )

    def _layout(self) -> tuple:
        spec = self.spec
        return spec.columns, spec.names, spec.label_map, self.task.regression, spec.text_keys, spec.num_labels

    def _rows(self) -> tuple[list[dict], list[dict], str]:
        """Raw rows (train, dev) and a string naming their source (part of the tokenisation cache key)."""
        if self.path is not None:
            return load_table(Path(self.path).expanduser(), *self._layout(), key="data.path")
        local = self.data_dir / "glue" / self.spec.folder
        if local.exists():
            return load_table(local, *self._layout(), key="paths.data_dir")
        from lowrank_lab.data.sources import load_hub_glue

        return load_hub_glue(self.name)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, dev, source = self._rows()
        if not train or not dev:
            raise LabError(f"data.task={self.name!r}: source {source} has an empty train or dev split")
        rng = random.Random(self.seed)
        if self.train_limit is not None and self.train_limit < len(train):
            train = [train[i] for i in sorted(rng.sample(range(len(train)), self.train_limit))]
        if self.val_limit is not None and self.val_limit < len(dev):
            dev = [dev[i] for i in sorted(rng.sample(range(len(dev)), self.val_limit))]
        raw = {"train": train, "val": dev, "test": dev}
        if self.heldout_fraction > 0:
            idx = list(range(len(train)))
            rng.shuffle(idx)
            cut = max(1, int(len(idx) * self.heldout_fraction))
            raw["val"] = [train[i] for i in sorted(idx[:cut])]
            raw["train"] = [train[i] for i in sorted(idx[cut:])]
        self.tokenizer = load_tokenizer(self.tokenizer_name)
        cache_dir = self.data_dir / "cache"
        for split, rows in raw.items():
            key = (
                self.name,
                split,
                source,
                self.tokenizer_name,
                self.max_length,
                len(rows),
                self.seed,
                self.heldout_fraction,
                self.train_limit,
                self.val_limit,
            )
            self.splits[split] = tokenize_cached(
                rows, self.tokenizer, self.spec.text_keys, self.max_length, cache_dir, key
            )
        self.collate = PadCollator(self.tokenizer.pad_token_id, regression=self.task.regression)

    def train_lengths(self) -> list[int] | None:
        return [len(row["input_ids"]) for row in self.splits["train"]] if self.group_by_length else None

    def reference_dataloader(self) -> DataLoader:
        """General text held out from every task (the end of tiny-shakespeare) for `metrics.forgetting`; the dev
        sentences (no labels) when that file is absent."""
        from lowrank_lab.data.reference import reference_loader, reference_texts

        text = self.data_dir / "text" / "tinyshakespeare.txt"
        if text.is_file():
            texts = reference_texts(text, self.reference_examples, chars=300)
            return reference_loader(self.tokenizer, texts, self.max_length, self.eval_batch_size)
        return super().reference_dataloader()
