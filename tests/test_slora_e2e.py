"""`run.py method=slora` end to end on tiny-bert: gate/* metrics and the val-loss-vs-accepted-steps plot in MLflow."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import mlflow_runs, run_cli

GATE_METRICS = ("gate/novelty", "gate/accept", "gate/acceptance_rate", "gate/accepted_steps", "gate/total_steps")


@pytest.mark.slow
def test_slora_run_logs_gate_metrics_and_plot(tmp_path):
    args = ["method=slora", "model=tiny-bert", "trainer=debug", "method.gate.burn_in=2", "threads=1"]
    proc = run_cli(args + ["callbacks.progress_bar=null"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in GATE_METRICS}
    assert history["gate/total_steps"] == [1.0, 2.0, 3.0, 4.0]  # trainer=debug: 4 training batches
    assert history["gate/accept"][:2] == [1.0, 1.0] and history["gate/novelty"][0] == 1.0  # burn-in, empty basis
    assert history["gate/accepted_steps"][-1] == sum(history["gate/accept"])
    assert all(0.0 <= v <= 1.0 for v in history["gate/novelty"] + history["gate/acceptance_rate"])
    assert run.data.params["method.gate.mode"] == "novelty"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"slora_val_loss_vs_accepted_steps.png", "slora_curve.json"} <= artifacts
    curve = json.loads((next(tmp_path.glob("runs/*/*/slora_curve.json"))).read_text())
    assert curve["points"][-1]["accepted_steps"] == history["gate/accepted_steps"][-1]


@pytest.mark.slow
def test_bad_gate_mode_fails_in_one_line(tmp_path):
    proc = run_cli(["method=slora", "model=tiny-bert", "trainer=debug", "method.gate.mode=sometimes"], tmp_path)
    assert proc.returncode != 0
    assert "method.gate.mode='sometimes'" in proc.stderr and "Traceback" not in proc.stderr
