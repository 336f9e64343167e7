"""A sweep's results as MLflow holds them: find the sweep parent run(s) a user names, their child runs, and each
run's labels (method, overridden keys, task, reported metric). Read-only; the report, plots and notebooks build on
this."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.tracking.metadata import CHOICE_GROUPS

SWEEP_TAG, PARENT_TAG = "lowrank_lab.sweep", "mlflow.parentRunId"
LEARNED_TAG = "lowrank_lab.learned"  # "true" / "false": the job beat its task's trivial baseline (train.py)
# class name of `method._target_` -> the name a user types after `method=`
METHOD_NAMES = {"FinetuneModule": "finetune", "DistillationModule": "kd", "SADModule": "sad", "SLoRAModule": "slora"}
# a task's reported metric: the first of these `val/<m>` that its runs have (MRPC: f1 before accuracy, STS-B: …)
PRIMARY = ("f1", "spearman", "mcc", "miou", "accuracy", "exact_match", "perplexity")
NOT_CONFIG = {"seed", "data", "data.task", "threads", "ckpt_path", "experiment"}  # never a row label by default
NOT_CONFIG_PREFIXES = ("paths.", "logger.", "hydra.")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ReportError(ValueError):
    """A target or option that names nothing in the store: one line for the user."""


@dataclass
class Sweep:
    """One or more sweep parent runs (latest first) and their child runs."""

    tracking_uri: str
    experiment: str
    parents: list[Any]  # mlflow.entities.Run
    children: list[Any]

    @property
    def finished(self) -> list[Any]:
        """The child runs that ended FINISHED (failed or running jobs are never averaged in)."""
        return [r for r in self.children if r.info.status == "FINISHED"]

    @property
    def experiment_file(self) -> str:
        """The `experiment=` the jobs ran (their override tag), else the MLflow experiment's name."""
        names = {r.data.tags["override.experiment"] for r in self.children if "override.experiment" in r.data.tags}
        return names.pop() if len(names) == 1 else self.experiment


def default_tracking_uri() -> str:
    """The store run.py writes by default: `sqlite:///<root>/outputs/mlflow.db` (root: $LOWRANK_LAB_ROOT or cwd)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("LOWRANK_LAB_ROOT", ".")).resolve()
    return f"sqlite:///{root / 'outputs' / 'mlflow.db'}"


def client(tracking_uri: str) -> Any:
    """An MlflowClient on `tracking_uri` (imported lazily: mlflow is slow to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _sweeps_in(mlflow: Any, experiment_ids: list[str]) -> list[Any]:
    flt = f"tags.`{SWEEP_TAG}` = 'true'"
    return mlflow.search_runs(experiment_ids, filter_string=flt, order_by=["attributes.start_time DESC"])


def find_parents(mlflow: Any, target: str | None, all_sweeps: bool = False) -> list[Any]:
    """Sweep parent runs named by `target`: a run id (a sweep, or a job of one), an experiment name (its latest
    sweep, or all of them), or None (the latest sweep in the store)."""
    from mlflow.exceptions import MlflowException

    if target and RUN_ID.match(target):
        try:
            run = mlflow.get_run(target)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get(SWEEP_TAG) == "true":
                return [run]
            if PARENT_TAG in run.data.tags:
                return [mlflow.get_run(run.data.tags[PARENT_TAG])]
            raise ReportError(f"run {target} is neither a sweep (tag {SWEEP_TAG}=true) nor a job of one")
    experiments = mlflow.search_experiments()
    if target:
        experiments = [e for e in experiments if e.name == target]
        if not experiments:
            raise ReportError(f"{target!r} is neither a run id nor an experiment in {mlflow.tracking_uri}")
    parents = _sweeps_in(mlflow, [e.experiment_id for e in experiments]) if experiments else []
    if not parents:
        where = f"experiment {target!r}" if target else mlflow.tracking_uri
        raise ReportError(f"{where} has no sweep (no run tagged {SWEEP_TAG}=true): run `python run.py -m …` first")
    return parents if all_sweeps else parents[:1]


def load_sweep(target: str | None = None, tracking_uri: str | None = None, all_sweeps: bool = False) -> Sweep:
    """The sweep(s) named by `target` (see find_parents) and all their child runs."""
    uri = tracking_uri or default_tracking_uri()
    mlflow = client(uri)
    parents = find_parents(mlflow, target, all_sweeps)
    children = []
    for parent in parents:
        flt = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
        children += mlflow.search_runs([parent.info.experiment_id], filter_string=flt, max_results=10000)
    return Sweep(uri, mlflow.get_experiment(parents[0].info.experiment_id).name, parents, children)


def list_sweeps(tracking_uri: str | None = None) -> pd.DataFrame:
    """Every sweep in the store, latest first: what to pass as a report target."""
    mlflow = client(tracking_uri or default_tracking_uri())
    experiments = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    rows = [
        {
            "run_id": r.info.run_id,
            "experiment": experiments[r.info.experiment_id],
            "status": r.info.status,
            "started": pd.Timestamp(r.info.start_time, unit="ms"),
            "overrides": r.data.tags.get("sweep.overrides", ""),
        }
        for r in (_sweeps_in(mlflow, list(experiments)) if experiments else [])
    ]
    return pd.DataFrame(rows, columns=["run_id", "experiment", "status", "started", "overrides"])


def method_name(params: dict[str, str], key: str = "method") -> str:
    """`lowrank_lab.methods.sad.SADModule` -> `sad`; a wrapper names the method it wraps (`method.inner`: `slora_kd`,
    and `slora` around finetune)."""
    cls = params.get(f"{key}._target_", "").rsplit(".", 1)[-1]
    name = METHOD_NAMES.get(cls, cls.removesuffix("Module").lower() or "-")
    if f"{key}.inner._target_" not in params:
        base = params.get(f"{key}.base")  # runs tracked before SLoRA became a wrapper: `method.base=kd`
        return f"{name}_{base}" if base and base not in ("None", "finetune") else name
    inner = method_name(params, f"{key}.inner")
    return name if inner == "finetune" else f"{name}_{inner}"


def label(run: Any, key: str) -> str:
    """A run's value for a row key: its override (`method=kd` -> kd), else the method name, else Hydra's choice
    of that group (a tag: `peft` -> dora when an arm group picked it), else the param (`peft.lora_r`), else the
    class of `<key>._target_`, else `-`."""
    tags, params = run.data.tags, run.data.params
    if f"override.{key}" in tags:
        return tags[f"override.{key}"]
    if key == "method":
        return method_name(params)
    if key in CHOICE_GROUPS and key in tags:
        return tags[key]
    if key in params:
        return params[key]
    return params.get(f"{key}._target_", "-").rsplit(".", 1)[-1]


def task_of(run: Any) -> str:
    """The run's task: `data.task`, else its `data=` override, else the datamodule's class."""
    return run.data.params.get("data.task") or run.data.tags.get("override.data") or label(run, "data")


def default_group_by(runs: list[Any]) -> list[str]:
    """The method, then every overridden key whose value differs between runs (seed, task, paths… excluded)."""
    keys = sorted({k[len("override.") :] for r in runs for k in r.data.tags if k.startswith("override.")})
    varying = [
        k
        for k in keys
        if k != "method" and k not in NOT_CONFIG and not k.startswith(NOT_CONFIG_PREFIXES)
        if len({label(r, k) for r in runs}) > 1
    ]
    return ["method", *varying]


def primary_metric(metrics: dict[str, float]) -> str | None:
    """The task's validation metric among a run's metrics (`val/f1` for MRPC, `val/spearman` for STS-B, …)."""
    return next((f"val/{m}" for m in PRIMARY if f"val/{m}" in metrics), None)


def reported_metric(metrics: dict[str, float]) -> str | None:
    """The number a report shows: the task's `test/<m>` (the split nothing was selected on) when the job ran its
    test, else its `val/<m>`."""
    return next((f"test/{m}" for m in PRIMARY if f"test/{m}" in metrics), None) or primary_metric(metrics)


def baseline_of(run: Any, metric: str) -> float | None:
    """The trivial predictor's score for `metric` (`test/accuracy` -> `baseline/accuracy`), None when not logged."""
    return run.data.metrics.get(f"baseline/{metric.split('/', 1)[-1]}")


def learned(run: Any) -> bool | None:
    """The job's `lowrank_lab.learned` tag: True / False, None for a job that predates the tag."""
    value = run.data.tags.get(LEARNED_TAG)
    return None if value is None else value.strip().lower() == "true"


def init_name(params: dict[str, str]) -> str:
    """`init._target_` as a user types it: `…SpectralInit` -> `spectral`, `…Initializer` (peft's B = 0) ->
    `default`; no init param -> `default`."""
    cls = params.get("init._target_", "Initializer").rsplit(".", 1)[-1]
    return "default" if cls == "Initializer" else cls.removesuffix("Init").lower()


def wall_seconds(run: Any) -> float | None:
    """The job's wall time in seconds: `time/job_s` (its attempts summed, without queue time between a requeue and
    its restart), else its MLflow run's end − start; None while it runs."""
    if run.data.metrics.get("time/job_s") is not None and run.info.end_time:
        return float(run.data.metrics["time/job_s"])
    if not run.info.end_time or not run.info.start_time:
        return None
    return (run.info.end_time - run.info.start_time) / 1000.0


def sweep_wall_seconds(sweep: Sweep) -> float | None:
    """The sweep's wall time: first start to last end over its parent and child runs, in seconds."""
    runs = [*sweep.parents, *sweep.children]
    starts = [r.info.start_time for r in runs if r.info.start_time]
    ends = [r.info.end_time for r in runs if r.info.end_time]
    return (max(ends) - min(starts)) / 1000.0 if starts and ends else None
