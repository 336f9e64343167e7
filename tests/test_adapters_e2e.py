"""`run.py` end to end on the tiny BERT with `peft` × `init` combinations: every job completes; KaSA jobs log
`train/kasa_reg` to MLflow whatever the method; incompatible choices stop with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow
TINY = ["model=tiny-bert", "trainer=debug"]
NO_TRACKING = ["logger=none", "++callbacks.lr_monitor=null"]  # LearningRateMonitor needs a logger


def finished_jobs(proc, n: int) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("adapter:") == n, proc.stdout[-3000:]


def test_kasa_logs_its_regulariser_under_kd_for_every_init(tmp_path: Path) -> None:
    # data.train_limit=64: two batches, so KD's teacher (full fine-tuning, prepared once) takes seconds; a teacher
    # that short sits at its baseline, so the gate is switched off (tests/test_kasa_methods.py covers every method)
    gate = "method.teacher.require_better_than_majority=false"
    args = ["-m", *TINY, "peft=kasa", "init=default,pissa", "method=kd", gate, "data.train_limit=64"]
    proc = run_cli(args, tmp_path, timeout=900)
    finished_jobs(proc, 2)
    children = [r for r in mlflow_runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in children:
        assert run.data.params["peft._target_"].endswith("KasaSpec")
        history = client.get_metric_history(run.info.run_id, "train/kasa_reg")
        assert len(history) >= 2 and all(m.value > 0 for m in history), run.data.params["method._target_"]
        assert "train/loss" in run.data.metrics and "val/accuracy" in run.data.metrics


def test_builtin_and_data_inits_complete(tmp_path: Path) -> None:
    args = ["-m", *TINY, *NO_TRACKING, "peft=lora", "init=olora,orthogonal,corda,eva", "data.train_limit=64"]
    proc = run_cli(args, tmp_path)
    finished_jobs(proc, 4)
    assert {p.name.split("-")[0] for p in (tmp_path / "init_cache").iterdir()} == {"corda", "eva"}


def test_other_peft_entries_complete(tmp_path: Path) -> None:
    proc = run_cli(["-m", *TINY, *NO_TRACKING, "peft=dora,qv,all_linear,none"], tmp_path)
    finished_jobs(proc, 4)


def test_incompatible_choice_is_one_line_from_the_cli(tmp_path: Path) -> None:
    proc = run_cli([*TINY, "peft=kasa", "peft.lora_r=32"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "peft.lora_r=32: less than 32 with peft=kasa" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and mlflow_runs(tmp_path) == []
