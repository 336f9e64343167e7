"""`run.py -m hydra/launcher=slurm` on the one-node SLURM cluster (launchers/local_slurm.sh), end to end: a sweep is a
job array whose jobs are MLflow children of one parent; a preempted job (USR2, what SLURM sends before a timeout or a
preemption) checkpoints, is requeued by submitit, resumes and ends exactly where an uninterrupted job ends; a
cancelled job is a FAILED run and the sweep still returns.

The module fixture brings the cluster up (installing the Debian packages if needed, as root) and takes it down at the
end only if it started it. Every wait has a timeout, so a broken cluster fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import DATA_DIR, REPO, mlflow_runs

pytestmark = pytest.mark.timeout(900)

SCRIPT = REPO / "launchers" / "local_slurm.sh"
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=30"]
# Exactly reproducible across a requeue: constant LR, no dropout, one batch per epoch (the preemption checkpoint is
# then an end-of-epoch one) and enough epochs (~0.3 s each here) to signal the job in the middle of its training.
TINY = [
    "model=tiny-bert",
    "trainer=debug",
    "data.max_length=32",
    "threads=1",
    "method.scheduler.name=constant",
    "+model.config_overrides.hidden_dropout_prob=0.0",
    "+model.config_overrides.attention_probs_dropout_prob=0.0",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
]
LONG = 80  # epochs of a job that gets interrupted


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def _wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_sweep(args: list[str], out: Path) -> subprocess.Popen:
    """`run.py -m <args>` in the background, outputs under `out`, logs in `out/sweep.log`."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "run.py"), "-m", *SLURM, *args]
    cmd += [f"paths.output_dir={out}", f"paths.data_dir={DATA_DIR}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = open(out / "sweep.log", "w")  # noqa: SIM115 - closed by the OS with the process
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen, out: Path, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log = (out / "sweep.log").read_text()[-3000:]
        raise AssertionError(f"sweep still running after {timeout} s:\n{log}") from None


def _job_dir(out: Path, num: int) -> Path:
    return _wait_until(lambda: next(out.glob(f"multiruns/*/*/{num}"), None), 120, f"job dir {num}")


def _slurm_id(out: Path, num: int) -> str:
    """`<array id>_<num>`, from the submitit folder of the sweep."""
    return _wait_until(lambda: next((p.name for p in out.glob(f"multiruns/*/*/.submitit/*_{num}")), ""), 60, "ids")


def _checkpointed(job_dir: Path, min_step: int = 1) -> bool:
    steps = [int(p.stem[4:]) for p in (job_dir / "checkpoints").glob("step*.ckpt") if p.stem[4:].isdigit()]
    return bool(steps) and max(steps) >= min_step


def _job_state(job_id: str) -> str:
    out = _run("scontrol", "show", "job", job_id, check=False).stdout
    return next((t.split("=", 1)[1] for t in out.split() if t.startswith("JobState=")), "")


def _sacct_states(job_id: str) -> list[str]:
    return _run("sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State").stdout.splitlines()


def _sweep_runs(out: Path) -> tuple:
    runs = mlflow_runs(out)
    (parent,) = [r for r in runs if r.data.tags.get("lowrank_lab.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == len(children) + 1, [r.info.run_name for r in runs]
    return parent, sorted(children, key=lambda r: r.data.tags["job_dir"])


def _history(out: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


# ---------------------------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster():
    """The one-node cluster, up for this module; `SLURM_CONF` exported for run.py, submitit and the jobs."""
    if shutil.which("bash") is None:
        pytest.skip("launchers/local_slurm.sh needs bash")
    was_up = _run("bash", str(SCRIPT), "status", check=False).returncode == 0
    if os.geteuid() != 0 and not was_up:
        pytest.skip("bringing up the SLURM test cluster needs root (launchers/local_slurm.sh up)")
    up = _run("bash", str(SCRIPT), "up", timeout=900, check=False)
    if up.returncode != 0:
        pytest.fail(f"local_slurm.sh up failed:\n{up.stdout}\n{up.stderr}")
    env = dict(
        line[len("export ") :].split("=", 1)
        for line in _run("bash", str(SCRIPT), "env").stdout.splitlines()
        if line.startswith("export ")
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not was_up:
            _run("bash", str(SCRIPT), "down", timeout=120, check=False)


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_of_three_with_one_preempted_job(slurm_cluster, tmp_path):
    """3 identical jobs (labelled a, b, c): a job array, 3 FINISHED children under a FINISHED parent. Job 0 gets
    USR2 mid-training: it writes last.ckpt, submitit requeues it, it resumes in the same job dir and the same MLflow
    run, and its metrics (whole histories) are those of the two uninterrupted jobs."""
    out = tmp_path / "sweep"
    proc = _start_sweep([*TINY, f"trainer.max_epochs={LONG}", "+label=a,b,c"], out)
    job_dir, job_id = _job_dir(out, 0), _slurm_id(out, 0)
    _wait_until(lambda: _checkpointed(job_dir, 3) or proc.poll() is not None, 300, "job 0 to train a few epochs")
    assert _job_state(job_id) == "RUNNING", (job_id, _job_state(job_id), (out / "sweep.log").read_text()[-2000:])
    _run("scancel", "--signal=USR2", job_id)

    # submitit requeues it; SLURM holds it until BeginTime (~11 s here): start it at once
    _wait_until(lambda: _job_state(job_id) == "PENDING", 120, "job 0 to be requeued")
    _run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
    assert _finish(proc, out, 600) == 0, (out / "sweep.log").read_text()[-3000:]

    assert _sacct_states(job_id)[0] == "REQUEUED", _sacct_states(job_id)
    log = next(out.glob(f"multiruns/*/*/.submitit/{job_id}/{job_id}_0_log.err")).read_text()
    assert "Caught signal SIGUSR2" in log and f"resuming from {job_dir / 'checkpoints' / 'last.ckpt'}" in log

    parent, children = _sweep_runs(out)
    assert parent.info.status == "FINISHED"
    assert [c.data.params["label"] for c in children] == ["a", "b", "c"]
    assert all(c.info.status == "FINISHED" for c in children), [c.info.status for c in children]
    preempted, *plain = children
    assert preempted.data.tags["job_dir"] == str(job_dir)
    assert preempted.info.run_id == (job_dir / "mlflow_run_id").read_text()
    for key in ("train/loss", "val/loss", "val/accuracy", "test/loss"):
        reference = _history(out, plain[0].info.run_id, key)
        assert len(reference) == (1 if key.startswith("test") else LONG), key
        assert _history(out, plain[1].info.run_id, key) == reference, key
        resumed = _history(out, preempted.info.run_id, key)
        assert [s for s, _ in resumed] == [s for s, _ in reference], key
        assert [v for _, v in resumed] == pytest.approx([v for _, v in reference], rel=1e-6), key


@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_job_is_a_failed_run_and_the_sweep_returns(slurm_cluster, tmp_path):
    """Job 1 of 2 is `scancel`led while training: its run ends FAILED, job 0 finishes, the sweep exits non-zero once
    both are over, and the parent run is FAILED."""
    out = tmp_path / "sweep"
    proc = _start_sweep([*TINY, f"trainer.max_epochs=2,{LONG * 4}"], out)
    job_dir, job_id = _job_dir(out, 1), _slurm_id(out, 1)
    _wait_until(lambda: _checkpointed(job_dir) or proc.poll() is not None, 300, "job 1 to train an epoch")
    _run("scancel", job_id)

    assert _finish(proc, out, 300) != 0
    assert _sacct_states(job_id)[-1].startswith("CANCELLED"), _sacct_states(job_id)
    parent, (done, cancelled) = _sweep_runs(out)
    assert cancelled.data.tags["job_dir"] == str(job_dir)
    assert (done.info.status, cancelled.info.status, parent.info.status) == ("FINISHED", "FAILED", "FAILED")
    assert "val/accuracy" in done.data.metrics and "test/accuracy" not in cancelled.data.metrics


def test_runs_left_open_by_dead_jobs_are_closed(tmp_path):
    """What the launcher does once every job is over: a child still RUNNING (its job was SIGKILLed: OOM, scancel
    past KillWait) or SCHEDULED (requeued, never restarted) becomes FAILED; nothing else is touched."""
    from mlflow.tracking import MlflowClient

    from lowrank_lab.tracking.slurm import close_open_children
    from lowrank_lab.tracking.store import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = ensure_experiment(uri, "lowrank_lab")
    parent, other = (client.create_run(experiment).info.run_id for _ in range(2))
    status = {}
    for end in ("RUNNING", "SCHEDULED", "FINISHED", "FAILED"):
        run_id = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        if end != "RUNNING":
            client.set_terminated(run_id, end)
        status[run_id] = end
    stranger = client.create_run(experiment, tags={"mlflow.parentRunId": other}).info.run_id

    closed = close_open_children(uri, parent)
    assert sorted(closed) == sorted(r for r, s in status.items() if s in ("RUNNING", "SCHEDULED"))
    after = {r: client.get_run(r).info.status for r in status}
    assert after == {r: "FAILED" if s in ("RUNNING", "SCHEDULED") else s for r, s in status.items()}
    assert client.get_run(stranger).info.status == client.get_run(parent).info.status == "RUNNING"
    assert close_open_children(None, parent) == close_open_children(uri, None) == []


def test_requeue_callback_checkpoints_then_hands_over_to_submitit(tmp_path, monkeypatch):
    """In-process: under SLURM (env of a batch job) Lightning's USR1 auto-requeue stays off; USR2 during training is
    acted on at the next batch end: last.ckpt is written first, then submitit's handler runs (here a stand-in that
    exits like submitit's), and the exit is a `Requeued` that tells train.py the MLflow run goes on later."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lowrank_lab.callbacks import Requeued, RequeueOnSignal

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lowrank_lab", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    seen: dict[str, object] = {}

    def submitit_handler(signum, frame):  # what submitit does: pickle, `scontrol requeue`, sys.exit(-1)
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 1:
            seen["checkpoint_at_handover"] = (tmp_path / "checkpoints" / "last.ckpt").exists()
            sys.exit(-1)

    class Poke(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.setdefault("usr1", signal.getsignal(signal.SIGUSR1))
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        trainer = L.Trainer(
            max_epochs=1, limit_train_batches=20, limit_val_batches=0, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[RequeueOnSignal(), Poke()], default_root_dir=tmp_path,
        )  # fmt: skip
        with pytest.raises(Requeued) as stop:
            trainer.fit(BoringModel())
        os.kill(os.getpid(), signal.SIGUSR2)  # after fit the signal goes straight to submitit again
        assert seen["calls"] == 2
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stop.value.code == -1 and stop.value.run_status == "SCHEDULED"
    assert seen["checkpoint_at_handover"] is True
    assert seen["usr1"] in (signal.SIG_DFL, None), "Lightning's own SLURM requeue handler must stay off"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4  # the signal came during step 3's batch end; step 4's end is the safe point


def test_requeue_callback_is_inert_without_submitit(tmp_path):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lowrank_lab.callbacks import RequeueOnSignal

    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, None)
    trainer = L.Trainer(
        max_steps=3, limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RequeueOnSignal()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert trainer.global_step == 3 and not (tmp_path / "checkpoints" / "last.ckpt").exists()
