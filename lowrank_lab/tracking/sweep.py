"""Hydra callback: at multirun start (in the launching process) create the store, the experiment and the
sweep's parent run, and hand its id to the jobs; at the end mark it FINISHED, or FAILED if any job failed."""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lowrank_lab.tracking.store import PARENT_ENV, ensure_experiment, mask_credentials


def warn_sqlite_on_slurm(uri: str, launcher: str) -> None:
    """One line, once per sweep: jobs on many nodes writing one sqlite file over NFS/Lustre can corrupt or lock it
    (sqlite's locks and WAL need one host's shared memory); a tracking server is the safe route."""
    if not uri.startswith("sqlite:") or "slurm" not in launcher.lower():
        return
    db = uri.split(":///", 1)[-1]
    print(
        f"warning: logger.tracking_uri={uri} with hydra/launcher=slurm: sqlite on a shared filesystem is unsafe with "
        f"jobs on several nodes; run `mlflow server --backend-store-uri sqlite:///{db} --host 0.0.0.0 --port 5000` "
        "on one host and pass logger.tracking_uri=http://<that host>:5000",
        file=sys.stderr,
        flush=True,
    )


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

        warn_sqlite_on_slurm(uri, str(config.hydra.get("launcher", {}).get("_target_", "")))
        experiment_id = ensure_experiment(uri, config.logger.experiment_name)
        self.client = MlflowClient(uri)
        overrides = mask_credentials(" ".join(config.hydra.overrides.task))  # no user:pass@ of a URI in tags
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
        self._tag_best(config)
        self._close("FAILED" if failed or not children else "FINISHED")

    def _tag_best(self, config: DictConfig) -> None:
        """hparams_search=optuna: the sweeper's best trial (`optimization_results.yaml` in the sweep dir) as tags
        `best.<param>` and `best.value` on the parent run."""
        from pathlib import Path

        from omegaconf import OmegaConf

        found = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
        if not found.is_file():
            return
        results = OmegaConf.load(found)
        tags = {f"best.{k}": str(v) for k, v in (results.get("best_params") or {}).items()}
        if results.get("best_value") is not None:
            tags["best.value"] = str(results.best_value)
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, mask_credentials(value))

    def _close(self, status: str) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status)
        os.environ.pop(PARENT_ENV, None)
