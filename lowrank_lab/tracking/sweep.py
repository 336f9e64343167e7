"""Hydra callback: at multirun start (in the launching process) create the store, the experiment and the
sweep's parent run, and hand its id to the jobs; at the end mark it FINISHED, or FAILED if any job failed. A sweep
that dies first (a job raised, SIGTERM/SIGHUP) ends FAILED and closes its jobs' runs whose process is gone."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lowrank_lab.tracking.reconcile import ON_SIGNAL, alive, hold, process_tags, reconcile, release
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
        self.uri = ""
        self.local = True  # the jobs run on this host (not hydra/launcher=slurm): a signal to the sweep stops them

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
            }
            | process_tags(),
        )
        self.run_id, self.uri = run.info.run_id, uri
        self.local = "slurm" not in str(config.hydra.get("launcher", {}).get("_target_", "")).lower()
        os.environ[PARENT_ENV] = self.run_id
        atexit.register(self._close, "FAILED")  # a sweep that dies before on_multirun_end is not left RUNNING
        hold(uri, self.run_id)  # installs the SIGTERM/SIGHUP handlers: they exit 143/129 through atexit
        ON_SIGNAL.append(self._forward)

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

    def _running_jobs(self) -> list[Any]:
        """The RUNNING job runs of this sweep that a process on this host owns (pid tag), other than this one."""
        from lowrank_lab.tracking.reconcile import HOST_TAG, PID_TAG, running_runs

        here, me = process_tags()[HOST_TAG], str(os.getpid())
        runs = running_runs(self.client, f"tags.mlflow.parentRunId = '{self.run_id}'")
        return [r for r in runs if r.data.tags.get(HOST_TAG) == here and r.data.tags.get(PID_TAG, me) != me]

    def _forward(self, signum: int) -> None:
        """SIGTERM/SIGHUP to the sweep: its jobs on this host (submitit_local) get it too, and it waits (≤ 30 s)
        for them to close their runs; jobs in this process (the basic launcher) stop as the exception unwinds."""
        if self.run_id is None or not self.local:
            return
        pids = {int(r.data.tags["lowrank_lab.pid"]) for r in self._running_jobs()}
        for pid in pids:
            try:
                os.kill(pid, signal.Signals(signum))
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _close(self, status: str) -> None:
        if self.run_id is None:
            return
        run_id = self.run_id
        if status == "FAILED":  # a job raised (submitit returns at the first one) or the sweep was stopped
            reconcile(self.uri, f"tags.mlflow.parentRunId = '{run_id}'")  # jobs whose process is gone: FAILED
        self.run_id = None
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status)
        release(run_id)
        os.environ.pop(PARENT_ENV, None)
