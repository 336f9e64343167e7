"""Hydra callback: at multirun start (in the launching process) create the store, the experiment and the
sweep's parent run, and hand its id to the jobs; at the end mark it FINISHED, or FAILED if any job failed."""

from __future__ import annotations

import atexit
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lowrank_lab.tracking.store import PARENT_ENV, ensure_experiment


class MLflowSweepCallback(Callback):
    """Registered under `hydra.callbacks`; does nothing for single runs or `logger=none`."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.client: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = config.logger.get("tracking_uri")
        if not uri:
            return
        from mlflow.tracking import MlflowClient

        experiment_id = ensure_experiment(uri, config.logger.experiment_name)
        self.client = MlflowClient(uri)
        overrides = " ".join(config.hydra.overrides.task)
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep {overrides}"[:250],
            tags={
                "lowrank_lab.sweep": "true",
                "sweep.overrides": overrides,
                "sweep.dir": config.hydra.sweep.dir,
            },
        )
        self.run_id = run.info.run_id
        os.environ[PARENT_ENV] = self.run_id
        atexit.register(self._close, "FAILED")  # a sweep that dies before on_multirun_end is not left RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        children = self.client.search_runs(
            [self.client.get_run(self.run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
        )
        failed = any(c.info.status != "FINISHED" for c in children)
        self._close("FAILED" if failed or not children else "FINISHED")

    def _close(self, status: str) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status)
        os.environ.pop(PARENT_ENV, None)
