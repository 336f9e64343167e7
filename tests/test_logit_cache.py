"""Cached teacher logits: equal to a live forward (any padding), keyed by content, built once per teacher + data;
the teacher gate and the teacher's scores on the job's MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowrank_lab.teachers.logits import LogitCache, cached_logits, example_keys
from lowrank_lab.teachers.module import Teacher
from tests.conftest import mlflow_runs, run_cli
from tests.test_kd import VOCAB, tiny_bert


def _rows(n: int = 10, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g) for _ in range(n)]


def _pad(rows: list[torch.Tensor], extra: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch (B, T) with `extra` more padding columns than the longest row needs."""
    longest = max(len(r) for r in rows) + extra
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(len(rows), dtype=torch.long)}


def test_cached_logits_equal_live_logits_under_other_padding() -> None:
    teacher = Teacher(tiny_bert(num_labels=3))
    rows = _rows(10)
    cache = LogitCache.build(teacher, [_pad(rows[:5]), _pad(rows[5:])])  # batches padded one way
    mixed = _pad([rows[7], rows[2], rows[9]], extra=5)  # other batch, order and padding
    live = teacher(mixed).logits
    cached = cache.lookup(mixed)
    assert cached is not None and cached.shape == live.shape
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=0)
    assert example_keys(_pad([rows[0]])) == example_keys(_pad([rows[0]], extra=3))
    assert example_keys(_pad([rows[0]])) != example_keys(_pad([rows[1]]))
    assert cache.lookup(_pad(_rows(2, seed=5))) is None  # unseen examples: the caller runs the teacher


def test_cache_file_round_trip_and_built_once(tmp_path: Path) -> None:
    teacher = Teacher(tiny_bert(num_labels=2))
    batches = [_pad(_rows(6))]
    path = tmp_path / "logits" / "t.safetensors"
    first = cached_logits(teacher, batches, path)
    stamp = path.stat().st_mtime_ns
    second = cached_logits(teacher, [], path)  # no batches: it can only come from the file
    assert path.stat().st_mtime_ns == stamp
    torch.testing.assert_close(second.lookup(batches[0]), first.lookup(batches[0]))
    path.write_bytes(path.read_bytes()[:20])  # truncated: rebuilt with a warning, not a traceback
    third = cached_logits(teacher, batches, path)
    torch.testing.assert_close(third.lookup(batches[0]), first.lookup(batches[0]))


KD = [
    "model=tiny-bert",
    "method=kd",
    "trainer=debug",
    "trainer.limit_train_batches=3",
    "data.train_limit=96",
    "data.max_length=32",
    "method.teacher.max_steps=3",
    "threads=1",
]


@pytest.mark.slow
def test_teacher_gate_and_logits_cache_across_jobs(tmp_path: Path) -> None:
    # a 3-step random tiny-bert teacher sits at its baseline: the KD job stops before any run exists
    gated = run_cli(KD, tmp_path)
    assert gated.returncode == 2, gated.stderr[-2000:]
    lines = [ln for ln in gated.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "require_better_than_majority=false" in lines[0], gated.stderr[-2000:]
    assert "Traceback" not in gated.stderr
    assert mlflow_runs(tmp_path) == []

    accept = [*KD, "method.teacher.require_better_than_majority=false"]
    first = run_cli(accept, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher logits: built" in first.stderr
    second = run_cli([*accept, "method.kd_weight=0.3"], tmp_path)  # another job, same teacher and data
    assert second.returncode == 0, second.stderr[-3000:]
    assert "teacher logits: cached" in second.stderr and "teacher: cached" in second.stderr
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 2
    for run in runs:
        assert {"teacher/accuracy", "teacher/baseline", "baseline/accuracy"} <= set(run.data.metrics)
        assert run.data.tags["lowrank_lab.learned"] in ("true", "false")
