"""`python -m lowrank_lab.tracking.report`: the method × task table (mean ± std over seeds), the paired Δ of two
methods, the standard plots, and the files logged to the sweep's parent run; numbers checked against numpy over
values read independently through MlflowClient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lowrank_lab.tracking.plots import PLOT_FILES
from lowrank_lab.tracking.report import main, write_report
from lowrank_lab.tracking.results import ReportError, load_sweep, method_name
from tests.sweep_fixture import Store

pytest_plugins = ["tests.sweep_fixture"]


def _artifacts(uri: str, run_id: str, path: str = "report") -> set[str]:
    return {Path(f.path).name for f in MlflowClient(uri).list_artifacts(run_id, path)}


@pytest.fixture
def fake(fake_sweep: Store) -> Store:
    return fake_sweep


@pytest.mark.parametrize(
    ("target", "base", "name"),
    [
        ("lowrank_lab.methods.sad.SADModule", None, "sad"),
        ("lowrank_lab.methods.kd.DistillationModule", None, "kd"),
        ("lowrank_lab.methods.slora.SLoRAModule", "kd", "slora_kd"),
        ("lowrank_lab.methods.slora.SLoRAModule", "finetune", "slora"),
        ("my.pkg.LoraFAModule", None, "lorafa"),
    ],
)
def test_method_names(target: str, base: str | None, name: str) -> None:
    params = {"method._target_": target} | ({"method.base": base} if base else {})
    assert method_name(params) == name


def test_table_delta_plots_and_artifacts(fake: Store, tmp_path: Path) -> None:
    sweep = load_sweep(fake.experiment, fake.uri)
    assert sweep.parents[0].info.run_id == fake.parent_id and len(sweep.children) == 13
    files = write_report(sweep, tmp_path / "report")

    summary = pd.read_csv(files["summary"])
    assert list(summary.columns) == ["method", "task", "metric", "n", "mean", "std"]  # nothing varies but the method
    assert len(summary) == 4 and set(summary["method"]) == {"kd", "sad"}
    assert dict(zip(summary["task"], summary["metric"])) == {"rte": "val/accuracy", "stsb": "val/spearman"}
    for row in summary.itertuples():
        seeds = [fake.values[(row.method, row.task, s)] for s in range(3)]  # the failed kd job is not among them
        assert row.n == 3
        assert row.mean == pytest.approx(np.mean(seeds)) and row.std == pytest.approx(np.std(seeds, ddof=1))

    delta = pd.read_csv(files["paired_delta"])
    assert len(delta) == 2
    for row in delta.itertuples():
        diffs = [fake.values[("sad", row.task, s)] - fake.values[("kd", row.task, s)] for s in range(3)]
        assert row.delta_mean == pytest.approx(np.mean(diffs)) and row.delta_std == pytest.approx(np.std(diffs, ddof=1))

    markdown = files["markdown"].read_text()
    assert "| method | rte (val/accuracy) | stsb (val/spearman) |" in markdown
    assert "## sad vs kd, paired by seed" in markdown and "Δ (sad − kd)" in markdown
    assert "12 finished of 13" in markdown
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == set(PLOT_FILES)
    assert _artifacts(fake.uri, fake.parent_id) == {p.name for p in files.values()}


def test_group_by_and_metric_options(fake: Store, tmp_path: Path) -> None:
    sweep = load_sweep(fake.parent_id, fake.uri)
    files = write_report(sweep, tmp_path, ["method", "peft.lora_r"], ["val/loss", "val/pearson"], log=False)
    summary = pd.read_csv(files["summary"])
    assert list(summary.columns[:2]) == ["method", "peft.lora_r"] and set(summary["peft.lora_r"]) == {8}
    expected = {("rte", "val/loss"), ("stsb", "val/loss"), ("stsb", "val/pearson")}
    assert set(zip(summary["task"], summary["metric"])) == expected


def test_targets(fake: Store) -> None:
    client = MlflowClient(fake.uri)
    child = client.search_runs([client.get_experiment_by_name(fake.experiment).experiment_id], max_results=1)[0]
    assert load_sweep(child.info.run_id, fake.uri).parents[0].info.run_id == fake.parent_id  # a job -> its sweep
    assert load_sweep(None, fake.uri).parents[0].info.run_id == fake.parent_id  # latest sweep in the store
    with pytest.raises(ReportError, match="neither a run id nor an experiment"):
        load_sweep("no_such_experiment", fake.uri)


def test_cli_bad_target_is_one_line(fake: Store, capsys: pytest.CaptureFixture) -> None:
    assert main(["no_such_experiment", "--tracking-uri", fake.uri]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error: 'no_such_experiment' is neither a run id")


@pytest.mark.slow
def test_report_of_a_real_sweep(small_sweep: Store, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    assert main([small_sweep.parent_id, "--tracking-uri", small_sweep.uri, "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["method", "task", "metric", "n", "mean", "std"]
    assert summary[["method", "task", "metric"]].values.tolist() == [["finetune", "sst2", "val/accuracy"]]

    client = MlflowClient(small_sweep.uri)
    exp = client.get_experiment_by_name(small_sweep.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{small_sweep.parent_id}'")
    acc = [c.data.metrics["val/accuracy"] for c in children]
    assert len(acc) == summary["n"][0] == 2
    assert summary["mean"][0] == pytest.approx(np.mean(acc)) and summary["std"][0] == pytest.approx(np.std(acc, ddof=1))

    written = {"report.md", "summary.csv", "runs.csv", "val_metric_vs_step.png"}
    assert {p.name for p in out.iterdir()} == written
    assert _artifacts(small_sweep.uri, small_sweep.parent_id) == written
    assert f"| finetune | {summary['mean'][0]:.4f} ± {summary['std'][0]:.4f} (n=2) |" in (out / "report.md").read_text()
    assert f"logged to run {small_sweep.parent_id}" in capsys.readouterr().out
