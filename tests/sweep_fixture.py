"""Stores for the report, notebook and UI tests.

`small_sweep` (session): one real sweep through run.py, LoRA on a tiny random BERT for a few batches with 2 seeds
(the smallest sweep with a seed spread), shared by every test file that lists this module in `pytest_plugins` (so it
runs once per session); `fake_sweep` (session): make_fake_sweep's store, shared the same way.
`new_store(dir)`: a fresh sqlite store, copied from an empty one migrated once per process (MLflow's schema
migrations take ~10 s per new database on a loaded machine).
`make_fake_sweep(dir)`: a store written directly with MlflowClient (no training): kd vs sad on two tasks × three
seeds, with metric histories, spectral and gate metrics and a per-layer spectral history artifact, plus one failed
job; the numbers are returned so that tests can recompute them with numpy.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli

SWEEP_ARGS = ["-m", "model=tiny-bert", "trainer=debug", "data.max_length=32", "data.train_limit=128", "threads=1"]
SWEEP_ARGS += ["seed=1,2"]
TARGETS = {"kd": "lowrank_lab.methods.kd.DistillationModule", "sad": "lowrank_lab.methods.sad.SADModule"}
LAYERS = [f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


@dataclass
class Store:
    """A tracking store holding one sweep: its uri, parent run id, experiment name and (fake store) the values."""

    uri: str
    parent_id: str
    experiment: str
    out: Path
    values: dict[tuple[str, str, int], float] = field(default_factory=dict)  # (method, task, seed) -> final value


@functools.cache
def _blank_db() -> Path:
    from mlflow.tracking import MlflowClient

    folder = tempfile.mkdtemp(prefix="blank_mlflow_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()  # creates and migrates the tables
    return Path(folder) / "mlflow.db"


def new_store(root: Path) -> str:
    """The uri of a fresh, empty store `root/mlflow.db` (artifacts then go to `root/mlartifacts`)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_blank_db(), root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"


def _parent_of(uri: str, experiment: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`lowrank_lab.sweep` = 'true'")
    assert len(parents) == 1
    return parents[0].info.run_id


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory: pytest.TempPathFactory) -> Store:
    out = tmp_path_factory.mktemp("small_sweep") / "out"
    uri = new_store(out)
    proc = run_cli(SWEEP_ARGS, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Store(uri, _parent_of(uri, "lowrank_lab"), "lowrank_lab", out)


@pytest.fixture(scope="session")
def fake_sweep(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_fake_sweep(tmp_path_factory.mktemp("fake_sweep"))


def _png(path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    fig.suptitle(title)
    fig.savefig(path)


def make_fake_sweep(root: Path, experiment: str = "fake") -> Store:
    """kd vs sad × rte (val/accuracy), stsb (val/spearman + val/pearson) × seeds 0-2, histories at steps 10, 20."""
    import numpy as np
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from lowrank_lab.tracking import ensure_experiment

    uri = new_store(root)
    client = MlflowClient(uri)
    exp_id = ensure_experiment(uri, experiment)
    parent = client.create_run(exp_id, run_name="sweep", tags={"lowrank_lab.sweep": "true"}).info.run_id
    rng = np.random.default_rng(0)
    store = Store(uri, parent, experiment, root)
    for method in ("kd", "sad"):
        for task, metric in (("rte", "val/accuracy"), ("stsb", "val/spearman")):
            for seed in range(3):
                tags = {"mlflow.parentRunId": parent, "override.method": method, "override.data": task}
                tags["override.seed"] = str(seed)
                run_id = client.create_run(exp_id, run_name=f"{method}-{task}-{seed}", tags=tags).info.run_id
                params = {"method._target_": TARGETS[method], "data.task": task, "seed": str(seed), "peft.lora_r": "8"}
                final = float(rng.uniform(0.5, 0.9))
                store.values[(method, task, seed)] = final
                angle = 5.0 if method == "sad" else 70.0
                metrics = []
                for step, frac in ((10, 0.5), (20, 1.0)):
                    metrics += [Metric(metric, final * frac, 0, step), Metric("val/loss", 1.0 - final * frac, 0, step)]
                    metrics += [Metric("val/pearson", 0.1, 0, step)] if task == "stsb" else []
                    metrics += [Metric("spectral/principal_angle_mean", angle / frac, 0, step)]
                    metrics += [Metric("gate/accepted_steps", step * 0.6, 0, step)]
                client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
                layers = {n: {"principal_angle_mean": angle + i} for i, n in enumerate(LAYERS)}
                history = root / "tmp" / run_id / "spectral_history.jsonl"
                history.parent.mkdir(parents=True)
                history.write_text(json.dumps({"step": 20, "layers": layers}) + "\n")
                client.log_artifact(run_id, str(history), artifact_path="plots")
                if seed == 0:  # the per-layer figure the spectral callback saves (a stand-in)
                    _png(history.parent / "spectral_layers.png", f"{method} {task}")
                    client.log_artifact(run_id, str(history.parent / "spectral_layers.png"), artifact_path="plots")
                client.set_terminated(run_id, "FINISHED")
    failed = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "override.method": "kd"}).info.run_id
    client.log_batch(failed, metrics=[Metric("val/accuracy", 0.0, 0, 1)], tags=[RunTag("note", "killed")])
    client.set_terminated(failed, "FAILED")
    client.set_terminated(parent, "FAILED")
    return store
