"""A shuffling sampler whose order depends only on (seed, epoch): a resumed run sees the same batches. With the
examples' lengths it groups similar lengths into the same batch, so dynamic padding pads little."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths))
        self.batch_size, self.window = batch_size, window

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.lengths is None or not self.batch_size or self.batch_size <= 1:
            return iter(order.tolist())
        batches: list[torch.Tensor] = []
        span = self.batch_size * self.window
        for start in range(0, self.n, span):
            chunk = order[start : start + span]
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            batches.extend(chunk.split(self.batch_size))
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter(torch.cat(full + short).tolist() if full or short else [])

    def __len__(self) -> int:
        return self.n
