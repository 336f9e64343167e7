"""`logger=` entries are Lightning loggers (issue 16, item 4): mlflow writes into the job's run, csv writes
metrics.csv in the job dir, none logs nothing, and a user's logger is one yaml file found on Hydra's search path."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

from lowrank_lab.errors import LabError
from lowrank_lab.tracking.loggers import build_loggers
from tests.conftest import compose_config, run_cli


def logger_node(tmp_path: Path, *overrides: str):
    return compose_config(f"paths.run_dir={tmp_path}", f"paths.output_dir={tmp_path}", *overrides).logger


def test_mlflow_entry_logs_into_the_jobs_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    node = logger_node(tmp_path, "logger=mlflow")
    client = MlflowClient(node.tracking_uri)
    run_id = client.create_run(client.create_experiment("lowrank_lab")).info.run_id
    (logger,) = build_loggers(node, run_id)
    assert isinstance(logger, MLFlowLogger) and logger.run_id == run_id
    logger.log_metrics({"val/accuracy": 0.75}, step=3)
    assert client.get_run(run_id).data.metrics == {"val/accuracy": 0.75}


def test_csv_and_none(tmp_path: Path) -> None:
    (logger,) = build_loggers(logger_node(tmp_path, "logger=csv"), None)
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path
    logger.log_metrics({"val/accuracy": 0.5}, step=0)
    logger.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert rows == [{"step": "0", "val/accuracy": "0.5"}]
    assert build_loggers(logger_node(tmp_path, "logger=none"), None) == []


def test_tensorboard_writes_event_files(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logger,) = build_loggers(logger_node(tmp_path, "logger=tensorboard"), None)
    assert isinstance(logger, TensorBoardLogger) and Path(logger.log_dir) == tmp_path / "tensorboard"
    logger.log_metrics({"val/accuracy": 0.25}, step=2)
    logger.finalize("success")
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/accuracy")] == [(2, 0.25)]


def test_a_users_logger_is_one_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "conf" / "logger").mkdir(parents=True)
    (tmp_path / "conf" / "logger" / "mine.yaml").write_text(
        "_target_: lightning.pytorch.loggers.CSVLogger\nsave_dir: ${paths.run_dir}\nname: mine\n"
    )
    node = logger_node(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "logger=mine")
    (logger,) = build_loggers(node, None)
    assert isinstance(logger, CSVLogger) and logger.name == "mine"


def test_a_target_that_is_not_a_logger_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="logger._target_"):
        build_loggers(logger_node(tmp_path, "logger=csv", "logger._target_=argparse.Namespace"), None)


@pytest.mark.slow
def test_run_py_with_csv_logger(tmp_path: Path) -> None:
    args = ["model=tiny-bert", "trainer=debug", "threads=1", "data.train_limit=64", "logger=csv"]
    args.append("extras.print_config=false")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics,) = tmp_path.glob("runs/*/*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    tested = [float(r["test/accuracy"]) for r in rows if r.get("test/accuracy")]
    assert len(tested) == 1 and f"test/accuracy │ {tested[0]:.4f}" in proc.stdout  # the summary's number
    assert any(r.get("val/accuracy") for r in rows) and any(r.get("train/loss") for r in rows)
    assert not (tmp_path / "mlflow.db").exists()
