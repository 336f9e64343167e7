"""The MLflow store: create it (and its experiment) once, in the launching process, before any job writes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARENT_ENV = "LOWRANK_LAB_PARENT_RUN_ID"
MAX_PARAM_CHARS = 6000
SQLITE_BUSY_MS = 120_000  # how long a sqlite writer waits for the lock (Python's default: 5 s)
# scheme://user:password@host or scheme://token@host: the part before '@' is a credential
CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def mask_credentials(text: str) -> str:
    """`http://alice:s3cret@host:5000` -> `http://***@host:5000`: the form of every URI that goes into a param, a tag
    or a run name (a tracking URI with `user:pass@`, a database URL); anything else is returned unchanged."""
    return CREDENTIALS.sub(r"\g<scheme>***@", text)


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store sit beside the DB (`<dir>/mlartifacts`), not in the current directory."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def _sqlite_busy_timeout(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLAlchemy connect hook: a writer that finds the DB locked waits up to SQLITE_BUSY_MS instead of failing."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")


def configure_sqlite() -> None:
    """Every sqlite connection this process opens (MLflow's store, Lightning's MLFlowLogger) gets the busy timeout;
    idempotent. WAL itself is a property of the DB file, set once by `ensure_experiment`."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _sqlite_busy_timeout):
        event.listen(Engine, "connect", _sqlite_busy_timeout)


def enable_wal(db: Path) -> None:
    """Write-ahead logging: readers never block the writer and a writer holds the lock for a commit only, so many
    jobs of one sweep on one host write one store concurrently. Persistent in the file; set before jobs start."""
    import sqlite3

    with sqlite3.connect(db, timeout=SQLITE_BUSY_MS / 1000) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Return the id of experiment `name` in the store at `tracking_uri`, creating the DB (WAL, busy timeout) and
    the experiment."""
    if not tracking_uri.startswith("sqlite:///"):
        return _get_or_create(tracking_uri, name)
    from filelock import FileLock

    db = Path(tracking_uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    # two runs started together on a new DB would both run MLflow's migrations and one fails: one at a time
    with FileLock(f"{db}.lock", timeout=SQLITE_BUSY_MS / 1000):
        enable_wal(db)  # before MLflow creates the tables: its migrations already run in WAL
        return _get_or_create(tracking_uri, name)


def _get_or_create(tracking_uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

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


def flat_values(data: dict, prefix: str = "") -> dict[str, Any]:
    """`{"peft": {"lora_r": 8}}` -> `{"peft.lora_r": 8}`: dotted keys, leaves as they are (an empty dict is one)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_values(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """`{"peft": {"lora_r": 8}}` -> `{"peft.lora_r": "8"}`; credentials in URIs masked, values cut to MLflow's
    param length."""
    data: Any = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: mask_credentials(str(v))[:MAX_PARAM_CHARS] for k, v in flat_values(data, prefix).items()}


def parent_run_id() -> str | None:
    """The sweep's parent run, set by the launching process for the jobs it starts."""
    return os.environ.get(PARENT_ENV) or None


class MLflowSettings:
    """`logger=mlflow`: where runs go. The store is created lazily by the launching process or the job."""

    def __init__(self, tracking_uri: str | None, experiment_name: str | None = "lowrank_lab") -> None:
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name


configure_sqlite()  # on import: job processes import this module before they open the store
