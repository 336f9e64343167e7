"""Plain text for causal-LM training: one file tokenised once, its head cut into fixed-length training blocks and
its tail into held-out blocks (perplexity)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from lowrank_lab.data.base import SplitDataModule, check_limits, load_tokenizer
from lowrank_lab.data.reference import reference_loader, reference_texts
from lowrank_lab.data.sources import cached, source_id
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError, bad_value


class Blocks(Dataset):
    """Non-overlapping windows of a token stream: item i = ids[starts[i] : starts[i] + block_size] (T,) as both
    input and labels (the model shifts)."""

    def __init__(self, ids: torch.Tensor, starts: list[int], block_size: int) -> None:
        self.ids, self.starts, self.block_size = ids, starts, block_size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.ids[self.starts[i] : self.starts[i] + self.block_size]
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": block}


class TextDataModule(SplitDataModule):
    """`data=lm_text`: train on blocks of the first (1 − val_fraction) of the file, evaluate on the rest."""

    def __init__(
        self,
        tokenizer: str,
        data_dir: str = "outputs/data",
        file: str = "text/tinyshakespeare.txt",
        path: str | None = None,
        block_size: int = 128,
        val_fraction: float = 0.1,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        reference_path: str | None = None,
        reference_examples: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, reference_examples)
        self.file = Path(path).expanduser() if path else Path(data_dir) / file
        if not self.file.is_file():
            raise bad_value("data.path" if path else "data.file", str(self.file), "an existing plain-text file")
        if self.file.stat().st_size == 0:
            raise bad_value(
                "data.path" if path else "data.file", str(self.file), "a non-empty plain-text file (0 bytes)"
            )
        if block_size < 8:
            raise bad_value("data.block_size", block_size, "an integer >= 8")
        if not 0.0 < val_fraction < 1.0:
            raise bad_value("data.val_fraction", val_fraction, "a number in (0, 1)")
        self.tokenizer_name, self.data_dir, self.block_size = tokenizer, Path(data_dir), block_size
        check_limits(train_limit=train_limit, val_limit=val_limit)
        self.val_fraction, self.train_limit, self.val_limit = val_fraction, train_limit, val_limit
        default_reference = self.data_dir / "gsm8k" / "test.jsonl"  # other text than the training file
        self.reference_path = Path(reference_path) if reference_path else default_reference
        self.task = TaskSpec(
            name=self.file.stem, num_labels=0, metric="perplexity", metrics=("perplexity",), kind="causal_lm"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_name)
        key = ("lm_text", source_id(self.file), self.tokenizer_name)  # by content: an edited file is tokenised again
        text = self.file.read_text(encoding="utf-8")
        ids = cached(self.data_dir / "cache", key, lambda: torch.tensor(self.tokenizer(text)["input_ids"]))
        cut = int(len(ids) * (1.0 - self.val_fraction))
        size = self.block_size
        train_starts = list(range(0, cut - size + 1, size))
        val_starts = list(range(cut, len(ids) - size + 1, size))
        if not train_starts or not val_starts:
            raise LabError(f"data.block_size={size}: {self.file} has too few tokens ({len(ids)}) for a block per split")
        rng = random.Random(self.seed)
        if self.train_limit is not None and self.train_limit < len(train_starts):
            train_starts = sorted(rng.sample(train_starts, self.train_limit))
        if self.val_limit is not None:
            val_starts = val_starts[: self.val_limit]
        self.splits = {"train": Blocks(ids, train_starts, size), "val": Blocks(ids, val_starts, size)}
        self.splits["test"] = self.splits["val"]
        self.collate = default_collate  # equal-length blocks: stack

    def reference_dataloader(self):
        """Held-out text other than the training file (default: GSM8K test questions) for forgetting metrics."""
        texts = reference_texts(self.reference_path, self.reference_examples)
        return reference_loader(self.tokenizer, texts, self.block_size, self.eval_batch_size, causal=True)
