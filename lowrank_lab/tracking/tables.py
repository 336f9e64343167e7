"""The report's tables from a sweep's finished runs: one value per (run, metric), mean ± std over seeds per
configuration × task, the method × task table, and two methods paired seed by seed."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lowrank_lab.tracking.results import Sweep, label, primary_metric, task_of

BASELINES = ("finetune", "kd")  # the Δ of a two-method comparison is the other method minus this one


def _natural(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def run_values(sweep: Sweep, group_by: list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per (finished run, metric): the group labels, task, seed, metric, final value, run id."""
    rows = []
    for run in sweep.finished:
        base = {k: label(run, k) for k in group_by} | {"task": task_of(run), "seed": run.data.params.get("seed")}
        for metric in metrics or [primary_metric(run.data.metrics)]:
            if metric in run.data.metrics:
                rows.append(base | {"metric": metric, "value": run.data.metrics[metric], "run_id": run.info.run_id})
    return pd.DataFrame(rows, columns=[*group_by, "task", "seed", "metric", "value", "run_id"])


def summarize(values: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof = 1; NaN for one seed) and n over seeds, per configuration × task × metric."""
    keys = [*group_by, "task", "metric"]
    out = values.groupby(keys, sort=False)["value"].agg(n="count", mean="mean", std="std").reset_index()
    return out.sort_values(keys, key=lambda col: col.map(_natural)).reset_index(drop=True)


def cell(mean: float, std: float, n: int, signed: bool = False) -> str:
    """`0.8123 ± 0.0100 (n=3)`; the std is left out for one seed."""
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{text} ± {std:.4f} (n={n})" if n > 1 and pd.notna(std) else f"{text} (n={n})"


def pivot(summary: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """The method × task table: rows = configurations, columns = `task (metric)`, cells `mean ± std (n=…)`."""
    if summary.empty:
        return pd.DataFrame()
    cells = summary.assign(
        column=summary["task"] + " (" + summary["metric"] + ")",
        cell=[cell(m, s, n) for m, s, n in zip(summary["mean"], summary["std"], summary["n"])],
    )
    table = cells.pivot(index=group_by, columns="column", values="cell").fillna("–")
    return table[list(dict.fromkeys(cells["column"]))]  # columns in task order


def two_methods(values: pd.DataFrame, group_by: list[str]) -> tuple[str, str] | None:
    """(baseline, new) when the sweep compares exactly two methods (baseline: finetune or kd when present)."""
    if "method" not in group_by or values["method"].nunique() != 2:
        return None
    methods = list(values["method"].unique())
    base = next((m for m in BASELINES if m in methods), sorted(methods)[0])
    return base, next(m for m in methods if m != base)


def paired_delta(values: pd.DataFrame, group_by: list[str], methods: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per task (and other labels): both arms and Δ = new − baseline paired by seed; `methods` = (baseline, new),
    default two_methods(). Empty when the sweep has no such pair."""
    base, new = methods or two_methods(values, group_by) or (None, None)
    if base is None or not {base, new} <= set(values["method"]):
        return pd.DataFrame()
    rest = [k for k in group_by if k != "method"]
    keys = [*rest, "task", "metric", "seed"]
    arms = values[values["method"].isin([base, new])]
    wide = arms.pivot_table(index=keys, columns="method", values="value", aggfunc="mean").reset_index()
    wide = wide.dropna(subset=[base, new]).assign(delta=lambda d: d[new] - d[base])
    rows = []
    for key, grp in wide.groupby([*rest, "task", "metric"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        stats = {f"{arm}_{stat}": getattr(grp[arm], stat)() for arm in (base, new) for stat in ("mean", "std")}
        stats |= {"n": len(grp), "delta_mean": grp["delta"].mean(), "delta_std": grp["delta"].std()}
        rows.append(dict(zip([*rest, "task", "metric"], key)) | stats)
    out = pd.DataFrame(rows)
    out.attrs["methods"] = (base, new)
    return out


def shown_delta(delta: pd.DataFrame) -> pd.DataFrame:
    """paired_delta() as the report shows it: labels, then `mean ± std (n)` per arm and for Δ."""
    base, new = delta.attrs["methods"]
    shown = delta[[c for c in delta.columns if c != "n" and not c.endswith(("_mean", "_std"))]].copy()
    for arm, name, signed in ((base, base, False), (new, new, False), ("delta", f"Δ ({new} − {base})", True)):
        shown[name] = [
            cell(m, sd, n, signed) for m, sd, n in zip(delta[f"{arm}_mean"], delta[f"{arm}_std"], delta["n"])
        ]
    return shown


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
