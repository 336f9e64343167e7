"""The claim a paper makes that a sweep can check, one function per experiment file (CLAIMS). Each states the
claim, computes it per seed from MLflow's final values, and says whether it holds at this scale; the report
prints it as it comes out (DESIGN: never tune until it does).

    slora_ablation(_instruct)  SLoRA: per gate mode vs `none`: Δ val loss, Δ accepted steps, Δ wall time, and the
                               seed's criterion (val loss ≤ +0.5 % of `none` with ≥ 30 % fewer accepted steps)
    sad_glue                   SAD-LoRA: Δ = SAD − KD per task paired by seed, against the paper's Δ
    slad(_vision)              SLAD: LoRA vs FT teacher (CKA, distilled student), joint vs separate, speed vs FT
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lowrank_lab.tracking.results import Sweep, label, task_of, wall_seconds
from lowrank_lab.tracking.tables import cell, paired_delta, run_values


@dataclass
class Claim:
    """A checked claim: what it says, the per-seed numbers (claim.csv), the table shown, the one-line verdict."""

    title: str
    statement: str
    table: pd.DataFrame
    shown: pd.DataFrame
    verdict: str


# ---- SLoRA: the gate saves accepted steps at baseline loss ------------------------------------------------------
MODE, BASELINE_MODE = "method.gate.mode", "none"
MODES = ("none", "novelty", "loss_floor", "combined")  # method/slora.yaml's order
LOSS_TOLERANCE, MIN_SAVING = 0.005, 0.30  # slora.txt "Pass criteria"


def _pct(values: pd.Series) -> str:
    mean, std = 100 * values.mean(), 100 * values.std()
    return f"{mean:+.2f} ± {std:.2f} %" if len(values) > 1 else f"{mean:+.2f} %"


def slora_gate(sweep: Sweep, group_by: list[str]) -> Claim:
    """Per gate mode, paired by seed with the `none` run: final val/loss, gate/accepted_steps and wall time relative
    to it, and whether val loss ≤ +0.5 % of `none` with ≥ 30 % fewer accepted steps."""
    rest = [k for k in group_by if k not in ("method", MODE)]
    rows = [
        {k: label(r, k) for k in rest}
        | {"task": task_of(r), "seed": r.data.params.get("seed"), "mode": label(r, MODE)}
        | {"val_loss": r.data.metrics["val/loss"], "accepted_steps": r.data.metrics["gate/accepted_steps"]}
        | {"wall_s": wall_seconds(r)}
        for r in sweep.finished
        if {"val/loss", "gate/accepted_steps"} <= set(r.data.metrics)
    ]
    runs = pd.DataFrame(rows, columns=[*rest, "task", "seed", "mode", "val_loss", "accepted_steps", "wall_s"])
    keys = [*rest, "task", "seed"]
    base = runs[runs["mode"] == BASELINE_MODE].drop(columns="mode").drop_duplicates(keys)
    table = runs.merge(base, on=keys, suffixes=("", "_none"))
    for col in ("val_loss", "accepted_steps", "wall_s"):
        table[f"{col}_change"] = table[col].astype(float) / table[f"{col}_none"].astype(float) - 1.0
    table["criterion"] = (table["val_loss"] <= (1 + LOSS_TOLERANCE) * table["val_loss_none"]) & (
        table["accepted_steps"] <= (1 - MIN_SAVING) * table["accepted_steps_none"]
    )
    table = table.sort_values([*rest, "task", "mode", "seed"], key=_mode_order)
    shown, holds, fails = [], [], []
    for key, grp in table.groupby([*rest, "task", "mode"], sort=False):
        where = dict(zip([*rest, "task", "mode"], key))
        ok, n = int(grp["criterion"].sum()), len(grp)
        if where["mode"] == BASELINE_MODE:
            verdict = "baseline"
        else:
            verdict = f"{'holds' if ok == n else 'fails'} ({ok}/{n} seeds)"
            name = " · ".join([*(str(where[k]) for k in [*rest, "task"] if len(table[k].unique()) > 1), where["mode"]])
            (holds if ok == n else fails).append(name)
        shown.append(
            where
            | {"n": n, "val/loss": cell(grp["val_loss"].mean(), grp["val_loss"].std(), n)}
            | {"Δ val loss": _pct(grp["val_loss_change"]), "Δ accepted steps": _pct(grp["accepted_steps_change"])}
            | {"Δ wall time": _pct(grp["wall_s_change"]), "criterion": verdict}
        )
    if table.empty:
        verdict = f"not checked: no finished `{BASELINE_MODE}` run to compare with (or no gate/val metrics)"
    else:
        verdict = f"criterion holds for: {', '.join(holds) or 'none'}; fails for: {', '.join(fails) or 'none'}"
    statement = (
        f"SLoRA (slora.txt): a gate reaches the baseline's validation loss (≤ +{100 * LOSS_TOLERANCE:.1f} % of "
        f"`{MODE}={BASELINE_MODE}`) with ≥ {100 * MIN_SAVING:.0f} % fewer accepted steps (gate/accepted_steps). "
        "Changes are relative to the `none` run of the same seed (mean ± std over seeds); wall time is the job's "
        "MLflow run duration."
    )
    return Claim("SLoRA gate vs no gate", statement, table.reset_index(drop=True), pd.DataFrame(shown), verdict)


def _mode_order(column: pd.Series) -> pd.Series:
    """Sort key: gate modes in method/slora.yaml's order (an unknown mode last), other columns as they are."""
    return column.map(lambda m: MODES.index(m) if m in MODES else len(MODES)) if column.name == "mode" else column


# ---- SAD-LoRA: alignment helps over plain KD ---------------------------------------------------------------------
# sad-lora.txt's GLUE table, Δ = SAD-LoRA-Align − KD-LoRA at r = 8, in the units of our metrics (accuracy as a fraction)
PAPER_SAD_MINUS_KD = {"stsb": 0.046, "cola": 0.084, "qnli": 0.008, "rte": 0.048, "sst2": -0.001, "mrpc": -0.001}
PAPER_SAME = 0.005  # |Δ| below this the paper writes ≈


_YES_NO = {True: "yes", False: "no", None: "–"}


def _paper(delta: float | None) -> str:
    return "–" if delta is None else f"{delta:+.3f}" + ("" if delta >= PAPER_SAME else " (≈)")


def _spread(mean: float, std: float) -> str:
    """`ahead` / `behind` when mean ± one std excludes 0, else `within seed spread`."""
    std = 0.0 if np.isnan(std) else std
    return "ahead" if mean - std > 0 else "behind" if mean + std < 0 else "within seed spread"


def sad_over_kd(sweep: Sweep, group_by: list[str]) -> Claim:
    """Δ = SAD − KD per task in its reported metric, paired by seed, beside the paper's Δ; the claim holds on a task
    where the paper's SAD is better and ours is ahead, or the paper's is ≈ and ours is not behind."""
    table = paired_delta(run_values(sweep, group_by), group_by, ("kd", "sad"))
    paper = [PAPER_SAD_MINUS_KD.get(task) for task in table.get("task", [])]
    here = [_spread(m, s) for m, s in zip(table.get("delta_mean", []), table.get("delta_std", []))]
    holds = [None if p is None else (h == "ahead" if p >= PAPER_SAME else h != "behind") for p, h in zip(paper, here)]
    table = table.assign(paper_delta=paper, here=here, holds=holds) if len(table) else table
    labels = [k for k in group_by if k != "method"]
    shown = [
        {k: row[k] for k in [*labels, "task", "metric"]}
        | {"kd": cell(row["kd_mean"], row["kd_std"], row["n"]), "sad": cell(row["sad_mean"], row["sad_std"], row["n"])}
        | {"Δ (sad − kd)": cell(row["delta_mean"], row["delta_std"], row["n"], signed=True)}
        | {"paper Δ": _paper(p), "here": h, "holds": _YES_NO[ok]}
        for row, p, h, ok in zip(table.to_dict("records"), paper, here, holds)
    ]
    judged = [s for s in shown if s["holds"] != "–"]
    if not shown:
        verdict = "not checked: no task has finished kd and sad runs of the same seed"
    else:
        tasks = ", ".join(s["task"] for s in judged if s["holds"] == "yes") or "none"
        verdict = f"holds on {sum(s['holds'] == 'yes' for s in judged)} of {len(judged)} tasks ({tasks})"
    statement = (
        "SAD-LoRA (sad-lora.txt, GLUE table): SAD-LoRA-Align ≥ KD-LoRA at r = 8: better on STS-B, CoLA, QNLI, RTE, "
        "≈ on SST-2 and MRPC. Δ = sad − kd per seed, mean ± std over seeds; `ahead`/`behind` when mean ± std "
        "excludes 0."
    )
    return Claim("SAD-LoRA vs KD-LoRA, paired by seed", statement, table, pd.DataFrame(shown), verdict)


# ---- SLAD: a LoRA teacher trained jointly with its student -------------------------------------------------------
ARM, SPEEDUP = "arm", 2.0  # slad.txt: SLAD trains ≥ 2× faster than fine-tuning teacher and student
# (claim, arm that should win, arm it beats, column, higher is better)
SLAD_CHECKS = (
    ("LoRA teacher aligns better than FT teacher (align/cka)", "lora_kd", "ft_kd", "cka", True),
    ("LoRA teacher distils a better student", "lora_kd", "ft_kd", "student", True),
    ("SLAD improves the student over separate training", "slad_full", "separate", "student", True),
    ("SLAD improves the teacher over separate training", "slad_full", "separate", "teacher", True),
    (
        f"SLAD trains ≥ {SPEEDUP:.0f}× faster than fine-tuning both (time/train_s)",
        "slad_full",
        "ft_both",
        "train_s",
        False,
    ),
)


def _role_metric(metrics: dict[str, float], role: str) -> float | None:
    """The final `val/<role>_<task metric>` (the first that is not a loss), e.g. val/student_accuracy."""
    keys = sorted(k for k in metrics if k.startswith(f"val/{role}_") and not k.endswith("loss"))
    return metrics[keys[0]] if keys else None


def slad_arms(sweep: Sweep, group_by: list[str]) -> Claim:
    """Per task, mean over seeds of each arm's teacher / student metric, align/cka and time/train_s, and the seed's
    claims between arms (SLAD_CHECKS); ft_both runs on its own, so pool its sweep with `--all-sweeps`."""
    rows = [
        {"task": task_of(r), "arm": label(r, ARM), "seed": r.data.params.get("seed")}
        | {"teacher": _role_metric(r.data.metrics, "teacher"), "student": _role_metric(r.data.metrics, "student")}
        | {"cka": r.data.metrics.get("align/cka"), "train_s": r.data.metrics.get("time/train_s")}
        for r in sweep.finished
    ]
    runs = pd.DataFrame(rows, columns=["task", "arm", "seed", "teacher", "student", "cka", "train_s"])
    means = runs.groupby(["task", "arm"])[["teacher", "student", "cka", "train_s"]].mean()
    table, verdicts = [], []
    for task in runs["task"].unique():
        for claim, win, lose, col, higher in SLAD_CHECKS:
            a, b = (means.loc[(task, arm), col] if (task, arm) in means.index else np.nan for arm in (win, lose))
            if np.isnan(a) or np.isnan(b):
                holds = None
            else:
                holds = bool(a * SPEEDUP <= b) if col == "train_s" else bool(a > b if higher else a < b)
            table.append({"task": task, "claim": claim, win: a, lose: b} | {"holds": _YES_NO[holds]})
            verdicts.append(holds)
    shown = pd.DataFrame(
        [{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items() if pd.notna(v)} for row in table]
    )
    judged = [v for v in verdicts if v is not None]
    verdict = (
        f"holds for {sum(judged)} of {len(judged)} checks ({len(verdicts) - len(judged)} not checked: arm missing)"
        if judged
        else "not checked: the sweep lacks the arms these claims compare"
    )
    statement = (
        "SLAD (slad.txt): a LoRA teacher aligns (higher CKA) and distils better than a fully fine-tuned one; joint "
        "training with shared adapters (slad_full) improves both models over separate training; and it trains ≥ 2× "
        "faster than fine-tuning both. Means over seeds of the final values; `–` where an arm is missing."
    )
    return Claim("SLAD arms", statement, runs, shown, verdict)


# `experiment=<name>` -> its claim; an experiment not listed has none
CLAIMS: dict[str, Callable[[Sweep, list[str]], Claim]] = {
    "slora_ablation": slora_gate,
    "slora_ablation_instruct": slora_gate,
    "sad_glue": sad_over_kd,
    "slad": slad_arms,
    "slad_vision": slad_arms,
}


def check(sweep: Sweep, group_by: list[str]) -> Claim | None:
    """The claim of the sweep's experiment file (see CLAIMS), checked; None when it has none."""
    claim = CLAIMS.get(sweep.experiment_file)
    return claim(sweep, group_by) if claim else None
