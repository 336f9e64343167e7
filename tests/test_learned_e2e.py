"""Every job knows whether it learned: baseline metrics and the learned tag on its MLflow run, a warning when it did
not, and a diverged job fails instead of reporting a metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow

TINY = ["model=tiny-bert", "trainer=debug", "trainer.limit_train_batches=2", "data.max_length=32", "threads=1"]


def test_a_job_that_cannot_learn_is_tagged_false(tmp_path: Path) -> None:
    proc = run_cli([*TINY, "data.train_limit=64"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    assert run.data.tags["lowrank_lab.learned"] == "false"
    # SST-2 dev: 444 of 872 sentences are positive, the majority class of the train sample
    assert run.data.metrics["baseline/accuracy"] == pytest.approx(444 / 872, abs=1e-6)
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING: this job did not learn")]
    assert len(warnings) == 1 and "baseline 0.5092" in warnings[0]
    table = proc.stdout.split("sst2: results", 1)[1]
    assert table.count("test/accuracy") == 1 and "val/accuracy" not in table  # one split (dev), shown once


def test_non_finite_loss_fails_the_job(tmp_path: Path) -> None:
    proc = run_cli(
        [*TINY, "trainer.limit_train_batches=10", "data.train_limit=640", "method.optimizer.lr=1e6"], tmp_path
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "at step" in errors[0] and "method.optimizer.lr" in errors[0], proc.stderr[-2000:]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert "test/accuracy" not in run.data.metrics and "lowrank_lab.learned" not in run.data.tags
