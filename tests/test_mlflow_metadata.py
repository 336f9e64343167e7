"""MLflow metadata of a job's run (issue 16, item 5): short names, Hydra choices and config tags as tags, the git
commit, the dataset as an input, system metrics, and artifacts without checkpoints — on a real sqlite store."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lowrank_lab.tracking.job import _MONITORS, finish_job_run, start_job_run
from lowrank_lab.tracking.metadata import git_tags, hydra_choices, short_run_name, swept_keys
from tests.conftest import REPO, compose_config, mlflow_runs, run_cli

NAMES = [  # (config, Hydra choices, sweep job number) -> the run name
    (
        {"method": {}, "peft": {"lora_r": 8}, "data": {"task": "sst2"}, "seed": 0},
        {"method": "sad", "peft": "lora"},
        None,
        "sad r=8 sst2 s0",
    ),
    (
        {"peft": {"lora_r": 4}, "data": {"task": "rte"}, "seed": 1},
        {"method": "kd", "peft": "kasa", "init": "spectral"},
        3,
        "kd kasa r=4 spectral rte s1 #3",
    ),
    (
        {"peft": {"lora_r": 8}, "data": {"task": "mrpc"}, "seed": 2},
        {"method": "finetune", "peft": "none"},
        None,
        "finetune none mrpc s2",
    ),
    ({"method": {"_target_": "lowrank_lab.methods.sad.SADModule"}, "seed": 5}, {}, None, "sad s5"),
]


@pytest.mark.parametrize("cfg,choices,number,expected", NAMES)
def test_short_run_name(cfg: dict, choices: dict, number: int | None, expected: str) -> None:
    assert short_run_name(OmegaConf.create(cfg), choices, number) == expected


@pytest.mark.parametrize(
    ("experiment", "arm", "expected"),
    [
        ("lorafa_math", "arm=cyclic", "lorafa qv r=8 gradient gsm8k arm=cyclic s0 #4"),
        ("slora_ablation", "method.gate.mode=combined", "slora r=8 sst2 mode=combined s0 #4"),
    ],
)
def test_swept_keys_name_the_arm(experiment: str, arm: str, expected: str) -> None:
    """An experiment file's swept keys that the name does not already show (lorafa's `arm`, SLoRA's gate mode) go
    into the run name, so the arms of one sweep have different names."""
    cfg = compose_config(f"experiment={experiment}", arm, "seed=0", hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        swept = swept_keys()
        assert short_run_name(cfg, hydra_choices(), 4, swept) == expected
    finally:
        HydraConfig.instance().cfg = None


def test_hydra_choices_are_the_composed_groups() -> None:
    cfg = compose_config("method=sad", "model=tiny-bert", "data=rte", hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert hydra_choices() == {
            "method": "sad",
            "peft": "lora",
            "init": "spectral",  # conf/method/sad.yaml's defaults choose it
            "model": "tiny-bert",
            "data": "rte",
        }
    finally:
        HydraConfig.instance().cfg = None


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def test_git_tags_commit_and_dirty_flag(tmp_path: Path) -> None:
    assert git_tags(tmp_path) == {}  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = (tmp_path / ".git" / (tmp_path / ".git" / "HEAD").read_text().split()[1]).read_text().strip()
    assert git_tags(tmp_path) == {"mlflow.source.git.commit": head, "lowrank_lab.git.dirty": "false"}
    (tmp_path / "a.txt").write_text("two")
    assert git_tags(tmp_path)["lowrank_lab.git.dirty"] == "true"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module's tests (creating one runs MLflow's migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"input_ids": [101, offset + i, 102], "attention_mask": [1, 1, 1], "labels": i % 2} for i in range(n)]


def _cfg(store: str, **logger) -> OmegaConf:
    return OmegaConf.create(
        {
            "logger": {"tracking_uri": store, "experiment_name": "meta", **logger},
            "method": {"_target_": "lowrank_lab.methods.kd.KDModule"},
            "peft": {"lora_r": 8},
            "data": {"task": "sst2"},
            "seed": 0,
            "tags": ["glue", "r8"],
        }
    )


def test_job_run_tags_name_and_dataset_inputs(tmp_path: Path, store: str) -> None:
    from mlflow.tracking import MlflowClient

    dev = _rows(5, offset=1000)
    datamodule = SimpleNamespace(
        splits={"train": _rows(12), "val": dev, "test": dev},
        task=SimpleNamespace(name="sst2"),
        path=None,
        data_dir=tmp_path,
    )
    run_id = start_job_run(_cfg(store), tmp_path / "job", ["seed=0"], "seed=0", datamodule=datamodule)
    run = MlflowClient(store).get_run(run_id)
    assert run.info.run_name == "kd r=8 sst2 s0"
    assert run.data.tags["glue"] == run.data.tags["r8"] == "true"
    assert run.data.tags["overrides"] == "seed=0" and run.data.tags["override.seed"] == "0"
    assert run.data.tags["mlflow.source.git.commit"] == _git(REPO, "rev-parse", "HEAD")
    assert run.data.tags["lowrank_lab.git.dirty"] in ("true", "false")
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val+test"}  # val and test are the same rows: one input
    assert {d.name for d in inputs.values()} == {"sst2"} and inputs["train"].digest != inputs["val+test"].digest
    rows = {k: OmegaConf.create(d.profile).num_rows for k, d in inputs.items()}
    assert rows == {"train": 12, "val+test": 5}
    assert OmegaConf.create(inputs["train"].source).uri == str(tmp_path)


def test_artifacts_leave_checkpoints_out(tmp_path: Path, store: str) -> None:
    from mlflow.tracking import MlflowClient

    job = tmp_path / "job"
    files = [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "resolved_config.yaml",
        "plots/angles.png",
        "checkpoints/last.ckpt",
        "checkpoints/best-step4.ckpt",
        ".hydra/config.yaml",
    ]
    for name in files:
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_text(name)
    run_id = start_job_run(_cfg(store), job, [], "")
    finish_job_run(store, run_id, job)
    client = MlflowClient(store)

    def walk(path: str | None = None) -> set[str]:
        found = set()
        for item in client.list_artifacts(run_id, path):
            found |= walk(item.path) if item.is_dir else {item.path}
        return found

    expected = {f for f in files if not f.endswith(".ckpt")} | {"mlflow_run_id"}
    assert walk() == expected
    assert client.get_run(run_id).info.status == "FINISHED"


def test_system_metrics_monitor(tmp_path: Path, store: str) -> None:
    from mlflow.tracking import MlflowClient

    run_id = start_job_run(_cfg(store, system_metrics=True, system_metrics_interval=0.2), tmp_path / "job", [], "")
    client = MlflowClient(store)
    deadline = time.monotonic() + 60  # wait for the monitor's first sample (no assertion on how long it took)
    while not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics):
        assert time.monotonic() < deadline, "no system/* metric logged within 60 s"
        time.sleep(0.2)
    finish_job_run(store, run_id, tmp_path / "job")
    assert run_id not in _MONITORS
    metrics = client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    off = start_job_run(_cfg(store), tmp_path / "job2", [], "")
    assert off not in _MONITORS  # default: off


@pytest.mark.slow
def test_run_py_job_metadata(tmp_path: Path) -> None:
    """A real job: config tree printed, Hydra choices and config tags, run.py as source, the GLUE dataset as an
    input, checkpoints (last + best) on disk but not among the artifacts."""
    from mlflow.tracking import MlflowClient

    args = ["model=tiny-bert", "trainer=debug", "threads=1", "data.train_limit=64", "tags=[smoke]"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CONFIG" in proc.stdout and "lora_r: 8" in proc.stdout  # the rich config tree
    (run,) = mlflow_runs(tmp_path)
    tags = run.data.tags
    assert run.info.run_name == "finetune r=8 sst2 s42"
    assert {k: tags[k] for k in ("method", "peft", "init", "model", "data", "smoke")} == {
        "method": "finetune",
        "peft": "lora",
        "init": "default",
        "model": "tiny-bert",
        "data": "sst2",
        "smoke": "true",
    }
    assert tags["mlflow.source.name"] == "run.py" and tags["mlflow.source.git.commit"] == _git(
        REPO, "rev-parse", "HEAD"
    )
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val+test"} and OmegaConf.create(inputs["train"].profile).num_rows == 64
    job = Path(tags["job_dir"])
    ckpts = {p.name for p in (job / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "resolved_config.yaml"} <= top and "checkpoints" not in top
