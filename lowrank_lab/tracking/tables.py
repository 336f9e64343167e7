"""The report's tables from a sweep's finished runs: one value per (run, metric) with its trivial baseline and learned
tag, mean ± std over seeds per configuration × task, the method × task table, and two arms paired seed by seed
(stats.paired: t-test, Wilcoxon, bootstrap CI)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from lowrank_lab.tracking import stats
from lowrank_lab.tracking.results import Sweep, baseline_of, label, learned, reported_metric, task_of

BASELINES = ("finetune", "kd")  # the Δ of a two-method comparison is the other method minus this one


def _natural(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def run_values(sweep: Sweep, group_by: list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per (finished run, metric): the group labels, task, seed, metric, final value, the task's trivial
    baseline on that split (NaN when not logged), the run's learned tag (True/False/None), run id."""
    rows = []
    for run in sweep.finished:
        base = {k: label(run, k) for k in group_by} | {"task": task_of(run), "seed": run.data.params.get("seed")}
        for metric in metrics or [reported_metric(run.data.metrics)]:
            if metric in run.data.metrics:
                rows.append(
                    base
                    | {"metric": metric, "value": run.data.metrics[metric], "baseline": baseline_of(run, metric)}
                    | {"learned": learned(run), "run_id": run.info.run_id}
                )
    columns = [*group_by, "task", "seed", "metric", "value", "baseline", "learned", "run_id"]
    return pd.DataFrame(rows, columns=columns).astype({"baseline": float})


def learned_text(flags: Iterable[bool | None]) -> str:
    """`yes (3/3)` when every tagged run learned, `no (2/3)` when some did not (2 of 3 learned), `–` untagged."""
    tagged = [f for f in flags if f is not None]
    if not tagged:
        return "–"
    return f"{'yes' if all(tagged) else 'no'} ({sum(tagged)}/{len(tagged)})"


def summarize(values: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof = 1; NaN for one seed) and n over seeds, per configuration × task × metric, with the
    mean trivial baseline and how many runs learned."""
    keys = [*group_by, "task", "metric"]
    grouped = values.groupby(keys, sort=False)
    out = grouped["value"].agg(n="count", mean="mean", std="std")
    out["baseline"] = grouped["baseline"].mean()
    out["learned"] = grouped["learned"].agg(learned_text)
    out = out.reset_index()
    return out.sort_values(keys, key=lambda col: col.map(_natural)).reset_index(drop=True)


def cell(mean: float, std: float, n: int, signed: bool = False) -> str:
    """`0.8123 ± 0.0100 (n=3)`; the std is left out for one seed."""
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{text} ± {std:.4f} (n={n})" if n > 1 and pd.notna(std) else f"{text} (n={n})"


def pivot(summary: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """The method × task table: rows = configurations, columns = `task (metric)`, cells `mean ± std (n=…)`, a
    `learned` column (runs of the row that beat their baseline) and a last row with each task's trivial baseline."""
    if summary.empty:
        return pd.DataFrame()
    cells = summary.assign(
        column=summary["task"] + " (" + summary["metric"] + ")",
        cell=[cell(m, s, n) for m, s, n in zip(summary["mean"], summary["std"], summary["n"])],
    )
    table = cells.pivot(index=group_by, columns="column", values="cell").fillna("–")
    table = table[list(dict.fromkeys(cells["column"]))]  # columns in task order
    counts = pd.DataFrame(summary["learned"].map(_learned_counts).tolist(), columns=["k", "n"], index=summary.index)
    counts = pd.concat([summary[group_by], counts], axis=1).groupby(group_by, sort=False)[["k", "n"]].sum()
    table["learned"] = [_counts_text(tuple(counts.loc[key])) for key in table.index]
    baselines = cells.groupby("column", sort=False)["baseline"].mean()
    if baselines.notna().any():
        table = table.reset_index()
        row = {k: "" for k in group_by} | {group_by[0]: "baseline (trivial predictor)", "learned": "–"}
        row |= {c: f"{b:.4f}" if pd.notna(b) else "–" for c, b in baselines.items()}
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True).set_index(group_by)
    return table


def _learned_counts(text: str) -> tuple[int, int]:
    """`no (2/3)` -> (2, 3); `–` -> (0, 0)."""
    if "(" not in text:
        return (0, 0)
    k, n = text[text.index("(") + 1 : -1].split("/")
    return (int(k), int(n))


def _counts_text(counts: tuple[int, int]) -> str:
    k, n = counts
    return "–" if n == 0 else f"{'yes' if k == n else 'no'} ({k}/{n})"


def compare(values: pd.DataFrame, arm: str, base: str, new: str, by: list[str]) -> pd.DataFrame:
    """Per group of `by`: arm `new` against arm `base` (values of column `arm`) paired by seed — each arm's mean and
    sd over the paired seeds, Δ = new − base with stats.paired (t-test p, Wilcoxon p, bootstrap CI), the mean
    trivial baseline, whether each arm learned (over all its finished runs in the group), and the arms whose value is
    the same for every paired seed (`same_every_seed`: the seed changed nothing in them)."""
    runs = values[values[arm].isin([base, new])]
    wide = runs.pivot_table(index=[*by, "seed"], columns=arm, values="value", aggfunc="mean").reset_index()
    if base not in wide or new not in wide:
        return pd.DataFrame()
    wide = wide.dropna(subset=[base, new]).assign(delta=lambda d: d[new] - d[base])
    rows = []
    for key, grp in wide.groupby(by, sort=False):
        where = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        mask = np.logical_and.reduce([runs[k] == v for k, v in where.items()])
        group = runs[mask]
        result = stats.paired(grp["delta"].to_numpy())
        row = where | {f"{a}_{s}": getattr(grp[a], s)() for a in (base, new) for s in ("mean", "std")}
        row |= {"n": result.n, "delta_mean": result.mean, "delta_std": result.sd, "t_p": result.t_p}
        row |= {"wilcoxon_p": result.wilcoxon_p}
        row |= {"ci_low": result.ci[0] if result.ci else np.nan, "ci_high": result.ci[1] if result.ci else np.nan}
        row |= {"baseline": group["baseline"].mean()}
        row |= {f"{a}_learned": learned_text(group.loc[group[arm] == a, "learned"]) for a in (base, new)}
        row["not_learned"] = ",".join(a for a in (base, new) if (group.loc[group[arm] == a, "learned"] == False).any())  # noqa: E712
        row["same_every_seed"] = ",".join(a for a in (base, new) if len(grp) > 1 and grp[a].nunique() == 1)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["methods"] = (base, new)
    return out


def ci_of(row: dict) -> tuple[float, float] | None:
    """The (ci_low, ci_high) of a compare() row, None when it has none."""
    return None if pd.isna(row["ci_low"]) else (row["ci_low"], row["ci_high"])


def two_methods(values: pd.DataFrame, group_by: list[str]) -> tuple[str, str] | None:
    """(baseline, new) when the sweep compares exactly two methods (baseline: finetune or kd when present)."""
    if "method" not in group_by or values["method"].nunique() != 2:
        return None
    methods = list(values["method"].unique())
    base = next((m for m in methods if m in BASELINES), sorted(methods)[0])
    return base, next(m for m in methods if m != base)


def paired_delta(values: pd.DataFrame, group_by: list[str], methods: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per task (and other labels): both arms and Δ = new − baseline paired by seed (compare()); `methods` =
    (baseline, new), default two_methods(). Empty when the sweep has no such pair."""
    base, new = methods or two_methods(values, group_by) or (None, None)
    if base is None or not {base, new} <= set(values["method"]):
        return pd.DataFrame()
    return compare(values, "method", base, new, [*(k for k in group_by if k != "method"), "task", "metric"])


def shown_comparison(delta: pd.DataFrame, labels: list[str]) -> list[dict]:
    """compare() rows as the report shows them: labels, baseline, each arm (mean ± sd, learned), Δ, p, CI."""
    base, new = delta.attrs["methods"]
    shown = []
    for row in delta.to_dict("records"):
        out = {k: row[k] for k in labels}
        out["baseline"] = f"{row['baseline']:.4f}" if pd.notna(row["baseline"]) else "–"
        for a in (base, new):
            out[a] = cell(row[f"{a}_mean"], row[f"{a}_std"], row["n"])
            out[f"{a} learned"] = row[f"{a}_learned"]
        out[f"Δ ({new} − {base})"] = cell(row["delta_mean"], row["delta_std"], row["n"], signed=True)
        out |= {"p (t)": stats.p_text(row["t_p"]), "p (Wilcoxon)": stats.p_text(row["wilcoxon_p"])}
        out["95 % CI of Δ"] = stats.ci_text(ci_of(row))
        shown.append(out)
    return shown


def shown_delta(delta: pd.DataFrame) -> pd.DataFrame:
    """paired_delta() as the report shows it, with whether the CI shows `new` higher or lower than `base`."""
    labels = [c for c in delta.columns if not c.endswith(_STAT_SUFFIXES) and c not in _STAT_COLUMNS]
    rows = shown_comparison(delta, labels)
    for out, row in zip(rows, delta.to_dict("records")):
        same = row.get("same_every_seed")
        out["difference"] = f"not replicates ({same}: same every seed)" if same else stats.direction(ci_of(row))
    return pd.DataFrame(rows)


_STAT_SUFFIXES = ("_mean", "_std", "_learned")
_STAT_COLUMNS = {"n", "t_p", "wilcoxon_p", "ci_low", "ci_high", "baseline", "not_learned", "same_every_seed"}


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table of the frame's cells as they are (pandas + tabulate; cells are already formatted
    strings, so tabulate must not re-parse "+0.32" or "0.4515" as numbers)."""
    return df.astype(str).to_markdown(index=False, tablefmt="github", disable_numparse=True)
