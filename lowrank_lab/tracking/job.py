"""A job's MLflow run: a child of the sweep run (or a plain run) with a short name, params = the flattened resolved
config, tags = the overrides, Hydra's choices, the config's `tags` and the git commit, the dataset as an input,
artifacts = the job directory without checkpoints (config, adapter, plots); optional system metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lowrank_lab.tracking.metadata import (
    config_tags,
    dataset_inputs,
    hydra_choices,
    repo_root,
    short_run_name,
    source_tags,
    sweep_job_number,
    swept_keys,
)
from lowrank_lab.tracking.reconcile import hold, process_tags, release
from lowrank_lab.tracking.store import ensure_experiment, flatten_config, mask_credentials, parent_run_id

RUN_ID_FILE = "mlflow_run_id"
_MONITORS: dict[str, Any] = {}  # run id -> MLflow's SystemMetricsMonitor (logger.system_metrics=true)


def start_job_run(cfg: DictConfig, job_dir: Path, overrides: list[str], run_name: str, datamodule: Any = None) -> str:
    """Create the job's run (or reuse the one recorded in `job_dir` when resuming) and log its config; `run_name`
    (the override dirname) is kept as a tag, the run is named `short_run_name`; a set-up `datamodule` is logged as
    the run's dataset inputs."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = cfg.logger.tracking_uri
    experiment_id = ensure_experiment(uri, cfg.logger.experiment_name)  # first: creates a new store under a lock
    client = MlflowClient(uri)
    record = job_dir / RUN_ID_FILE
    if record.exists():
        run_id = record.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        for key, value in process_tags().items():  # the resumed run now belongs to this process
            client.set_tag(run_id, key, value)
        hold(uri, run_id)  # SIGTERM/SIGHUP or an exit before finish_job_run: the run ends FAILED
        _start_monitor(cfg, run_id, resume=True)
        return run_id
    overrides = [mask_credentials(o) for o in overrides]  # logger.tracking_uri=http://user:pass@… stays secret
    choices = hydra_choices()
    tags = config_tags(cfg) | choices | source_tags(repo_root(cfg))
    tags |= {"overrides": " ".join(overrides), "job_dir": str(job_dir), "override_dirname": mask_credentials(run_name)}
    tags |= {f"override.{o.split('=', 1)[0].lstrip('+~')}": o.split("=", 1)[-1] for o in overrides}
    tags |= process_tags()  # pid + host: `python -m lowrank_lab.tracking reconcile` closes it once the pid is gone
    parent = parent_run_id()
    if parent:
        tags["mlflow.parentRunId"] = parent
    name = mask_credentials(short_run_name(cfg, choices, sweep_job_number(), swept_keys()))[:250]
    run_id = client.create_run(experiment_id, run_name=name, tags={k: v[:5000] for k, v in tags.items()}).info.run_id
    hold(uri, run_id)
    params = [Param(k, v) for k, v in flatten_config(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    if datamodule is not None:
        inputs = dataset_inputs(datamodule, cfg)
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
    job_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(run_id)
    _start_monitor(cfg, run_id, resume=False)
    return run_id


def _start_monitor(cfg: DictConfig, run_id: str, resume: bool) -> None:
    """`logger.system_metrics=true`: MLflow's own monitor logs `system/*` (CPU, memory, disk, network, GPU) every
    `logger.system_metrics_interval` seconds (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins) until the run ends."""
    if not cfg.logger.get("system_metrics", False) or run_id in _MONITORS:
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    interval = float(cfg.logger.get("system_metrics_interval", 10))
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=cfg.logger.tracking_uri
    )
    monitor.start()
    _MONITORS[run_id] = monitor


def upload_job_dir(client: Any, run_id: str, job_dir: Path) -> None:
    """Every file of the job directory except Lightning checkpoints (`*.ckpt`: the adapter is the result; a
    checkpoint is for resuming and stays on disk)."""
    for path in sorted(job_dir.rglob("*")):
        if path.is_file() and path.suffix != ".ckpt":
            folder = path.parent.relative_to(job_dir).as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)


def add_job_seconds(job_dir: Path, seconds: float) -> float:
    """This attempt's seconds added to the job's earlier attempts (`<job dir>/job_seconds`): a requeued or resumed
    job's wall time without the time it waited in between."""
    record = job_dir / "job_seconds"
    before = float(record.read_text()) if record.is_file() else 0.0
    job_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{before + seconds:.3f}")
    return before + seconds


def finish_job_run(
    tracking_uri: str, run_id: str, job_dir: Path, status: str = "FINISHED", metrics: dict[str, float] | None = None
) -> None:
    """Log `metrics`, stop the system-metrics monitor, upload the job directory (no checkpoints) and close the run;
    the status is set even when that fails (one warning line: the files stay in the job dir)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value)
        monitor = _MONITORS.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
        if status == "FINISHED":
            upload_job_dir(client, run_id, job_dir)
    except Exception as err:
        print(
            f"warning: MLflow run {run_id}: uploading {job_dir} failed ({type(err).__name__}: {err}); "
            "the files stay in the job dir",
            file=sys.stderr,
            flush=True,
        )
    finally:
        client.set_terminated(run_id, status)
        release(run_id)


def log_facts(tracking_uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
    """Log one value per metric (step 0) and tags on the job's run: baselines, the teacher's scores, `learned`."""
    import time

    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    client = MlflowClient(tracking_uri)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
