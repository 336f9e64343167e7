"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, made to account for every job of a sweep.
(Hydra instantiates launchers only from the `hydra_plugins` namespace: `hydra_plugins/lowrank_lab_launchers`
beside run.py names this class for it.)

The plugin returns at the first job without a result (cancelled, killed, out of memory), leaving the other jobs
running unwatched and that job's MLflow run RUNNING forever. This launcher waits for every job of the array, marks
the runs of jobs that died without a word FAILED, and then hands the failures to Hydra (the sweep exits non-zero and
its parent run ends FAILED). A job that submitit requeued (preemption, timeout) is still one job: it is waited for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _PluginSlurmLauncher
from omegaconf import OmegaConf

from lowrank_lab.tracking.store import parent_run_id

log = logging.getLogger(__name__)
OPEN_STATUSES = ("RUNNING", "SCHEDULED")


class SlurmLauncher(_PluginSlurmLauncher):
    """Same submission as the plugin (one job array, same params); different waiting."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **self._init_params())
        executor.update_parameters(**self._job_params())

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self._for_jobs(), *zip(*job_params))

        returns = [self._wait(job, list(overrides)) for job, overrides in zip(jobs, job_overrides)]
        failed = [r for r in returns if r.status == JobStatus.FAILED]
        if failed:
            log.error(f"{len(failed)} of {len(returns)} jobs failed: {[str(r._return_value)[:200] for r in failed]}")
            close_open_children(self.config.logger.get("tracking_uri"), parent_run_id())
        return returns

    def _for_jobs(self) -> _PluginSlurmLauncher:
        """What the jobs unpickle and call: the plugin's own class (its `__call__` and `checkpoint`, which requeues
        the job with the same arguments), with this launcher's state; so jobs never import `hydra_plugins` code
        that lives beside run.py."""
        plain = _PluginSlurmLauncher.__new__(_PluginSlurmLauncher)
        plain.__dict__.update(self.__dict__)
        return plain

    def _init_params(self) -> dict[str, Any]:
        """`submitit_folder` and the executor-specific init keys (`max_num_timeout`), as the plugin passes them."""
        params = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            params[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        return params

    def _job_params(self) -> dict[str, Any]:
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        skip = {"submitit_folder", "max_num_timeout"}
        return {k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in skip}

    @staticmethod
    def _wait(job: Any, overrides: list[str]) -> JobReturn:
        """The job's own JobReturn, or a FAILED one when it left no result (cancelled, killed, node failure)."""
        try:
            return job.results()[0]
        except Exception as err:  # submitit.core.utils.UncompletedJobError, FailedJobError
            first_line = (str(err).splitlines() or [type(err).__name__])[0]
            log.error(f"job {job.job_id} ({' '.join(overrides)}) failed: {first_line[:300]}")
            return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=err)


def close_open_children(tracking_uri: str | None, parent: str | None, status: str = "FAILED") -> list[str]:
    """Once every job of the sweep is over, a child run still RUNNING (or SCHEDULED: requeued, never resumed)
    belongs to a job that was killed before it could close it: give it `status`. Returns the run ids closed."""
    if not tracking_uri or not parent:
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    closed = [c.info.run_id for c in children if c.info.status in OPEN_STATUSES]
    for run_id in closed:
        client.set_terminated(run_id, status)
        log.error(f"MLflow run {run_id}: its job ended without closing it; marked {status}")
    return closed
