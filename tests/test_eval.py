"""Entry points a lightning-hydra-template user looks for (issue 16, item 6): eval.py reproduces a job's own test
score from its saved adapter, the config tree printed at start, the best checkpoint on the task's monitor metric."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from lowrank_lab.callbacks.best import BestCheckpoint, monitor_mode
from lowrank_lab.config_tree import config_tree_text, print_config_tree
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError
from tests.conftest import REPO, compose_config, mlflow_runs, run_cli


class Scripted(L.LightningModule):
    """Logs `val/<metric>` = the next value of a script at each validation: the best epoch is known in advance."""

    def __init__(self, task: TaskSpec, script: list[float]) -> None:
        super().__init__()
        self.task, self.script = task, script
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log(self.task.monitor, self.script[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "metric,script",
    [("accuracy", [0.5, 0.9, 0.7]), ("perplexity", [9.0, 4.0, 6.0]), ("mcc", [0.1, 0.0, 0.3])],
)
def test_best_checkpoint_follows_the_task_metric(tmp_path: Path, metric: str, script: list[float]) -> None:
    lower = metric == "perplexity"
    best_epoch = (min if lower else max)(range(len(script)), key=script.__getitem__)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    task = TaskSpec("t", num_labels=2, metric=metric)
    best = BestCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor=None, save_top_k=1)
    last = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = L.Trainer(
        max_epochs=len(script), callbacks=[best, last], logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Scripted(task, script), train_dataloaders=data, val_dataloaders=data)
    assert best.monitor == f"val/{metric}" and best.mode == ("min" if lower else "max") == monitor_mode(metric)
    assert Path(best.best_model_path).name == f"best-epoch={best_epoch}.ckpt"
    assert float(best.best_model_score) == pytest.approx(script[best_epoch])
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == sorted([f"best-epoch={best_epoch}.ckpt", "last.ckpt"])


def test_config_tree_masks_credentials_and_turns_off(capsys: pytest.CaptureFixture) -> None:
    cfg = compose_config("model=tiny-bert", "logger.tracking_uri=http://alice:s3cret@mlflow.lab:5000")
    text = config_tree_text(cfg)
    assert list(text)[:5] == ["data", "model", "peft", "init", "method"] and "hydra" not in text
    assert "s3cret" not in "".join(text.values()) and "http://***@mlflow.lab:5000" in text["logger"]
    print_config_tree(cfg)
    shown = capsys.readouterr().out
    assert "CONFIG" in shown and "lora_r: 8" in shown and "s3cret" not in shown
    cfg.extras.print_config = False
    print_config_tree(cfg)
    assert capsys.readouterr().out == ""


def test_eval_refuses_a_directory_that_is_not_a_job(tmp_path: Path) -> None:
    from lowrank_lab.evaluate import evaluate

    with pytest.raises(LabError, match="run_dir"):
        evaluate(compose_config(f"run_dir={tmp_path}", config_name="eval"))
    (tmp_path / "resolved_config.yaml").write_text("seed: 0\n")
    with pytest.raises(LabError, match="split"):
        evaluate(compose_config(f"run_dir={tmp_path}", "split=train", config_name="eval"))


@pytest.mark.slow
def test_eval_reproduces_the_jobs_scores(tmp_path: Path) -> None:
    """A tiny job, then `eval.py run_dir=<job dir>`: the eval run (a child of the job's run) has the job's own
    test/<metric> to 1e-4; split=val gives the job's last val/<metric>."""
    from lowrank_lab.evaluate import evaluate

    job_args = ["model=tiny-bert", "trainer=debug", "threads=1", "data.train_limit=64", "extras.print_config=false"]
    proc = run_cli(job_args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job_run,) = mlflow_runs(tmp_path)
    job_dir = Path(job_run.data.tags["job_dir"])
    cmd = [sys.executable, str(REPO / "eval.py"), f"run_dir={job_dir}", f"paths.output_dir={tmp_path}", "threads=1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CONFIG" in done.stdout and "evaluation" in done.stdout
    evals = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("lowrank_lab.eval") == "true"]
    assert len(evals) == 1 and evals[0].data.tags["mlflow.parentRunId"] == job_run.info.run_id
    scores = {k: v for k, v in evals[0].data.metrics.items() if k.startswith("test/")}
    assert set(scores) == {"test/accuracy", "test/loss"}
    for key, value in scores.items():
        assert value == pytest.approx(job_run.data.metrics[key], abs=1e-4), key
    cfg = compose_config(f"run_dir={job_dir}", "split=val", "log=false", config_name="eval")
    val, key = evaluate(cfg)
    assert key == "val/accuracy" and val[key] == pytest.approx(job_run.data.metrics[key], abs=1e-4)
    assert len(mlflow_runs(tmp_path)) == 2  # log=false: no second eval run
    assert OmegaConf.load(job_dir / "resolved_config.yaml").data.train_limit == 64
