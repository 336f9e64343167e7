"""Issue 15.6: one sqlite store, many writers. 16 processes each log 200 metric points through Lightning's
MLFlowLogger (as jobs of a local sweep do) and none is lost; a SLURM sweep on a sqlite URI warns once and names the
server route."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lowrank_lab.tracking.store import ensure_experiment

WRITERS, POINTS = 16, 200
WORKER = f"""
import sys
import lowrank_lab.tracking.store  # the lab's sqlite settings (busy timeout) for this process
from lightning.pytorch.loggers import MLFlowLogger
uri, tag = sys.argv[1], sys.argv[2]
logger = MLFlowLogger(experiment_name="writers", tracking_uri=uri, run_name=tag, log_model=False)
sys.stdin.readline()  # start writing together
for step in range({POINTS}):
    logger.log_metrics({{"train/loss": step / 7.0, "step_copy": float(step)}}, step=step)
logger.finalize("success")
print(logger.run_id)
"""


@pytest.mark.slow  # 16 interpreters importing Lightning: minutes on two busy cores
def test_sixteen_writers_lose_no_metric_point(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment(uri, "writers")  # the launching process creates the store (WAL on), as a sweep does
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, f"w{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(WRITERS)
    ]
    outs = [p.communicate("go\n", timeout=900) for p in procs]
    failed = [err[-1500:] for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    assert not failed, failed[0]

    client = MlflowClient(uri)
    run_ids = [out.strip().splitlines()[-1] for out, _ in outs]
    assert len(set(run_ids)) == WRITERS
    for run_id in run_ids:
        for key, value in (("train/loss", lambda s: s / 7.0), ("step_copy", float)):
            history = client.get_metric_history(run_id, key)
            assert sorted((m.step, m.value) for m in history) == [(s, value(s)) for s in range(POINTS)], key
        assert client.get_run(run_id).info.status == "FINISHED"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == WRITERS * POINTS * 2


def _sweep_config(tmp_path: Path, launcher: str, uri: str):
    return OmegaConf.create(
        {
            "logger": {"tracking_uri": uri, "experiment_name": "warn"},
            "hydra": {
                "overrides": {"task": ["peft.lora_r=4,8"]},
                "sweep": {"dir": str(tmp_path / "sweep")},
                "launcher": {"_target_": launcher},
            },
        }
    )


@pytest.mark.parametrize(
    "launcher,warns",
    [
        ("hydra_plugins.lowrank_lab_launchers.SlurmLauncher", True),
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", False),
    ],
)
def test_slurm_sweep_on_sqlite_warns_once(tmp_path: Path, capsys, launcher: str, warns: bool) -> None:
    from lowrank_lab.tracking.sweep import MLflowSweepCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback = MLflowSweepCallback()
    callback.on_multirun_start(_sweep_config(tmp_path, launcher, uri))
    callback._close("FINISHED")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    if not warns:
        assert lines == []
        return
    assert len(lines) == 1
    assert "sqlite" in lines[0] and "shared filesystem" in lines[0]
    assert "mlflow server --backend-store-uri" in lines[0] and "logger.tracking_uri=http://" in lines[0]
