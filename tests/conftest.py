"""Shared fixtures: offline env, the repo's prepared data, `compose_config` (the repo's conf/ through Hydra's compose
API), and a `run_cli` that runs run.py in a subprocess against a fresh outputs folder (own MLflow store, own Hydra
dirs)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "outputs" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _ensure_data() -> None:
    if not (DATA_DIR / "glue").exists():
        subprocess.run([sys.executable, "-m", "lowrank_lab.data.prepare", "--out", str(DATA_DIR)], check=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    _ensure_data()
    return DATA_DIR


def compose_config(*overrides: str, config_name: str = "config", hydra: bool = False) -> DictConfig:
    """`config_name` from the repo's conf/ with `overrides`, as run.py composes it; `hydra=True` keeps the `hydra`
    section (sweeper params, launcher, runtime choices)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)


def unpadded(markdown: str) -> str:
    """A markdown table's text with tabulate's column padding collapsed to one space, so a test can look for
    `| a | b |` whatever the column widths (an empty cell reads `| |`)."""
    return re.sub(r" {2,}", " ", markdown)


def run_cli(args: list[str], out: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py <args>` with outputs (runs, mlflow.db) under `out` and the repo's prepared data."""
    _ensure_data()
    cmd = [sys.executable, str(REPO / "run.py"), *args, f"paths.output_dir={out}", f"paths.data_dir={DATA_DIR}"]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def mlflow_runs(out: Path, experiment: str = "lowrank_lab") -> list:
    """All runs of `experiment` in the store under `out` (empty if the store was never created)."""
    from mlflow.tracking import MlflowClient

    db = out / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture
def cli():
    return run_cli


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
