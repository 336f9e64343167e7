"""A frozen teacher's logits over the training set, computed once and looked up by example content.

Logit KD only needs f_T(x) for each training example, and the teacher never changes: running it every step costs a
second forward per batch. The cache runs the teacher once over the train loader, keys each example by a 64-bit
hash of its model inputs (padding removed), and saves (keys, logits) as safetensors beside the teacher, so every job
that distils from the same teacher on the same data loads it instead.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lowrank_lab.cache import atomic_write, get_or_build

SKIP = ("labels",)


def example_keys(batch: dict[str, torch.Tensor]) -> list[int]:
    """One int64 key per row of `batch` from its model inputs; token tensors (B, T) are cut at the attention mask,
    so the same example padded to different lengths has the same key."""
    inputs = {k: v for k, v in sorted(batch.items()) if k not in SKIP and isinstance(v, torch.Tensor)}
    mask = inputs.get("attention_mask")
    keys = []
    for i in range(int(next(iter(inputs.values())).shape[0])):
        h = hashlib.blake2b(digest_size=8)
        keep = mask[i].bool() if mask is not None else None
        for name, value in inputs.items():
            row = value[i]
            if keep is not None and row.dim() == 1 and row.shape[0] == keep.shape[0]:
                row = row[keep]
            h.update(name.encode())
            h.update(row.detach().cpu().contiguous().numpy().tobytes())
        keys.append(int.from_bytes(h.digest(), "little", signed=True))
    return keys


class LogitCache:
    """keys (N,) int64 -> logits (N, ...) float32; `lookup(batch)` gives (B, ...) or None when a row is missing."""

    def __init__(self, keys: torch.Tensor, logits: torch.Tensor) -> None:
        self.logits = logits.float()
        self.index = {int(k): i for i, k in enumerate(keys.tolist())}
        self.hits, self.misses = 0, 0

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        rows = [self.index.get(k) for k in example_keys(batch)]
        if any(r is None for r in rows):
            self.misses += 1
            return None
        self.hits += 1
        return self.logits[torch.tensor(rows)]

    @staticmethod
    @torch.no_grad()
    def build(teacher: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> LogitCache:
        """Run `teacher(batch)` (a lowrank_lab Teacher: eval mode, no grad) over `batches` once."""
        from tqdm.auto import tqdm

        keys, logits = [], []
        device = next(teacher.parameters()).device
        for batch in tqdm(batches, desc="teacher logits", leave=False, file=sys.stderr):
            keys += example_keys(batch)
            out = teacher({k: v.to(device) for k, v in batch.items() if k not in SKIP})
            logits.append(out.logits.float().cpu())
        return LogitCache(torch.tensor(keys, dtype=torch.int64), torch.cat(logits))

    def save(self, path: Path) -> None:
        """Atomic write (temp file + rename) so a reader never sees half a file."""
        atomic_write(path, self._write)

    def _write(self, path: Path) -> None:
        keys = torch.tensor(list(self.index), dtype=torch.int64)
        rows = torch.tensor(list(self.index.values()), dtype=torch.long)
        save_file({"keys": keys, "logits": self.logits[rows].contiguous()}, str(path))

    @staticmethod
    def load(path: Path) -> LogitCache:
        tensors = load_file(str(path))
        return LogitCache(tensors["keys"], tensors["logits"])


def cached_logits(teacher: torch.nn.Module, batches: Iterable[dict], path: Path | None) -> LogitCache:
    """The cache at `path`, built (once, under a cross-process lock) when missing or unreadable."""
    if path is None:
        return LogitCache.build(teacher, batches)

    def load(path: Path) -> LogitCache:
        cache = LogitCache.load(path)
        print(f"teacher logits: cached {path} ({len(cache)} examples)", file=sys.stderr, flush=True)
        return cache

    def build() -> LogitCache:
        cache = LogitCache.build(teacher, batches)
        print(f"teacher logits: built {path} ({len(cache)} examples)", file=sys.stderr, flush=True)
        return cache

    return get_or_build(path, build, load, save=lambda cache, tmp: cache._write(tmp), what="teacher logits")
