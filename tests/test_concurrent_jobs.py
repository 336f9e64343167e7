"""N = 6 jobs writing one sqlite MLflow store at the same time (`hydra/launcher=submitit_local` starts them all at
once) lose no run and no metric: 1 parent + 6 FINISHED children, each with its full config, every metric it logs
and every step of every metric history."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import mlflow_runs, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N = 6
STEPS = 2
TINY = ["model=tiny-bert", "trainer=debug", "data.max_length=32", "threads=1", f"trainer.limit_train_batches={STEPS}"]
# what every job logs, and how many points of each (train/*: per step; val/*: per epoch; test/*: once)
EXPECTED = {
    "train/loss": STEPS,
    "time/step_ms": STEPS,
    "lr-AdamW": STEPS,
    "val/loss": 1,
    "val/accuracy": 1,
    "test/loss": 1,
    "test/accuracy": 1,
}


def test_six_concurrent_jobs_lose_no_run_and_no_metric(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    seeds = ",".join(str(s) for s in range(1, N + 1))
    proc = run_cli(["-m", "hydra/launcher=submitit_local", *TINY, f"seed={seeds}"], tmp_path, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]

    runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("lowrank_lab.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == N + 1 and len(children) == N, [r.info.run_name for r in runs]
    assert parent.info.status == "FINISHED"
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(1, N + 1))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    n_params = {len(c.data.params) for c in children}
    assert len(n_params) == 1 and n_params.pop() > 50, "every job logs its whole resolved config"
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert set(EXPECTED) <= set(child.data.metrics), (child.info.run_name, sorted(child.data.metrics))
        for key, points in EXPECTED.items():
            history = client.get_metric_history(child.info.run_id, key)
            assert len(history) == points, (child.info.run_name, key, len(history))
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"adapter", "resolved_config.yaml"}
    assert len({c.data.metrics["val/loss"] for c in children}) == N, "six seeds, six different runs"
