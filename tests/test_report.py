"""`python -m lowrank_lab.tracking.report`: the method × task table (mean ± std over seeds, baselines, learned), the
paired Δ of two methods (scipy's paired t-test, bootstrap CI), the standard plots, the files logged to the sweep's
parent run, and the results page (--page); numbers checked against numpy / scipy over values read independently
through MlflowClient."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from lowrank_lab.tracking import pages, stats
from lowrank_lab.tracking.plots import PLOT_FILES
from lowrank_lab.tracking.report import main, write_report
from lowrank_lab.tracking.results import ReportError, load_sweep, method_name
from tests.conftest import unpadded
from tests.sweep_fixture import Store
from tests.test_claims import BASELINE, GLUE, JOBS_COMMIT, sad_glue_store

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
        ("lowrank_lab.methods.slora.SLoRAModule", "lowrank_lab.methods.kd.DistillationModule", "slora_kd"),
        ("lowrank_lab.methods.slora.SLoRAModule", "lowrank_lab.methods.finetune.FinetuneModule", "slora"),
        ("my.pkg.LoraFAModule", None, "lorafa"),
    ],
)
def test_method_names(target: str, base: str | None, name: str) -> None:
    params = {"method._target_": target} | ({"method.inner._target_": base} if base else {})
    assert method_name(params) == name


def test_table_delta_plots_and_artifacts(fake: Store, tmp_path: Path) -> None:
    sweep = load_sweep(fake.experiment, fake.uri)
    assert sweep.parents[0].info.run_id == fake.parent_id and len(sweep.children) == 13
    files = write_report(sweep, tmp_path / "report")

    summary = pd.read_csv(files["summary"])
    columns = ["method", "task", "metric", "n", "mean", "std", "baseline", "learned"]
    assert list(summary.columns) == columns  # nothing varies but the method
    assert summary["baseline"].isna().all() and set(summary["learned"]) == {"–"}  # a store without them
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
        new = [fake.values[("sad", row.task, s)] for s in range(3)]
        assert row.t_p == pytest.approx(scipy_stats.ttest_rel(new, [n - d for n, d in zip(new, diffs)]).pvalue)
        assert (row.ci_low, row.ci_high) == pytest.approx(stats.bootstrap_ci(diffs)) and np.isnan(row.wilcoxon_p)

    markdown = unpadded(files["markdown"].read_text())
    assert "| method | rte (val/accuracy) | stsb (val/spearman) |" in markdown
    assert "## sad vs kd, paired by seed" in markdown and "Δ (sad − kd)" in markdown and "| p (t) |" in markdown
    assert "12 finished of 13" in markdown
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == set(PLOT_FILES)
    assert _artifacts(fake.uri, fake.parent_id) == {p.name for p in files.values()}


def test_by_seed_plot_joins_each_seeds_values(fake: Store) -> None:
    """The per-seed plot: a panel per task, one line per seed through that seed's value of each method (the values
    the paired Δ pairs), the mean of each method as a bar."""
    from lowrank_lab.tracking.plots import by_seed_figure
    from lowrank_lab.tracking.tables import run_values

    fig = by_seed_figure(run_values(load_sweep(fake.experiment, fake.uri), ["method"]), ["method"])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"rte", "stsb"}  # the fake store logs no baseline: the title is the task alone
    for task, ax in panels.items():
        methods = [t.get_text() for t in ax.get_xticklabels()]
        assert methods == ["kd", "sad"]
        seed_lines = sorted(tuple(line.get_ydata()) for line in ax.get_lines() if len(line.get_xdata()) == 2)
        expected = sorted(tuple(fake.values[(m, task, s)] for m in methods) for s in range(3))
        np.testing.assert_allclose(seed_lines, expected)
        bars = sorted(c.get_segments()[0][0][1] for c in ax.collections)
        means = sorted(np.mean([fake.values[(m, task, s)] for s in range(3)]) for m in methods)
        assert bars == pytest.approx(means)


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
    assert list(summary.columns) == ["method", "task", "metric", "n", "mean", "std", "baseline", "learned"]
    client = MlflowClient(small_sweep.uri)
    exp = client.get_experiment_by_name(small_sweep.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{small_sweep.parent_id}'")
    metric = "test/accuracy" if "test/accuracy" in children[0].data.metrics else "val/accuracy"  # test/ when run
    assert summary[["method", "task", "metric"]].values.tolist() == [["finetune", "sst2", metric]]
    acc = [c.data.metrics[metric] for c in children]
    assert len(acc) == summary["n"][0] == 2
    assert summary["mean"][0] == pytest.approx(np.mean(acc)) and summary["std"][0] == pytest.approx(np.std(acc, ddof=1))

    written = {"report.md", "summary.csv", "runs.csv", "reported_by_seed.png"}
    val = metric.replace("test/", "val/")
    if any(len(client.get_metric_history(c.info.run_id, val)) > 1 for c in children):  # a curve to draw
        written.add("val_metric_vs_step.png")
    assert {p.name for p in out.iterdir()} == written
    assert _artifacts(small_sweep.uri, small_sweep.parent_id) == written
    assert f"| finetune | {summary['mean'][0]:.4f} ± {summary['std'][0]:.4f} (n=2) |" in unpadded(
        (out / "report.md").read_text()
    )
    assert f"logged to run {small_sweep.parent_id}" in capsys.readouterr().out


def test_results_page(tmp_path: Path) -> None:
    """--page: the committed page has every section, its plots exist beside it and its links resolve; the table
    carries the baseline row and the learned column; the FAILED job is counted, not averaged."""
    uri, parent = sad_glue_store(tmp_path / "store")
    page = tmp_path / "docs" / "results" / "sad_glue.md"
    argv = ["sad_glue", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-log", "--page", str(page)]
    assert main([*argv, "--command", "make reproduce-sad-glue SCALE=small"]) == 0
    text = unpadded(page.read_text())
    sections = ["## Claim", "## How this was made", "## Results", "## Paired test", "## Verdict", "## Plots"]
    sections += ["## Differences from the paper"]
    assert [text.index(s) for s in sections] == sorted(text.index(s) for s in sections)
    assert (
        "- command: `make reproduce-sad-glue SCALE=small`" in text
        and "- sweep overrides: `experiment=sad_glue`" in text
    )
    # the commit the jobs ran at (from their tags), then the checkout that wrote the page
    jobs = f"- git commit: {JOBS_COMMIT} (dirty: uncommitted changes), the jobs'; this page written at "
    assert f"{jobs}{pages.git_state()}\n" in text and pages.git_state().split()[0] != "unknown"
    assert f"{os.cpu_count()} cores" in text and "jobs: `threads` = 1, accelerator = cpu" in text
    # the parent ran 125 s; 36 jobs finished in 60 s each; the FAILED one is counted, never averaged
    assert "wall time of the sweep: 125 s (2.1 min); jobs: 36 finished, 1 not finished" in text
    rte = np.array(GLUE[("rte", "sad")])
    row = f"| sad | sad | {rte.mean():.4f} ± {rte.std(ddof=1):.4f} (n=6) |"
    assert (
        row in text
        and f"| baseline (trivial predictor) | | {BASELINE['rte']:.4f} | {BASELINE['sst2']:.4f} | – |" in text
    )
    assert "**SAD vs KD, B = 0 (the paper's comparison): holds on 2 of 2 (rte, sst2) |" in text
    assert pages.DIFFERENCES["sad_glue"] in text
    links = re.findall(r"!\[\]\(([^)]+)\)", text)
    assert "sad_glue_delta_ci.png" in links and "sad_glue_val_metric_vs_step.png" in links
    for link in links:
        png = page.parent / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    assert {p.name for p in page.parent.iterdir()} == {"sad_glue.md", *links}


def test_every_reproduction_has_its_differences() -> None:
    names = {"sad_synthetic", "sad_glue", "adapter_compare", "slora_ablation", "slad", "slad_vision", "lorafa_math"}
    assert names <= set(pages.DIFFERENCES) and all(len(pages.DIFFERENCES[n]) > 100 for n in names)


def test_no_curve_from_one_validation_per_job(tmp_path: Path, fake: Store) -> None:
    """A sweep whose jobs validated once has no metric-vs-step curve to draw (the per-seed plot shows its values);
    the fake sweep's two validations per job do make one."""
    from mlflow.entities import Metric, Param

    from lowrank_lab.tracking import ensure_experiment
    from lowrank_lab.tracking.plots import metric_vs_step
    from tests.sweep_fixture import new_store

    uri = new_store(tmp_path / "once")
    client = MlflowClient(uri)
    exp_id = ensure_experiment(uri, "once")
    parent = client.create_run(exp_id, run_name="sweep", tags={"lowrank_lab.sweep": "true"}).info.run_id
    for seed in range(2):
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "override.seed": str(seed)}).info.run_id
        params = [Param("method._target_", "lowrank_lab.methods.finetune.FinetuneModule"), Param("seed", str(seed))]
        client.log_batch(
            run, metrics=[Metric("val/accuracy", 0.8, 0, 19)], params=params + [Param("data.task", "sst2")]
        )
        client.set_terminated(run, "FINISHED")
    assert metric_vs_step(load_sweep("once", uri), ["method"]) is None
    assert metric_vs_step(load_sweep(fake.experiment, fake.uri), ["method"]) is not None
