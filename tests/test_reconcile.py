"""No RUNNING MLflow run outlives its process: real sqlite store, real processes, real signals (issue 15 item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

# A job process: create its run through start_job_run, say so, then wait to be killed (no try/finally of its own).
HOLDER = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from lowrank_lab.tracking.job import start_job_run
cfg = OmegaConf.create({"logger": {"tracking_uri": sys.argv[1], "experiment_name": "reconcile"}, "seed": 0})
print(start_job_run(cfg, Path(sys.argv[2]), [], ""), flush=True)
time.sleep(120)
"""


def _holder(store: str, job: Path) -> tuple[subprocess.Popen, str]:
    """Start a process holding a RUNNING run; return it and the run id once the run exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGHUP as a terminal delivers it, also when pytest itself runs under nohup (which the child would inherit)
    default_hup = lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, store, str(job)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_hup)  # fmt: skip
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()[-3000:]
    return proc, run_id


def _status(store: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(store).get_run(run_id).info.status


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_closes_the_run_failed(tmp_path: Path, store: str, signum: int, code: int) -> None:
    proc, run_id = _holder(store, tmp_path / "job")
    assert _status(store, run_id) == "RUNNING"
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    assert _status(store, run_id) == "FAILED"


def test_reconcile_closes_a_killed_process_run_and_leaves_a_live_one(tmp_path: Path, store: str) -> None:
    from mlflow.tracking import MlflowClient

    killed, dead_id = _holder(store, tmp_path / "dead")
    live, live_id = _holder(store, tmp_path / "live")
    try:
        killed.kill()  # SIGKILL: no handler, no atexit
        killed.wait(timeout=30)
        assert _status(store, dead_id) == "RUNNING"
        tags = MlflowClient(store).get_run(dead_id).data.tags
        assert tags["lowrank_lab.pid"] == str(killed.pid) and tags["lowrank_lab.host"]
        cmd = [sys.executable, "-m", "lowrank_lab.tracking", "reconcile", "--tracking-uri", store]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "reconcile: 1 RUNNING run(s)" in out.stdout and dead_id in out.stdout
        assert _status(store, dead_id) == "FAILED"
        assert _status(store, live_id) == "RUNNING"  # its process is alive: left alone
        again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert "reconcile: 0 RUNNING run(s)" in again.stdout
    finally:
        live.terminate()
        assert live.wait(timeout=60) == 143
    assert _status(store, live_id) == "FAILED"


def test_reconcile_refuses_a_missing_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    cmd = [sys.executable, "-m", "lowrank_lab.tracking", "reconcile", "--tracking-uri", uri]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: --tracking-uri=") and "Traceback" not in out.stderr
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_finish_sets_the_status_when_the_upload_fails(tmp_path: Path, store: str, status: str, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from lowrank_lab.tracking.job import finish_job_run

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")  # artifacts go under a regular file: every upload fails
    client = MlflowClient(store)
    exp = client.create_experiment("broken", artifact_location=str(blocker / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    job = tmp_path / "job"
    job.mkdir()
    (job / "resolved_config.yaml").write_text("seed: 0\n")
    finish_job_run(store, run_id, job, status)
    assert _status(store, run_id) == status
    if status == "FINISHED":
        assert f"warning: MLflow run {run_id}: uploading {job} failed" in capsys.readouterr().err


TINY = ["model=tiny-bert", "trainer=debug", "trainer.limit_train_batches=2", "data.max_length=32", "threads=1"]


@pytest.mark.slow
def test_trainer_construction_error_leaves_the_run_failed(tmp_path: Path) -> None:
    from tests.conftest import mlflow_runs

    proc = run_cli([*TINY, "+trainer.bogus=1"], tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "bogus" in proc.stderr
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_sighup_to_a_sweep_closes_parent_and_running_child_failed(tmp_path: Path) -> None:
    """Hydra's basic launcher runs the job in the sweep's process: SIGHUP mid-fit (Lightning has no handler for it)
    exits 129 with both runs FAILED."""
    import time

    from tests.conftest import DATA_DIR, _ensure_data, mlflow_runs

    _ensure_data()
    args = ["-m", *TINY, "trainer.limit_train_batches=1.0", "trainer.max_epochs=1000", "seed=0"]
    cmd = [sys.executable, str(REPO / "run.py"), *args, f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    default_hup = lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)  # noqa: E731  (pytest under nohup: SIG_IGN)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_hup)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:  # the job's run exists: the store is migrated
            if any(tmp_path.glob("**/resolved_config.yaml")):  # written after the run and its loggers exist
                break
            time.sleep(1)
        time.sleep(5)  # inside fit (1000 epochs): the signal never lands between run creation and the handlers
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 129
    finally:
        if proc.poll() is None:
            proc.kill()
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}
    assert sum(r.data.tags.get("lowrank_lab.sweep") == "true" for r in runs) == 1
