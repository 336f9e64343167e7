"""`make ui` as a user meets it: the exact command the Makefile runs (read with `make -n ui`, its store pointed at
the small sweep's), started in its own process group; the experiments API shows the sweep's parent run with its
children and their metrics; then the whole group is stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import REPO, free_port, get_json, post_json
from tests.sweep_fixture import Store

pytest_plugins = ["tests.sweep_fixture"]
pytestmark = pytest.mark.slow


def ui_command(port: int, store: Store) -> str:
    """The recipe of `make ui PORT=<port>` with the repo's outputs/ replaced by the test store's folder."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -o: never rebuild the venv stamp here (dry run anyway); only the ui recipe line is kept
    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "ui", f"PORT={port}"], cwd=REPO, capture_output=True, text=True
    )
    lines = [line for line in dry.stdout.replace("\\\n", " ").splitlines() if "mlflow ui " in line]
    assert len(lines) == 1, dry.stdout + dry.stderr
    line = lines[0]
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in line and "--host 127.0.0.1" in line, line
    assert f"{REPO}/outputs/mlflow.db" in line, line
    return line.replace(f"{REPO}/outputs", str(store.out))


@pytest.fixture
def ui(small_sweep: Store):
    port = free_port()
    cmd = ui_command(port, small_sweep)
    # own session: the shell, mlflow and the server workers form one process group, stopped together below
    proc = subprocess.Popen(
        ["bash", "-c", cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, f"`{cmd}` exited with {proc.returncode}"
                time.sleep(0.5)
        else:
            pytest.fail("mlflow ui did not come up")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_ui_shows_the_sweep(ui: str, small_sweep: Store) -> None:
    api = f"{ui}/api/2.0/mlflow"
    experiments = post_json(f"{api}/experiments/search", {"max_results": 100})["experiments"]
    exp = next(e for e in experiments if e["name"] == small_sweep.experiment)
    runs = post_json(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}

    parents = [r for r in runs if tags[r["info"]["run_id"]].get("lowrank_lab.sweep") == "true"]
    assert [p["info"]["run_id"] for p in parents] == [small_sweep.parent_id]
    assert parents[0]["info"]["status"] == "FINISHED"
    children = [r for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == small_sweep.parent_id]
    assert len(children) == 2 and len(runs) == 3
    params = [{p["key"]: p["value"] for p in c["data"]["params"]} for c in children]
    assert sorted(p["seed"] for p in params) == ["1", "2"] and {p["model.random_init"] for p in params} == {"True"}
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        assert {"train/loss", "val/accuracy", "val/loss", "time/step_ms"} <= set(metrics)
        assert 0.0 <= metrics["val/accuracy"] <= 1.0
        run_id = child["info"]["run_id"]
        history = get_json(f"{api}/metrics/get-history?run_id={run_id}&metric_key=train/loss")["metrics"]
        assert len(history) == 4  # trainer=debug: 4 training steps, one point each
        assert history[-1]["value"] == pytest.approx(metrics["train/loss"])
