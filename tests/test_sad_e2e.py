"""End to end through run.py: the design card's `-m method=sad peft.lora_r=4,8,16` sweep (teacher built once for
the three jobs, spectral + task metrics in MLflow), and init=spectral under method=kd."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow

SMALL = [
    "model=tiny-bert",
    "trainer=debug",
    "data.train_limit=64",
    "data.val_limit=32",
    "data.max_length=32",
    "method.teacher.max_steps=4",
    "method.teacher.require_better_than_majority=false",
    "method.n_calib=256",
    "threads=1",
]
SPECTRAL = {
    "spectral/principal_angle_mean",
    "spectral/principal_angle_max",
    "spectral/subspace_overlap",
    "spectral/sv_match",
}


def test_sad_rank_sweep_builds_the_teacher_once(tmp_path: Path) -> None:
    proc = run_cli(["-m", "method=sad", "peft.lora_r=4,8,16", *SMALL], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("lowrank_lab.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3 and len(runs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.params["peft.lora_r"] for r in children} == {"4", "8", "16"}
    for run in children:
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert SPECTRAL <= set(metrics) and {"val/accuracy", "test/accuracy", "train/align"} <= set(metrics)
        assert 0.0 <= metrics["spectral/subspace_overlap"] <= 1.0
        assert 0.0 <= metrics["spectral/principal_angle_mean"] <= metrics["spectral/principal_angle_max"] <= 90.0
    # one teacher for the three jobs: built by the first, loaded by the others
    assert proc.stderr.count("teacher: building") == 1 and proc.stderr.count("teacher: cached") == 2
    teachers = [p for p in (tmp_path / "teachers").iterdir() if p.is_dir() and p.name not in ("targets", "logits")]
    assert len(teachers) == 1 and (teachers[0] / "model.safetensors").exists()
    targets = sorted(p.name.split("-")[-3] for p in (tmp_path / "teachers" / "targets").glob("*.safetensors"))
    assert targets == ["r16", "r4", "r8"]  # spectral targets cached per rank
    plots = list((tmp_path / "multiruns").rglob("plots/spectral_layers.png"))
    assert len(plots) == 3


def test_kd_with_spectral_init_logs_spectral_metrics(tmp_path: Path) -> None:
    proc = run_cli(["method=kd", "init=spectral", *SMALL], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = mlflow_runs(tmp_path)
    metrics = run.data.metrics
    assert SPECTRAL <= set(metrics) and "train/kd_loss" in metrics and "train/align" not in metrics
    # B started on the target subspace (B = U_r) and a few KD steps cannot rotate it far
    assert metrics["spectral/principal_angle_mean"] < 20.0 and metrics["spectral/subspace_overlap"] > 0.8
