"""A job's MLflow run: a child of the sweep run (or a plain run), params = the flattened resolved config,
tags = the overrides, artifacts = the job directory (config, adapter, checkpoints, plots)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lowrank_lab.tracking.store import ensure_experiment, flatten_config, parent_run_id

RUN_ID_FILE = "mlflow_run_id"


def start_job_run(cfg: DictConfig, job_dir: Path, overrides: list[str], run_name: str) -> str:
    """Create the job's run (or reuse the one recorded in `job_dir` when resuming) and log its config."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = cfg.logger.tracking_uri
    client = MlflowClient(uri)
    record = job_dir / RUN_ID_FILE
    if record.exists():
        run_id = record.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment_id = ensure_experiment(uri, cfg.logger.experiment_name)
    tags = {"overrides": " ".join(overrides), "job_dir": str(job_dir)}
    tags |= {f"override.{o.split('=', 1)[0].lstrip('+~')}": o.split("=", 1)[-1] for o in overrides}
    parent = parent_run_id()
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(experiment_id, run_name=run_name[:250], tags=tags).info.run_id
    params = [Param(k, v) for k, v in flatten_config(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    job_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(run_id)
    return run_id


def finish_job_run(tracking_uri: str, run_id: str, job_dir: Path, status: str = "FINISHED") -> None:
    """Upload the job directory as the run's artifacts and close the run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if status == "FINISHED":
        client.log_artifacts(run_id, str(job_dir))
    client.set_terminated(run_id, status)
