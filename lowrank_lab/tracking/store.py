"""The MLflow store: create it (and its experiment) once, in the launching process, before any job writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARENT_ENV = "LOWRANK_LAB_PARENT_RUN_ID"
MAX_PARAM_CHARS = 6000


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store sit beside the DB (`<dir>/mlartifacts`), not in the current directory."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Return the id of experiment `name` in the store at `tracking_uri`, creating the DB and experiment."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(tracking_uri))
    except Exception:
        found = client.get_experiment_by_name(name)  # created meanwhile by another process
        if found is None:
            raise
        return found.experiment_id


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """`{"peft": {"lora_r": 8}}` -> `{"peft.lora_r": "8"}`; values cut to MLflow's param length."""
    data: Any = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def parent_run_id() -> str | None:
    """The sweep's parent run, set by the launching process for the jobs it starts."""
    return os.environ.get(PARENT_ENV) or None


class MLflowSettings:
    """`logger=mlflow`: where runs go. The store is created lazily by the launching process or the job."""

    def __init__(self, tracking_uri: str | None, experiment_name: str | None = "lowrank_lab") -> None:
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
