"""`run.py` end to end on each workload kind with a tiny model (text classification, STS-B regression, causal LM
with exact match and forgetting metrics, vision classification, vision segmentation): exit 0, the task metric
printed and logged to a fresh MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import mlflow_runs, run_cli

WORKLOADS = {
    "text_cls": (
        ["model=tiny-bert", "data=sst2", "data.train_limit=64", "data.val_limit=64"],
        ["val/accuracy"],
    ),
    "stsb_regression": (
        ["model=tiny-bert", "data=stsb", "data.train_limit=64", "data.val_limit=64", "data.max_length=64"],
        ["val/spearman", "val/pearson"],
    ),
    "causal_lm": (
        [
            "model=tiny-llama",
            "data=gsm8k",
            "data.max_length=64",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "data.train_limit=16",
            "data.val_limit=8",
            "data.exact_match_examples=2",
            "data.max_new_tokens=8",
            "data.reference_examples=4",
            "callbacks=with_forgetting",
            "callbacks.forgetting.max_batches=1",
        ],
        ["val/perplexity", "val/exact_match", "forgetting/cka_drift", "forgetting/perplexity"],
    ),
    "vision_cls": (
        ["model=tiny-vit", "data=vision_cls", "data.train_limit=128", "data.val_limit=64"],
        ["val/accuracy"],
    ),
    "vision_seg": (
        ["model=tiny-vit-seg", "data=vision_seg", "data.num_train=64", "data.num_val=32"],
        ["val/miou", "val/pixel_accuracy"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_workload_runs_and_logs_its_metric(workload: str, tmp_path: Path) -> None:
    overrides, metrics = WORKLOADS[workload]
    result = run_cli([*overrides, "trainer=debug", "threads=2"], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics[0] in result.stdout  # the summary table names the task metric
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0].data.metrics
    for name in [*metrics, "train/loss"]:
        assert name in logged and math.isfinite(logged[name]), (name, sorted(logged))
    assert f"test/{metrics[0].split('/', 1)[1]}" in logged
