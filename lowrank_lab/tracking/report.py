"""A sweep's comparison report, read from MLflow only:

    python -m lowrank_lab.tracking.report <sweep run id | experiment name> [--tracking-uri URI] [--out DIR]
        [--group-by method,peft.lora_r …] [--metric test/accuracy …] [--all-sweeps] [--no-log]
        [--page docs/results/<experiment>.md [--command "make reproduce-…"]]

Rows are configurations (the `--group-by` labels; default: the method plus every override that varies across the
sweep's jobs, seed and task excluded), columns are tasks (`data.task`), cells are mean ± sample std (ddof = 1) of a
metric's final value over seeds (default: the task's test/ metric, else val/), with n, a `learned` column and the
trivial baseline as the last row. With exactly two methods a second table pairs them seed by seed (Δ = new −
baseline, t-test, Wilcoxon, bootstrap CI), unless the experiment has a paper claim (claims.py), which is checked and
shown instead. Only FINISHED jobs count. Markdown, CSV and the standard plots (plots.py) go under
outputs/reports/<experiment>/ and to the sweep's parent run as artifacts under `report/`; `--page` also writes the
committed results page (pages.py) with its plots beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from lowrank_lab.tracking import claims as claiming
from lowrank_lab.tracking import pages, stats, tables
from lowrank_lab.tracking import plots as plotting
from lowrank_lab.tracking.results import ReportError, Sweep, client, default_group_by, load_sweep

REPORT_FILES = ("report.md", "summary.csv", "runs.csv", "paired_delta.csv", "claim.csv")


def render_markdown(
    sweep: Sweep, table: pd.DataFrame, delta: pd.DataFrame, claim: claiming.Claim | None, plots: list[Path]
) -> str:
    """The report: where the numbers come from, the method × task table, the paired Δ, the claim, the plots."""
    finished, total = len(sweep.finished), len(sweep.children)
    parents = ", ".join(f"`{p.info.run_id}` ({p.info.status})" for p in sweep.parents)
    lines = [
        f"# Sweep report: {sweep.experiment}",
        "",
        f"- store: `{sweep.tracking_uri}`; sweep run(s): {parents}",
        f"- child runs: {finished} finished of {total} (others excluded)",
        "- cells: mean ± sample std (ddof = 1) of the metric's final value over seeds; n = number of seeds; last row: "
        "the trivial predictor on the same split; `learned`: runs that beat it",
        "",
        tables.markdown_table(table.reset_index()) if not table.empty else "_no finished run has the metric_",
    ]
    if not delta.empty and claim is None:  # a claim shows its own comparison
        base, new = delta.attrs["methods"]
        lines += ["", f"## {new} vs {base}, paired by seed", "", tables.markdown_table(tables.shown_delta(delta))]
    if claim is not None:
        lines += ["", f"## Claim: {claim.title}", "", claim.statement, "", f"**Verdict:** {claim.verdict}"]
        lines += ["", tables.markdown_table(claim.shown)] if not claim.shown.empty else []
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _comparison(claim: claiming.Claim | None, delta: pd.DataFrame) -> tuple[str, str, str]:
    """(comparison table markdown, verdict, statement) for the page: the claim's, else the two methods' Δ."""
    if claim is not None:
        shown = tables.markdown_table(claim.shown) if not claim.shown.empty else ""
        return shown, claim.verdict, claim.statement
    if delta.empty:
        return "", "", ""
    base, new = delta.attrs["methods"]
    verdicts = [f"{r['task']}: {stats.direction(tables.ci_of(r))}" for r in delta.to_dict("records")]
    verdict = f"{new} vs {base} (no paper claim; CI of the mean Δ): " + "; ".join(verdicts)
    return tables.markdown_table(tables.shown_delta(delta)), verdict, ""


def _delta_rows(claim: claiming.Claim | None, delta: pd.DataFrame) -> list[dict]:
    if claim is not None:
        return claim.deltas
    return [
        {"name": str(r["task"]), "delta_mean": r["delta_mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
        for r in (delta.to_dict("records") if not delta.empty else [])
    ]


def write_report(
    sweep: Sweep,
    out: Path,
    group_by: list[str] | None = None,
    metrics: list[str] | None = None,
    log: bool = True,
    page: Path | None = None,
    command: str | None = None,
) -> dict[str, Path]:
    """Write report.md, summary.csv, runs.csv (+ paired_delta.csv, claim.csv, plots) under `out`; log them to the
    sweep's parent run under `report/`; with `page`, also the results page and its plots (dpi 80) beside it.
    Returns the files by kind."""
    group_by = group_by or default_group_by(sweep.finished)
    values = tables.run_values(sweep, group_by, metrics)
    summary = tables.summarize(values, group_by)
    delta = tables.paired_delta(values, group_by)
    claim = claiming.check(sweep, group_by)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*REPORT_FILES, *plotting.PLOT_FILES):  # a previous report's files only
        (out / name).unlink(missing_ok=True)
    frames = {"summary": summary, "runs": values}
    frames |= {"paired_delta": delta} if not delta.empty else {}
    frames |= {"claim": claim.table} if claim is not None else {}
    files = {}
    for name, frame in frames.items():
        files[name] = out / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    figures = plotting.standard_figures(sweep, group_by, metrics, values)
    title = "mean paired Δ (new − base, per seed) with its bootstrap 95 % CI"
    if (fig := plotting.delta_figure(_delta_rows(claim, delta), title)) is not None:
        figures = {"delta_ci": fig} | figures
    for name, fig in figures.items():
        files[name] = out / f"{name}.png"
        fig.savefig(files[name], dpi=110)
    files["markdown"] = out / "report.md"
    plots = [files[name] for name in figures]
    table = tables.pivot(summary, group_by)
    files["markdown"].write_text(render_markdown(sweep, table, delta, claim, plots))
    if log:
        mlflow = client(sweep.tracking_uri)
        for path in files.values():
            mlflow.log_artifact(sweep.parents[0].info.run_id, str(path), artifact_path="report")
    if page is not None:
        page.parent.mkdir(parents=True, exist_ok=True)
        shown = [page.parent / f"{page.stem}_{name}.png" for name in figures]
        for old in plotting.PLOT_FILES:  # the page's previous plots only
            (page.parent / f"{page.stem}_{old}").unlink(missing_ok=True)
        for path, fig in zip(shown, figures.values()):
            fig.savefig(path, dpi=80)
        table_md = tables.markdown_table(table.reset_index()) if not table.empty else "_no finished run has the metric_"
        comparison, verdict, statement = _comparison(claim, delta)
        text = pages.render(sweep, command or _command(), table_md, comparison, verdict, statement, shown)
        page.write_text(text)
        files["page"] = page
    return files


def _command() -> str:
    """This process's command line, as a user would type it."""
    return " ".join(["python -m lowrank_lab.tracking.report", *sys.argv[1:]])


def _names(values: list[str] | None) -> list[str] | None:
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    return names or None


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); a target that names nothing is one line and exit code 2."""
    p = argparse.ArgumentParser(prog="python -m lowrank_lab.tracking.report", description=__doc__.split("\n")[0])
    p.add_argument("target", nargs="?", help="sweep parent run id, or experiment name (its latest sweep)")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or outputs/mlflow.db")
    p.add_argument("--out", type=Path, default=None, help="default: outputs/reports/<experiment>")
    p.add_argument("--group-by", nargs="+", help="row labels, e.g. method,peft,init or peft.lora_r")
    p.add_argument("--metric", nargs="+", help="metrics, e.g. val/accuracy (default: each task's reported one)")
    p.add_argument("--all-sweeps", action="store_true", help="pool every sweep of the experiment")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    p.add_argument("--page", type=Path, default=None, help="also write the results page, e.g. docs/results/sad_glue.md")
    p.add_argument("--command", default=None, help="the command the page names (default: this one)")
    a = p.parse_args(argv)
    try:
        sweep = load_sweep(a.target, a.tracking_uri, a.all_sweeps)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = Path(os.environ.get("LOWRANK_LAB_ROOT", "."))
    out = a.out or root / "outputs" / "reports" / sweep.experiment
    files = write_report(sweep, out, _names(a.group_by), _names(a.metric), not a.no_log, a.page, a.command)
    print(files["markdown"].read_text())
    print(f"wrote {', '.join(str(f) for f in files.values())}")
    if not a.no_log:
        print(f"logged to run {sweep.parents[0].info.run_id} under report/ ({sweep.tracking_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
