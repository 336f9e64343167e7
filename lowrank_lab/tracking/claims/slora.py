"""SLoRA (slora.txt): the gate saves accepted steps at the ungated run's val loss."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lowrank_lab.tracking import stats
from lowrank_lab.tracking.claims.base import Claim
from lowrank_lab.tracking.results import Sweep, label, learned, task_of, wall_seconds
from lowrank_lab.tracking.tables import cell, learned_text

MODE, BASELINE_MODE = "method.gate.mode", "none"
MODES = ("none", "novelty", "loss_floor", "combined")  # method/slora.yaml's order
LOSS_TOLERANCE, MIN_SAVING = 0.005, 0.30  # slora.txt "Pass criteria"


def _pct(values: pd.Series) -> str:
    mean, std = 100 * values.mean(), 100 * values.std()
    return f"{mean:+.2f} ± {std:.2f} %" if len(values) > 1 else f"{mean:+.2f} %"


def _pct_ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] %"


def _gate_verdict(loss_change: pd.Series, steps_change: pd.Series) -> str:
    """Both parts of the criterion on CIs: mean val-loss change < +0.5 % (CI entirely below) and mean accepted-step
    change < −30 % (CI entirely below); does not hold when either CI lies entirely on the wrong side."""
    loss = stats.verdict(stats.paired(LOSS_TOLERANCE - loss_change).ci, 1.0)
    steps = stats.verdict(stats.paired(-MIN_SAVING - steps_change).ci, 1.0)
    if stats.FAILS in (loss, steps):
        return stats.FAILS
    return stats.HOLDS if loss == steps == stats.HOLDS else stats.INCONCLUSIVE


def slora_gate(sweep: Sweep, group_by: list[str]) -> Claim:
    """Per gate mode, paired by seed with the `none` run: final val/loss, gate/accepted_steps and wall time relative
    to it, the per-seed criterion, and the verdict on the CIs of the mean changes (_gate_verdict)."""
    rest = [k for k in group_by if k not in ("method", MODE)]
    rows = [
        {k: label(r, k) for k in rest}
        | {"task": task_of(r), "seed": r.data.params.get("seed"), "mode": label(r, MODE)}
        | {"val_loss": r.data.metrics["val/loss"], "accepted_steps": r.data.metrics["gate/accepted_steps"]}
        | {"wall_s": wall_seconds(r), "learned": learned(r)}
        for r in sweep.finished
        if {"val/loss", "gate/accepted_steps"} <= set(r.data.metrics)
    ]
    cols = [*rest, "task", "seed", "mode", "val_loss", "accepted_steps", "wall_s", "learned"]
    runs = pd.DataFrame(rows, columns=cols)
    keys = [*rest, "task", "seed"]
    base = runs[runs["mode"] == BASELINE_MODE].drop(columns="mode").drop_duplicates(keys)
    table = runs.merge(base, on=keys, suffixes=("", "_none"))
    for col in ("val_loss", "accepted_steps", "wall_s"):
        table[f"{col}_change"] = table[col].astype(float) / table[f"{col}_none"].astype(float) - 1.0
    table["criterion"] = (table["val_loss"] <= (1 + LOSS_TOLERANCE) * table["val_loss_none"]) & (
        table["accepted_steps"] <= (1 - MIN_SAVING) * table["accepted_steps_none"]
    )
    table = table.sort_values([*rest, "task", "mode", "seed"], key=_mode_order)
    shown, verdicts, names = [], [], []
    for key, grp in table.groupby([*rest, "task", "mode"], sort=False):
        where = dict(zip([*rest, "task", "mode"], key))
        ok, n = int(grp["criterion"].sum()), len(grp)
        everyone = runs[np.logical_and.reduce([runs[k] == where[k] for k in [*rest, "task"]])]
        mine, none = everyone[everyone["mode"] == where["mode"]], everyone[everyone["mode"] == BASELINE_MODE]
        if where["mode"] == BASELINE_MODE:
            verdict = "baseline"
        else:
            failed = [m for m, arm in ((where["mode"], mine), (BASELINE_MODE, none)) if (arm["learned"] == False).any()]  # noqa: E712
            verdict = (
                stats.decide(None, 0.0, ",".join(failed))
                if failed
                else _gate_verdict(grp["val_loss_change"], grp["accepted_steps_change"])
            )
            verdicts.append(verdict)
            names.append(
                " · ".join([*(str(where[k]) for k in [*rest, "task"] if table[k].nunique() > 1), where["mode"]])
            )
        shown.append(
            where
            | {
                "n": n,
                "learned": learned_text(mine["learned"]),
                "val/loss": cell(grp["val_loss"].mean(), grp["val_loss"].std(), n),
            }
            | {"Δ val loss": _pct(grp["val_loss_change"]), "CI": _pct_ci(stats.paired(grp["val_loss_change"]).ci)}
            | {"Δ accepted steps": _pct(grp["accepted_steps_change"])}
            | {"CI ": _pct_ci(stats.paired(grp["accepted_steps_change"]).ci)}
            | {"Δ wall time": _pct(grp["wall_s_change"]), "seeds meeting it": f"{ok}/{n}", "verdict": verdict}
        )
    if table.empty:
        verdict = f"not checked: no finished `{BASELINE_MODE}` run to compare with (or no gate/val metrics)"
    else:
        verdict = stats.tally(verdicts, names)
    statement = (
        f"SLoRA (slora.txt): a gate reaches the baseline's validation loss (≤ +{100 * LOSS_TOLERANCE:.1f} % of "
        f"`{MODE}={BASELINE_MODE}`) with ≥ {100 * MIN_SAVING:.0f} % fewer accepted steps (gate/accepted_steps). "
        "Changes are relative to the `none` run of the same seed (mean ± sd over seeds, bootstrap 95 % CI of the "
        "mean); holds when both CIs lie on the criterion's side of its threshold, does not hold when either lies "
        "entirely on the other side, inconclusive otherwise (always with one seed). Wall time is the job's MLflow "
        "run duration."
    )
    return Claim("SLoRA gate vs no gate", statement, table.reset_index(drop=True), pd.DataFrame(shown), verdict)


def _mode_order(column: pd.Series) -> pd.Series:
    """Sort key: gate modes in method/slora.yaml's order (an unknown mode last), other columns as they are."""
    return column.map(lambda m: MODES.index(m) if m in MODES else len(MODES)) if column.name == "mode" else column
