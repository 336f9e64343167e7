"""`evaluate(cfg)` behind `python eval.py run_dir=<job dir> [split=val]`: rebuild a finished job from its
resolved_config.yaml and saved adapter, score the split with the job's own metrics and trainer limits, print the
table beside the job's numbers and log an MLflow run nested under the job's run."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lowrank_lab.config_tree import print_config_tree
from lowrank_lab.errors import LabError, bad_value

SPLITS = ("test", "val")


def load_student(job: DictConfig, run_dir: Path, num_labels: int) -> torch.nn.Module:
    """The job's model as it ended: its base (the saved random init when there is one) plus the saved adapter
    (`lowrank_lab.adapters.load_adapter`), or the fully fine-tuned model `peft=none` saved in its place."""
    from lowrank_lab.adapters import load_adapter

    backbone = instantiate(job.model, num_labels=num_labels)
    base = backbone.model
    if (run_dir / "base").is_dir():  # model.random_init: the job saved the base it drew
        base = type(base).from_pretrained(run_dir / "base")
    adapter = run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return load_adapter(base, adapter)
    if (adapter / "config.json").is_file():  # peft=none: the whole model was trained and saved
        return type(base).from_pretrained(adapter)
    raise bad_value("run_dir", str(run_dir), "a finished job's directory (it has no saved adapter/)")


def job_run(uri: str | None, run_dir: Path) -> Any:
    """The job's own MLflow run (None without a store or a recorded run id)."""
    from lowrank_lab.tracking.job import RUN_ID_FILE

    record = run_dir / RUN_ID_FILE
    if not uri or not record.is_file():
        return None
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri).get_run(record.read_text().strip())
    except Exception:  # a store moved or wiped since: evaluate anyway, log as a plain run
        return None


def log_eval_run(uri: str, job: DictConfig, cfg: DictConfig, original: Any, scores: dict, datamodule: Any) -> str:
    """An MLflow run `eval <job's name>` (a child of the job's run when it is in the same store) with the scores,
    the job's Hydra choices, the git commit and the dataset; returns its id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from lowrank_lab.tracking.metadata import CHOICE_GROUPS, dataset_inputs, repo_root, source_tags
    from lowrank_lab.tracking.store import ensure_experiment, mask_credentials

    client = MlflowClient(uri)
    experiment_id = ensure_experiment(uri, job.logger.get("experiment_name") or "lowrank_lab")
    tags = {"lowrank_lab.eval": "true", "eval.split": cfg.split, "job_dir": str(Path(cfg.run_dir).resolve())}
    tags |= source_tags(repo_root(job))
    name = f"eval {Path(cfg.run_dir).name}"
    if original is not None:
        tags |= {k: v for k, v in original.data.tags.items() if k in CHOICE_GROUPS}
        tags |= {"lowrank_lab.eval_of": original.info.run_id, "mlflow.parentRunId": original.info.run_id}
        name = f"eval {original.info.run_name}"
    run_id = client.create_run(experiment_id, run_name=mask_credentials(name)[:250], tags=tags).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in scores.items()],
        params=[Param("eval.run_dir", mask_credentials(str(cfg.run_dir))[:6000]), Param("eval.split", cfg.split)],
    )
    inputs = dataset_inputs(datamodule, job)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def print_table(task_name: str, scores: dict, job_scores: dict, baseline: dict) -> None:
    """metric | this evaluation | the job's own value | the trivial baseline on the same split."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{task_name}: evaluation")
    for column in ("metric", "eval", "job", "baseline"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, value in sorted(scores.items()):
        job_value, base = job_scores.get(key), baseline.get(key.split("/", 1)[-1])
        cells = [f"{value:.4f}", "" if job_value is None else f"{job_value:.4f}", "" if base is None else f"{base:.4f}"]
        table.add_row(key, *cells)
    Console().print(table)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], str]:
    """Score the job at `cfg.run_dir` on `cfg.split`; returns `{<split>/<metric>: value}` and the key of the
    task's own metric (`<split>/<task.metric>`)."""
    from lowrank_lab.methods.base import AdapterModule
    from lowrank_lab.metrics.baseline import datamodule_baseline

    run_dir = Path(cfg.run_dir).expanduser()
    if not (run_dir / "resolved_config.yaml").is_file():
        raise bad_value("run_dir", str(run_dir), "a job directory of run.py (it holds resolved_config.yaml)")
    if cfg.split not in SPLITS:
        raise bad_value("split", cfg.split, f"one of {list(SPLITS)}")
    print_config_tree(cfg)
    job = OmegaConf.load(run_dir / "resolved_config.yaml")
    if cfg.get("threads") or job.get("threads"):
        torch.set_num_threads(int(cfg.get("threads") or job.threads))
    L.seed_everything(job.seed, workers=True, verbose=False)

    datamodule = instantiate(job.data)
    datamodule.setup("fit")  # as the job did: the same rows, limits and tokenisation
    student = load_student(job, run_dir, datamodule.task.num_labels)
    module = AdapterModule(student, datamodule.task, optimizer=torch.optim.AdamW)  # evaluation only: never steps
    trainer_cfg = OmegaConf.merge(job.trainer, cfg.get("trainer") or {})  # the job's limits, unless overridden
    trainer = instantiate(trainer_cfg, logger=False, callbacks=[], enable_checkpointing=False)  # writes nothing
    score = trainer.test if cfg.split == "test" else trainer.validate
    results = score(module, datamodule=datamodule, verbose=False)[0]
    scores = {k: float(v) for k, v in results.items() if k.startswith(f"{cfg.split}/")}

    uri = cfg.get("tracking_uri") or job.logger.get("tracking_uri")
    original = job_run(uri, run_dir)
    job_scores = dict(original.data.metrics) if original is not None else {}
    print_table(datamodule.task.name, scores, job_scores, datamodule_baseline(datamodule, cfg.split))
    if uri and cfg.get("log", True):
        run_id = log_eval_run(uri, job, cfg, original, scores, datamodule)
        print(f"MLflow run:  {run_id}  ({uri})", flush=True)
    return scores, f"{cfg.split}/{datamodule.task.metric}"


def main(cfg: DictConfig) -> float | None:
    """eval.py's body: the scores, one-line errors for a bad run_dir or split; returns the split's task metric."""
    try:
        scores, key = evaluate(cfg)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    return scores.get(key)
