"""The loader side every datamodule shares: seeded shuffling, split loaders, a reference loader for
forgetting metrics (default: the first val examples without labels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lowrank_lab.data.sampler import train_loader
from lowrank_lab.errors import bad_value


def load_tokenizer(name: str) -> Any:
    """The tokenizer of `model.tokenizer` (packaged, converted, local or cached hub id); pads with eos if needed."""
    from transformers import AutoTokenizer

    from lowrank_lab.models import resolve_name_or_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_name_or_path(name, key="model.tokenizer"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_limits(**limits: int | None) -> None:
    """`data.train_limit` / `data.val_limit`: null (all rows) or a positive count; 0 would train zero steps."""
    for name, value in limits.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad_value(f"data.{name}", value, "null (all rows) or an integer >= 1")


class SplitDataModule(L.LightningDataModule):
    """Subclasses fill `self.splits` (train/val/test datasets), `self.collate` and `self.task` in `setup`."""

    def __init__(
        self, batch_size: int, eval_batch_size: int | None, num_workers: int, seed: int, reference_examples: int
    ) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.reference_examples = num_workers, seed, reference_examples
        self.splits: dict[str, Any] = {}
        self.collate: Callable[[list[dict]], dict[str, torch.Tensor]] | None = None

    def _loader(self, data: Dataset | list, size: int) -> DataLoader:
        return DataLoader(
            data,
            batch_size=size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_lengths(self) -> list[int] | None:
        """Per-example lengths when train batches should group similar lengths (less padding); None: plain
        seeded shuffling."""
        return None

    def train_dataloader(self) -> DataLoader:
        data = self.splits["train"]
        return train_loader(data, self.batch_size, self.seed, self.collate, self.num_workers, self.train_lengths())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"], self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], self.eval_batch_size)

    def reference_dataloader(self) -> DataLoader:
        """Model inputs (no labels) of the reference set used by `metrics.forgetting`."""
        val = self.splits["val"]
        count = min(len(val), self.reference_examples)
        rows = [{k: v for k, v in val[i].items() if k != "labels"} for i in range(count)]
        return self._loader(rows, self.eval_batch_size)
