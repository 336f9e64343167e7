"""MLflow as a user meets it: a sweep logs into a shared `mlflow server` on 127.0.0.1, and the server's REST API
(what the UI reads) shows the parent run with its children and their metrics. The test stops the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, get_json, post_json, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server_artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
        proc.wait(timeout=30)


def test_sweep_against_shared_server(tmp_path: Path, mlflow_server: str) -> None:
    args = [
        "-m",
        "model=tiny-bert",
        "trainer=debug",
        "data.max_length=32",
        "peft.lora_r=2,4",
        f"logger.tracking_uri={mlflow_server}",
        "logger.experiment_name=shared",
    ]
    proc = run_cli(args, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing went to the default local store

    exp = get_json(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=shared")["experiment"]
    runs = post_json(f"{mlflow_server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("lowrank_lab.sweep") == "true"]
    assert len(runs) == 3 and len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2
    for child in children:
        metrics = {m["key"] for m in child["data"]["metrics"]}
        assert {"train/loss", "val/accuracy", "time/step_ms"} <= metrics
        assert child["info"]["status"] == "FINISHED"
    artifacts = get_json(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={children[0]['info']['run_id']}")
    assert "adapter" in {f["path"] for f in artifacts["files"]}
