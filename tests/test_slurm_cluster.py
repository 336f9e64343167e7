"""End-to-end checks of the one-node SLURM cluster (launchers/local_slurm.sh) through submitit.

The module fixture brings the cluster up (installing the Debian packages if needed, as root) and takes it
down at the end only if it was not already up. Every test keeps its own timeouts so that a broken cluster
fails fast instead of hanging a sweep.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")
from submitit.core.utils import UncompletedJobError  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

SCRIPT = Path(__file__).resolve().parents[1] / "launchers" / "local_slurm.sh"

# The jobs unpickle the functions below; pytest imports this file under a name the job's Python cannot
# import, so pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------------------------------------
# functions that run inside SLURM jobs
# ---------------------------------------------------------------------------------------------------
def sum_of_squares(n: int) -> int:
    return sum(i * i for i in range(n))


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def kill_myself() -> None:
    os.kill(os.getpid(), 9)  # like the OOM killer: no result pickle, the step dies


class CountRuns(submitit.helpers.Checkpointable):
    """Records each start in `marker_dir`; the first run sleeps (to be requeued), later runs return."""

    def __call__(self, marker_dir: str, first_run_sleep: float) -> int:
        marker = Path(marker_dir)
        run = len(list(marker.glob("run-*"))) + 1
        (marker / f"run-{run}").write_text(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if run == 1:
            time.sleep(first_run_sleep)
        return run


class Resumable(submitit.helpers.Checkpointable):
    """Counts to `steps`; on preemption submitit pickles `self` (with its progress) and requeues the job."""

    def __init__(self, marker_dir: str, steps: int) -> None:
        self.marker_dir, self.steps = marker_dir, steps
        self.progress = 0
        self.starts: list[int] = []

    def __call__(self) -> list[int]:
        self.starts.append(self.progress)
        while self.progress < self.steps:
            time.sleep(0.05)
            self.progress += 1
            Path(self.marker_dir, "progress").write_text(str(self.progress))
        return self.starts


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def _sacct_state(job_id: str) -> str:
    out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State").stdout.strip().splitlines()
    return out[-1] if out else ""


def _wait_sacct(job_id: str, prefix: str, timeout: float = 30) -> str:
    """accounting reaches slurmdbd a moment after the job ends: poll sacct"""
    deadline = time.time() + timeout
    state = ""
    while time.time() < deadline:
        state = _sacct_state(job_id)
        if state.startswith(prefix):
            return state
        time.sleep(0.5)
    raise AssertionError(f"sacct state of job {job_id} is {state!r}, expected {prefix}")


def _job_field(job_id: str, field: str) -> str:
    out = _run("scontrol", "show", "job", job_id).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return ""


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _result_with_timeout(job, timeout: float):
    """job.result() in a thread, so that a hang fails the test instead of blocking it"""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(job.result).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)


def _executor(folder: Path):
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(slurm_partition="debug", timeout_min=10, cpus_per_task=1, name="lowrank_lab_test")
    return ex


# ---------------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("bash") is None or not SCRIPT.exists():
        pytest.skip("launchers/local_slurm.sh needs bash")
    was_up = _run("bash", str(SCRIPT), "status", check=False).returncode == 0
    if os.geteuid() != 0 and not was_up:
        pytest.skip("bringing up the SLURM test cluster needs root (launchers/local_slurm.sh up)")
    up = _run("bash", str(SCRIPT), "up", timeout=900, check=False)
    if up.returncode != 0:
        pytest.fail(f"local_slurm.sh up failed:\n{up.stdout}\n{up.stderr}")
    # SLURM_CONF (and friends) for this process, submitit's subprocesses and the jobs (sbatch exports it)
    env = {}
    for line in _run("bash", str(SCRIPT), "env").stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value
    assert "SLURM_CONF" in env
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


# ---------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------
def test_cluster_status_and_env(slurm_cluster):
    status = _run("bash", str(SCRIPT), "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "debug" in status.stdout
    assert Path(slurm_cluster["SLURM_CONF"]).is_file()
    # `up` again is a no-op
    assert _run("bash", str(SCRIPT), "up", timeout=60).returncode == 0


def test_submitit_job_returns_value(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(sum_of_squares, 1000)
    assert _result_with_timeout(job, 90) == sum_of_squares(1000)
    assert _wait_sacct(job.job_id, "COMPLETED") == "COMPLETED"


def test_cancelled_job_raises_and_is_cancelled(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(sleep_for, 600)
    _wait_until(lambda: _job_field(job.job_id, "JobState") == "RUNNING", 60, "the job to start")
    _run("scancel", job.job_id)
    # a hang would raise concurrent.futures.TimeoutError instead (and fail the test)
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        _result_with_timeout(job, 90)
    assert _wait_sacct(job.job_id, "CANCELLED").startswith("CANCELLED")


def test_killed_job_raises_and_is_failed(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(kill_myself)
    # submitit raises once sacct says FAILED and its 15 s wait for a result pickle is over
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        _result_with_timeout(job, 90)
    assert _wait_sacct(job.job_id, "FAILED") == "FAILED"


def test_requeued_checkpointable_job_runs_again(slurm_cluster, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    job = _executor(tmp_path / "submitit").submit(CountRuns(), str(markers), 600)
    _wait_until(lambda: (markers / "run-1").exists(), 60, "the first run to start")

    _run("scontrol", "requeue", job.job_id)
    # a requeued job is held back until BeginTime (= requeue + cred_expire + 1 s; see launchers/README.md)
    _wait_until(lambda: _job_field(job.job_id, "JobState") == "PENDING", 30, "the job to be pending again")
    assert _job_field(job.job_id, "Restarts") == "1"
    # work-around: start it now instead of waiting for BeginTime
    _run("scontrol", "update", f"JobId={job.job_id}", "StartTime=now")

    assert _result_with_timeout(job, 90) == 2
    assert (markers / "run-2").read_text() == "1"  # SLURM_RESTART_COUNT seen by the second run
    assert _wait_sacct(job.job_id, "COMPLETED") == "COMPLETED"
    states = _run("sacct", "-n", "-X", "-D", "-P", "-j", job.job_id, "-o", "State").stdout.split()
    assert states[0] == "REQUEUED", states


def test_preempted_checkpointable_job_resumes(slurm_cluster, tmp_path):
    """USR2 is SLURM's preemption/timeout warning: submitit checkpoints, calls `scontrol requeue` itself, and
    the second run starts from the pickled progress. Nobody bumps StartTime here: with cred_expire=10 the
    requeued job may start again after ~11 s."""
    markers = tmp_path / "markers"
    markers.mkdir()
    job = _executor(tmp_path / "submitit").submit(Resumable(str(markers), 200))
    progress = markers / "progress"
    _wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= 20, 60, "some progress")
    _run("scancel", "--signal=USR2", job.job_id)
    starts = _result_with_timeout(job, 120)
    assert len(starts) == 2 and starts[0] == 0 and 20 <= starts[1] < 200, starts
    states = _run("sacct", "-n", "-X", "-D", "-P", "-j", job.job_id, "-o", "State").stdout.split()
    assert states[0] == "REQUEUED", states
    assert _wait_sacct(job.job_id, "COMPLETED") == "COMPLETED"
