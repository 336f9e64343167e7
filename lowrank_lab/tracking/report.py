"""A sweep's comparison report, read from MLflow only:

    python -m lowrank_lab.tracking.report <sweep run id | experiment name> [--tracking-uri URI] [--out DIR]
        [--group-by method,peft.lora_r …] [--metric val/accuracy …] [--all-sweeps] [--no-log]

Rows are configurations (the `--group-by` labels; default: the method plus every override that varies across the
sweep's jobs, seed and task excluded), columns are tasks (`data.task`), cells are mean ± sample std (ddof = 1) of a
metric's final value over seeds, with n. With exactly two methods a second table pairs them seed by seed
(Δ = new − baseline), unless the experiment has a paper claim (claims.py), which is checked and shown instead.
Markdown, CSV and the standard plots (plots.py) go under outputs/reports/<experiment>/ and to the sweep's parent run
as artifacts under `report/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from lowrank_lab.tracking import claims as claiming
from lowrank_lab.tracking import plots as plotting
from lowrank_lab.tracking import tables
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
        "- cells: mean ± sample std (ddof = 1) of the metric's final value over seeds; n = number of seeds",
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


def write_report(
    sweep: Sweep, out: Path, group_by: list[str] | None = None, metrics: list[str] | None = None, log: bool = True
) -> dict[str, Path]:
    """Write report.md, summary.csv, runs.csv (+ paired_delta.csv, claim.csv, plots) under `out`; log them to the
    sweep's parent run under `report/`. Returns the files by kind."""
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
    figures = plotting.standard_figures(sweep, group_by, metrics)
    for name, fig in figures.items():
        files[name] = out / f"{name}.png"
        fig.savefig(files[name], dpi=110)
    files["markdown"] = out / "report.md"
    plots = [files[name] for name in figures]
    files["markdown"].write_text(render_markdown(sweep, tables.pivot(summary, group_by), delta, claim, plots))
    if log:
        mlflow = client(sweep.tracking_uri)
        for path in files.values():
            mlflow.log_artifact(sweep.parents[0].info.run_id, str(path), artifact_path="report")
    return files


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
    a = p.parse_args(argv)
    try:
        sweep = load_sweep(a.target, a.tracking_uri, a.all_sweeps)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = Path(os.environ.get("LOWRANK_LAB_ROOT", "."))
    out = a.out or root / "outputs" / "reports" / sweep.experiment
    files = write_report(sweep, out, _names(a.group_by), _names(a.metric), log=not a.no_log)
    print(files["markdown"].read_text())
    print(f"wrote {', '.join(str(f) for f in files.values())}")
    if not a.no_log:
        print(f"logged to run {sweep.parents[0].info.run_id} under report/ ({sweep.tracking_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
