"""Single runs: determinism, resume from a checkpoint, and a submitit_local sweep."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow

# Dropout off so a resumed run can match an uninterrupted one exactly (Lightning does not checkpoint RNG state).
TINY = [
    "model=tiny-bert",
    "trainer=debug",
    "trainer.limit_train_batches=3",
    "data.max_length=32",
    "+model.config_overrides.hidden_dropout_prob=0.0",
    "+model.config_overrides.attention_probs_dropout_prob=0.0",
    "threads=1",
]


def _metrics(out: Path) -> dict:
    (run,) = mlflow_runs(out)
    return run.data.metrics, run


def _history(out: Path, run_id: str, key: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        proc = run_cli([*TINY, "seed=7"], out)
        assert proc.returncode == 0, proc.stderr[-3000:]
    (ma, ra), (mb, rb) = _metrics(a), _metrics(b)
    for key in ("val/accuracy", "val/loss", "test/loss"):
        assert ma[key] == mb[key], key
    assert _history(a, ra.info.run_id, "train/loss") == _history(b, rb.info.run_id, "train/loss")
    proc = run_cli([*TINY, "seed=8"], tmp_path / "c")
    assert _metrics(tmp_path / "c")[0]["val/loss"] != ma["val/loss"]


def test_resume_from_last_checkpoint_matches_uninterrupted(tmp_path: Path) -> None:
    # A constant LR: with a decaying schedule, a 1-epoch run and a 2-epoch run differ from the first step on.
    const = ["method.scheduler.name=constant"]
    tiny = [*TINY, *const]
    full = run_cli([*tiny, "trainer.max_epochs=2"], tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]

    job = tmp_path / "job"
    first = run_cli([*tiny, "trainer.max_epochs=1", f"hydra.run.dir={job}"], tmp_path / "split")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (job / "checkpoints" / "last.ckpt").exists()
    run_id = (job / "mlflow_run_id").read_text()
    resumed = run_cli([*tiny, "trainer.max_epochs=2", f"hydra.run.dir={job}", "ckpt_path=last"], tmp_path / "split")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in resumed.stderr

    (m_full, _), (m_split, r_split) = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert r_split.info.run_id == run_id  # the resumed job logs into the same MLflow run
    assert m_split["val/loss"] == pytest.approx(m_full["val/loss"], rel=1e-6)
    assert m_split["epoch"] == m_full["epoch"]


def test_submitit_local_sweep(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hydra/launcher=submitit_local", *TINY, "peft.lora_r=2,4"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("lowrank_lab.sweep") == "true"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(c.data.params["peft.lora_r"] for c in children) == ["2", "4"]
    assert all(c.info.status == "FINISHED" and "val/accuracy" in c.data.metrics for c in children)


def test_killed_run_exits_non_zero_and_its_mlflow_run_failed(tmp_path: Path) -> None:
    """SIGTERM (kill, scancel) mid-training: Lightning stops with exit code None (0); the job must say it failed,
    so `make reproduce-*` does not go on to report a half sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import DATA_DIR, REPO, _ensure_data

    _ensure_data()
    args = [*TINY, "trainer.limit_train_batches=1.0", "trainer.max_epochs=1000", "trainer.log_every_n_steps=1"]
    cmd = [sys.executable, str(REPO / "run.py"), *args, f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:  # wait until training has logged a step
            # the job writes mlflow_run_id once its run exists: only then is the store migrated and safe to read
            # (reading a sqlite store while another process creates it races on the migration)
            if any(tmp_path.glob("runs/*/*/mlflow_run_id")) and any(
                "train/loss" in r.data.metrics for r in mlflow_runs(tmp_path)
            ):
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"


def test_sigterm_mid_epoch_then_resume_continues_exactly(tmp_path: Path) -> None:
    """Killed after step 5 of 2 × 4 (epoch 1, its 2nd batch) and resumed: the same steps, losses and adapter as an
    uninterrupted run, with dropout on (the RNG states are in the checkpoint) and a decaying LR."""
    tiny = [
        "model=tiny-bert", "trainer=debug", "data.max_length=32", "threads=1", "trainer.max_epochs=2",
        "method.scheduler.name=linear", "+model.config_overrides.hidden_dropout_prob=0.3",
    ]  # fmt: skip
    full = run_cli(tiny, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]

    job = tmp_path / "job"
    kill = ["+callbacks.kill._target_=tests.signal_at.SignalAtStep", "+callbacks.kill.step=5"]
    killed = run_cli([*tiny, *kill, f"hydra.run.dir={job}"], tmp_path / "split")
    assert killed.returncode == 143, killed.stderr[-3000:]
    assert (job / "checkpoints" / "last.ckpt").exists()
    time.sleep(5)  # "queued": not part of the job's wall time
    resumed = run_cli([*tiny, f"hydra.run.dir={job}"], tmp_path / "split")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert sorted(p.name for p in (job / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]  # one, overwritten

    from mlflow.tracking import MlflowClient

    histories = []
    for out in ("full", "split"):
        client, (run,) = MlflowClient(f"sqlite:///{tmp_path / out / 'mlflow.db'}"), mlflow_runs(tmp_path / out)
        points = client.get_metric_history(run.info.run_id, "train/loss")
        histories.append({m.step: m.value for m in points})
    assert sorted(histories[0]) == list(range(8)), histories[0]  # log_every_n_steps=1: 2 epochs × 4 batches
    assert histories[1] == histories[0]  # every step once, each with the uninterrupted run's loss
    (split,) = mlflow_runs(tmp_path / "split")
    span = (split.info.end_time - split.info.start_time) / 1000
    assert split.data.metrics["time/job_s"] < span - 4  # both attempts, not the wait between them
    train_s = [m.value for m in client.get_metric_history(split.info.run_id, "time/train_s")]
    assert len(train_s) == 2 and train_s[1] > train_s[0]  # epoch 1's includes epoch 0's, from the first attempt

    from safetensors.torch import load_file

    (full_job,) = (tmp_path / "full" / "runs").glob("*/*")
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (full_job, job))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_resuming_a_job_dir_with_another_config_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "job"
    first = run_cli([*TINY, "trainer.max_epochs=1", f"hydra.run.dir={job}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (job / "resolved_config.yaml").read_text()
    other = run_cli([*TINY, "trainer.max_epochs=1", "method.optimizer.lr=0.01", f"hydra.run.dir={job}"], tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
    (line,) = [x for x in other.stderr.splitlines() if x.startswith("error:")]
    assert "method.optimizer.lr=0.01" in line and "resume_check=false" in line
    assert (job / "resolved_config.yaml").read_text() == before  # nothing of the first attempt overwritten
    forced = run_cli([*TINY, "trainer.max_epochs=1", "method.optimizer.lr=0.01", "resume_check=false",
                      f"hydra.run.dir={job}"], tmp_path)  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-3000:]


@pytest.mark.parametrize("choice", ["init=pissa", "init=gradient", "init=corda", "init=eva", "peft=kasa"])
def test_inits_that_change_the_base_give_the_same_logits_after_a_resume(tmp_path: Path, choice: str) -> None:
    """A finished job rerun in its dir resumes from last.ckpt (nothing left to train) and tests again: the base is
    rebuilt and the init redone, so the test loss (all the logits) equals the first attempt's."""
    job = tmp_path / "job"
    args = [*TINY, choice, "trainer.max_epochs=1", f"hydra.run.dir={job}"]
    for _ in range(2):
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    from mlflow.tracking import MlflowClient

    run_id = (job / "mlflow_run_id").read_text()
    losses = [
        m.value for m in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run_id, "test/loss")
    ]
    assert len(losses) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-6, abs=1e-7), losses
