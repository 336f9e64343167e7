"""A shuffling sampler whose order depends only on (seed, epoch): a resumed run sees the same batches. With the
examples' lengths it groups similar lengths into the same batch, so dynamic padding pads little. `ResumableLoader`
is the train DataLoader over it that Lightning checkpoints mid-epoch: a resume continues with the next unseen batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Permutation of range(n) drawn from a generator seeded with `seed + epoch` (Lightning calls set_epoch).

    `lengths` + `batch_size`: length-grouped order. The permutation is cut into windows of `window` batches; each
    window is sorted by length and cut into batches; the batches are shuffled and the one short batch (if any) goes
    last, so the DataLoader's consecutive `batch_size` indices are exactly these batches. Every example is still
    seen once an epoch, in an order that depends only on (seed, epoch)."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        window: int = 50,
    ) -> None:
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} examples")
        self.n, self.seed, self.epoch = n, seed, 0
        self.start = 0  # skip the first `start` indices of the epoch's order (a mid-epoch resume)
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths))
        self.batch_size, self.window = batch_size, window

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        return iter(self._order(generator, order).tolist()[self.start :])

    def _order(self, generator: torch.Generator, order: torch.Tensor) -> torch.Tensor:
        if self.lengths is None or not self.batch_size or self.batch_size <= 1:
            return order
        batches: list[torch.Tensor] = []
        span = self.batch_size * self.window
        for start in range(0, self.n, span):
            chunk = order[start : start + span]
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            batches.extend(chunk.split(self.batch_size))
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return torch.cat(full + short) if full or short else order[:0]

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A train DataLoader with Lightning's stateful-loader interface: `state_dict()` (saved with the fit loop in
    every checkpoint) is the epoch and the batches yielded in it; after `load_state_dict`, the pass over that epoch
    starts at its first unseen batch, in the same (seed, epoch) order. Over an EpochShuffleSampler the seen batches
    are skipped by index; over another epoch-seeded sampler (Lightning's DDP wrapper) they are loaded and dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._yielded = 0, 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # a generator: this runs at the first batch, after Lightning's set_epoch (its iter() in setup_data is early)
        sampler = self.sampler
        epoch = int(getattr(sampler, "epoch", 0))
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume and resume["epoch"] == epoch else 0
        by_index = isinstance(sampler, EpochShuffleSampler)
        if by_index:
            sampler.start = skip * int(self.batch_size or 1)
        self._epoch, self._yielded = epoch, skip
        try:
            for i, batch in enumerate(super().__iter__()):
                if not by_index and i < skip:
                    continue
                self._yielded += 1
                yield batch
        finally:
            if by_index:
                sampler.start = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def train_loader(
    data: Any,
    batch_size: int,
    seed: int,
    collate_fn: Any = None,
    num_workers: int = 0,
    lengths: Sequence[int] | None = None,
) -> ResumableLoader:
    """The training loader every datamodule uses: (seed, epoch)-shuffled (length-grouped with `lengths`), resumable
    mid-epoch."""
    sampler = EpochShuffleSampler(len(data), seed, lengths=lengths, batch_size=batch_size if lengths else None)
    return ResumableLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
