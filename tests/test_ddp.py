"""`trainer=ddp` with 2 CPU processes (gloo) trains what one process trains on the same global batch: 2 ranks x 4
samples = 1 x 8 samples, so the adapters end equal and the (all-reduced) task metrics agree; and only rank 0 writes
to MLflow (rank 1 is the same command re-run by Lightning with LOCAL_RANK=1).

The training set is 8 examples, one global batch: under DDP Lightning wraps the datamodule's epoch-seeded sampler in
a DistributedSamplerWrapper (no second shuffle for a custom sampler; set_epoch forwarded): rank r takes positions
r, r + 2, … of the single process's order (tests/test_resumable_loader.py), and with length-grouped batches of 4
per rank instead of 8 the global batches of a longer DDP run are other (equally valid) batches."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import torch

from tests.conftest import mlflow_runs, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TINY = [
    "model=tiny-bert",
    "data.max_length=32",
    "threads=1",
    "+model.config_overrides.hidden_dropout_prob=0.0",
    "+model.config_overrides.attention_probs_dropout_prob=0.0",
    "data.train_limit=8",  # 1 global batch per epoch, 4 epochs: 4 optimizer steps on the same 8 examples
    "trainer.max_epochs=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    # SGD: the update is linear in the gradient, so equal batches give equal weights to float precision (Adam's
    # g/sqrt(v) blows the rounding noise of near-zero gradients up to ~lr)
    "method.optimizer._target_=torch.optim.SGD",
    "method.optimizer.lr=0.5",
]
ONE = ["trainer=default", "data.batch_size=8", "data.eval_batch_size=32"]
# DDP shards val/test rank::2 in order: 2 eval batches of 16 per rank cover the single process's 2 x 32 examples.
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4", "data.eval_batch_size=16"]


def _adapter(job_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(job_dir / "adapter" / "adapter_model.safetensors")


def test_two_cpu_processes_match_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    jobs = {name: tmp_path / name / "job" for name in ("one", "ddp")}
    args = {"one": ONE, "ddp": DDP}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(run_cli, [*TINY, *args[name], f"hydra.run.dir={jobs[name]}"], tmp_path / name)
            for name in jobs
        }
        procs = {name: f.result() for name, f in futures.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-4000:]}"

    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in procs["ddp"].stderr  # rank 1 really ran

    (one,), ddp_runs = mlflow_runs(tmp_path / "one"), mlflow_runs(tmp_path / "ddp")
    assert len(ddp_runs) == 1, "rank 1 must not create a run"
    (ddp,) = ddp_runs
    assert ddp.info.status == "FINISHED" and ddp.data.params["trainer.strategy"] == "ddp"
    assert ddp.data.tags["job_dir"] == str(jobs["ddp"])

    # the metrics Lightning/torchmetrics all-reduce over ranks
    for key in ("val/accuracy", "test/accuracy"):
        assert ddp.data.metrics[key] == pytest.approx(one.data.metrics[key], abs=1e-6), key
    assert ddp.data.metrics["epoch"] == one.data.metrics["epoch"]

    # same global batch, same mean gradient (DDP averages the two 4-sample gradients), same SGD steps
    a, b = _adapter(jobs["one"]), _adapter(jobs["ddp"])
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:  # relative to each tensor's scale (lora_B is ~1e-5 here): float-summation noise only
        gap, scale = float((a[name] - b[name]).abs().max()), float(a[name].abs().max())
        assert gap <= 1e-5 * scale, (name, gap, scale)
    lora_b = [t for n, t in a.items() if "lora_B" in n]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b), "lora_B starts at zero: it must have trained"
