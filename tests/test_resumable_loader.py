"""ResumableLoader: stopped after k batches of an epoch and restored into a fresh loader, the rest of the epoch is
the uninterrupted order's tail — by index over the EpochShuffleSampler, by dropping loaded batches over another
epoch-seeded sampler (Lightning's DDP wrapper is a DistributedSampler)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from lowrank_lab.data.sampler import EpochShuffleSampler, ResumableLoader, train_loader

ROWS = [{"x": torch.tensor(i)} for i in range(50)]
LENGTHS = [int(n) for n in torch.randint(1, 30, (50,), generator=torch.Generator().manual_seed(0))]


def _epoch(loader: ResumableLoader, epoch: int, stop: int | None = None) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch["x"].tolist())
        if stop is not None and len(out) == stop:
            break
    return out


@pytest.mark.parametrize("lengths", [None, LENGTHS])
@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_resume_mid_epoch_continues_with_the_next_unseen_batch(lengths, k: int) -> None:
    whole = _epoch(train_loader(ROWS, 8, seed=3, lengths=lengths), epoch=2)
    assert len(whole) == 7 and sorted(sum(whole, [])) == list(range(50))
    first = train_loader(ROWS, 8, seed=3, lengths=lengths)
    head = _epoch(first, epoch=2, stop=k) if k else []
    state = first.state_dict()
    assert state == {"epoch": 2 if k else 0, "batches": k}
    resumed = train_loader(ROWS, 8, seed=3, lengths=lengths)
    resumed.load_state_dict({"epoch": 2, "batches": k})
    assert head + _epoch(resumed, epoch=2) == whole
    assert resumed.state_dict() == {"epoch": 2, "batches": 7}
    assert _epoch(resumed, epoch=3) == _epoch(train_loader(ROWS, 8, seed=3, lengths=lengths), epoch=3)  # once only


def test_a_saved_position_of_another_epoch_skips_nothing() -> None:
    loader = train_loader(ROWS, 8, seed=3)
    loader.load_state_dict({"epoch": 1, "batches": 7})  # saved at the end of epoch 1: epoch 2 starts afresh
    assert _epoch(loader, epoch=2) == _epoch(train_loader(ROWS, 8, seed=3), epoch=2)


def test_resume_over_a_distributed_sampler_drops_the_seen_batches() -> None:
    def loader() -> ResumableLoader:
        return ResumableLoader(ROWS, batch_size=4, sampler=DistributedSampler(ROWS, num_replicas=2, rank=1, seed=5))

    whole = _epoch(loader(), epoch=1)
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert _epoch(resumed, epoch=1) == whole[2:]
    assert isinstance(train_loader(ROWS, 8, seed=0).sampler, EpochShuffleSampler)


def test_ddp_ranks_get_disjoint_epoch_seeded_shards_and_resume() -> None:
    """What Lightning's DDP does with our sampler (use_distributed_sampler): DistributedSamplerWrapper, shuffle off
    for a custom sampler, set_epoch forwarded. Two ranks: disjoint shards covering the epoch's order; another epoch
    another order; a rank resumed mid-epoch goes on with its own next batch."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    def rank_loader(rank: int) -> ResumableLoader:
        inner = EpochShuffleSampler(48, seed=3, lengths=LENGTHS[:48], batch_size=4)
        wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=False)
        return ResumableLoader(ROWS[:48], batch_size=4, sampler=wrapper)

    def flat(batches: list[list[int]]) -> list[int]:
        return sum(batches, [])

    ranks = [_epoch(rank_loader(r), epoch=1) for r in (0, 1)]
    assert not set(flat(ranks[0])) & set(flat(ranks[1])) and sorted(flat(ranks[0]) + flat(ranks[1])) == list(range(48))
    single = EpochShuffleSampler(48, seed=3, lengths=LENGTHS[:48], batch_size=4)
    single.set_epoch(1)
    order = list(single)
    assert flat(ranks[0]) == order[0::2] and flat(ranks[1]) == order[1::2]  # the single-process order, interleaved
    assert _epoch(rank_loader(0), epoch=2) != ranks[0]  # set_epoch reaches the inner sampler
    resumed = rank_loader(1)
    resumed.load_state_dict({"epoch": 1, "batches": 4})
    assert _epoch(resumed, epoch=1) == ranks[1][4:]
