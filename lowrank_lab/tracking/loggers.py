"""`logger=` entries are Lightning loggers named by `_target_`: `mlflow` (bound to the job's run, which
tracking.job creates as a child of the sweep run), `csv` (metrics.csv in the job dir), `none`; another logger
is one yaml file (`_target_: lightning.pytorch.loggers.WandbLogger` …) and no code."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger
from omegaconf import DictConfig

from lowrank_lab.errors import bad_value


class JobMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger writing into the run `run_id` that `tracking.job.start_job_run` made (with its
    tags, params and dataset); `system_metrics*` are read there, not here. Never uploads checkpoints as models."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str = "lowrank_lab",
        run_id: str | None = None,
        system_metrics: bool = False,
        system_metrics_interval: float = 10,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("log_model", False)
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id, **kwargs)


def build_loggers(node: DictConfig, run_id: str | None) -> list[Logger]:
    """The job's Lightning loggers from `cfg.logger`: none for `_target_: null`; the MLflow entry (it has a
    `tracking_uri`) gets the job's run id; any other entry is instantiated as written."""
    if not node.get("_target_"):
        return []
    logger = instantiate(node, run_id=run_id) if node.get("tracking_uri") else instantiate(node)
    if not isinstance(logger, Logger):
        raise bad_value("logger._target_", node._target_, "a Lightning logger class (lightning.pytorch.loggers.*)")
    return [logger]
