"""The time-to-accuracy benchmark compares like with like: its loop's padded batches hold the collator's examples,
and both runs are timed to one target (the requested one, or the best accuracy both reached)."""

from __future__ import annotations

import torch

from benchmarks.bench_time_to_accuracy import Eval, _pad_to_max, first_at, settle_target
from lowrank_lab.data.collate import PadCollator


def test_pad_to_max_is_the_dynamic_batch_plus_padding_columns() -> None:
    rows = [
        {"input_ids": [101, 7, 8, 102], "attention_mask": [1, 1, 1, 1], "token_type_ids": [0] * 4, "labels": 1},
        {"input_ids": [101, 9, 102], "attention_mask": [1, 1, 1], "token_type_ids": [0] * 3, "labels": 0},
    ]
    full = _pad_to_max(rows, 10, pad_id=0)
    dynamic = PadCollator(pad_token_id=0)(rows)
    for key, value in dynamic.items():
        if key == "labels":
            assert torch.equal(full[key].cpu(), value)
            continue
        assert full[key].shape == (2, 10)
        assert torch.equal(full[key][:, :4].cpu(), value)
        assert not full[key][:, 4:].any()  # only padding (id 0, mask 0) beyond the longest row


def _history(devs: list[float]) -> list[Eval]:
    return [Eval(step=5 * (i + 1), dev=d, cpu_s=float(i + 1), wall_s=float(i + 1)) for i, d in enumerate(devs)]


def test_target_is_kept_when_both_reach_it_else_the_best_both_reached() -> None:
    fast, slow = _history([0.5, 0.81]), _history([0.5, 0.7, 0.82])
    assert settle_target(0.8, fast, slow) == 0.8
    assert first_at(fast, 0.8).step == 10 and first_at(slow, 0.8).step == 15
    short = _history([0.55, 0.74, 0.72])  # never reaches 0.8: both are timed to 0.74
    target = settle_target(0.8, fast, short)
    assert target == 0.74
    assert first_at(fast, target).step == 10 and first_at(short, target).step == 10
