"""The claim a paper makes that a sweep can check, one function per experiment file (CLAIMS). Each states the
claim, pairs arms by seed from MLflow's final values (finished runs only), and decides with stats.py: a bootstrap
95 % CI of the mean paired Δ gives holds / does not hold / inconclusive; a comparison in which an arm has a run that
did not learn (tag lowrank_lab.learned=false) is `undecided: <arm> did not learn`. DESIGN: never tune until it holds.

    slora_ablation(_instruct)  SLoRA: per gate mode vs `none`: Δ val loss, Δ accepted steps, Δ wall time; the
                               seed's criterion (val loss ≤ +0.5 % of `none` with ≥ 30 % fewer accepted steps) on CIs
    sad_glue                   SAD-LoRA: per task, SAD − KD (B = 0; the paper's comparison) and SAD − KD with the same
                               spectral init (what L_align adds), against the paper's Δ
    slad(_vision)              SLAD: LoRA vs FT teacher (CKA, distilled student), joint vs separate, speed vs FT
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lowrank_lab.tracking import stats
from lowrank_lab.tracking.results import Sweep, init_name, label, learned, method_name, task_of, wall_seconds
from lowrank_lab.tracking.tables import cell, ci_of, compare, learned_text, run_values, shown_comparison


@dataclass
class Claim:
    """A checked claim: what it says, the per-seed or per-task numbers (claim.csv), the table shown, the verdict."""

    title: str
    statement: str
    table: pd.DataFrame
    shown: pd.DataFrame
    verdict: str
    deltas: list[dict[str, Any]] = field(default_factory=list)  # plots.delta_figure's rows


# ---- SLoRA: the gate saves accepted steps at baseline loss ------------------------------------------------------
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


# ---- SAD-LoRA: alignment helps over plain KD ---------------------------------------------------------------------
# sad-lora.txt's GLUE table, Δ = SAD-LoRA-Align − KD-LoRA at r = 8, in the units of our metrics (accuracy as a fraction)
PAPER_SAD_MINUS_KD = {"stsb": 0.046, "cola": 0.084, "qnli": 0.008, "rte": 0.048, "sst2": -0.001, "mrpc": -0.001}
PAPER_SAME = stats.PAPER_SAME
ARM = "arm"
# (baseline arm, new arm, name): both against the paper's Δ, since the paper credits the alignment loss with its gain
SAD_COMPARISONS = (
    ("kd", "sad", "SAD vs KD, B = 0 (the paper's comparison)"),
    ("kd_spectral", "sad", "SAD vs KD, same spectral init (what L_align adds)"),
)


def sad_arm(params: dict[str, str]) -> str:
    """`sad`, `kd` (peft's B = 0) or `kd_spectral` (KD from SAD's spectral init), from the run's method and init."""
    name = method_name(params)
    return f"{name}_spectral" if name == "kd" and init_name(params) == "spectral" else name


def sad_over_kd(sweep: Sweep, group_by: list[str]) -> Claim:
    """Per task, Δ = SAD − KD paired by seed for both comparisons in SAD_COMPARISONS, with the t-test, Wilcoxon,
    bootstrap CI and the verdict against the paper's Δ (stats.verdict; `undecided` when an arm did not learn)."""
    labels = [k for k in group_by if k not in ("method", "init", "sad_glue_arm")]
    values = run_values(sweep, labels)
    arms = {r.info.run_id: sad_arm(r.data.params) for r in sweep.finished}
    values[ARM] = values["run_id"].map(arms)
    by = [*labels, "task", "metric"]
    tables, shown, parts, deltas = [], [], [], []
    for base, new, name in SAD_COMPARISONS:
        delta = compare(values, ARM, base, new, by)
        if delta.empty:
            parts.append(f"{name}: not checked (no task has finished `{base}` and `{new}` runs of the same seed)")
            continue
        paper = [PAPER_SAD_MINUS_KD.get(t) for t in delta["task"]]
        verdicts = [
            "no paper number" if p is None else stats.decide(ci_of(row), p, row["not_learned"])
            for row, p in zip(delta.to_dict("records"), paper)
        ]
        delta = delta.assign(comparison=name, paper_delta=paper, verdict=verdicts)
        fixed = {
            f"{a}_{s}": f"{role}_{s}" for a, role in ((base, "base"), (new, "new")) for s in ("mean", "std", "learned")
        }
        tables.append(delta.rename(columns=fixed).assign(base_arm=base, new_arm=new))
        for out, p, v in zip(shown_comparison(delta, by), paper, verdicts):
            shown.append(
                {"comparison": name} | _relabel(out, base, new) | {"paper Δ": stats.paper_label(p), "verdict": v}
            )
        short = "B = 0" if base == "kd" else "same init"
        deltas += [
            {"name": f"{row['task']} · {short}", "delta_mean": row["delta_mean"], "paper_delta": p}
            | {"ci_low": row["ci_low"], "ci_high": row["ci_high"]}
            for row, p in zip(delta.to_dict("records"), paper)
        ]
        judged = [(v, t) for v, t, p in zip(verdicts, delta["task"], paper) if p is not None]
        parts.append(f"{name}: " + stats.tally([v for v, _ in judged], [t for _, t in judged]))
    statement = (
        "SAD-LoRA (sad-lora.txt, GLUE table): SAD-LoRA-Align ≥ KD-LoRA at r = 8 — better on STS-B, CoLA, QNLI, RTE, "
        "≈ on SST-2 and MRPC. Two comparisons per task, paired by seed: against KD-LoRA from peft's B = 0 (the "
        "paper's) and against KD-LoRA from the same spectral init (`method=kd init=spectral`), which isolates the "
        "alignment loss from the head start the teacher-derived init gives. Both are judged against the paper's Δ: "
        f"{_RULE}"
    )
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    verdict = " | ".join(parts)
    return Claim("SAD-LoRA vs KD-LoRA, paired by seed", statement, table, pd.DataFrame(shown), verdict, deltas)


_RULE = (
    "holds when the bootstrap 95 % CI of the mean paired Δ lies on the paper's side of 0, does not hold when it lies "
    "on the other side, inconclusive otherwise; where the paper reports ≈ (|Δ| < "
    f"{stats.PAPER_SAME}) it holds when the CI lies within ±{stats.EQUIVALENCE_MARGIN} and does not hold when it lies "
    "outside; undecided when an arm has a run that did not beat its trivial baseline."
)


def _relabel(out: dict, base: str, new: str) -> dict:
    """Arm columns under fixed names, so that both comparisons share one table: `base`, `new`, `Δ (new − base)`."""
    rename = {base: "base", f"{base} learned": "base learned", new: "new", f"{new} learned": "new learned"}
    rename[f"Δ ({new} − {base})"] = "Δ (new − base)"
    return {"base arm": base, "new arm": new} | {rename.get(k, k): v for k, v in out.items()}


# ---- SLAD: a LoRA teacher trained jointly with its student -------------------------------------------------------
SLAD_ARM, SPEEDUP = "arm", 2.0  # slad.txt: SLAD trains ≥ 2× faster than fine-tuning teacher and student
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
    """Per task and check of SLAD_CHECKS: the two arms paired by seed, Δ = winner − other per seed (for the speed
    check: other's time / winner's time − 2), its CI and the verdict (the claimed direction is Δ > 0). ft_both runs
    on its own, so pool its sweep with `--all-sweeps`."""
    rows = [
        {"task": task_of(r), "arm": label(r, SLAD_ARM), "seed": r.data.params.get("seed"), "learned": learned(r)}
        | {"teacher": _role_metric(r.data.metrics, "teacher"), "student": _role_metric(r.data.metrics, "student")}
        | {"cka": r.data.metrics.get("align/cka"), "train_s": r.data.metrics.get("time/train_s")}
        for r in sweep.finished
    ]
    runs = pd.DataFrame(rows, columns=["task", "arm", "seed", "learned", "teacher", "student", "cka", "train_s"])
    table, shown, verdicts, names = [], [], [], []
    for task in runs["task"].unique():
        for claim, win, lose, col, higher in SLAD_CHECKS:
            here = runs[(runs["task"] == task) & runs[col].notna()]
            wide = here.pivot_table(index="seed", columns="arm", values=col, aggfunc="mean")
            if win not in wide or lose not in wide or wide[[win, lose]].dropna().empty:
                shown.append({"#": "–", "task": task, "claim": claim, "n": 0, "verdict": "not checked: arm missing"})
                continue
            pair = wide[[win, lose]].dropna().astype(float)
            if col == "train_s":
                deltas = pair[lose] / pair[win] - SPEEDUP
            else:
                deltas = pair[win] - pair[lose] if higher else pair[lose] - pair[win]
            result = stats.paired(deltas.to_numpy())
            failed = [a for a in (win, lose) if (here.loc[here["arm"] == a, "learned"] == False).any()]  # noqa: E712
            verdict = stats.decide(result.ci, 1.0, ",".join(failed))
            table.append(
                {"task": task, "claim": claim, "win": win, "lose": lose, "n": result.n}
                | {"win_mean": pair[win].mean(), "lose_mean": pair[lose].mean(), "delta_mean": result.mean}
                | {"delta_std": result.sd, "t_p": result.t_p, "wilcoxon_p": result.wilcoxon_p}
                | {"ci_low": result.ci[0] if result.ci else np.nan, "ci_high": result.ci[1] if result.ci else np.nan}
                | {"verdict": verdict}
            )
            delta_name = f"{lose}/{win} − {SPEEDUP:.0f}" if col == "train_s" else f"{win} − {lose}"
            shown.append(
                {"#": len(verdicts) + 1, "task": task, "claim": claim, "n": result.n}
                | {
                    win: cell(pair[win].mean(), pair[win].std(), result.n),
                    lose: cell(pair[lose].mean(), pair[lose].std(), result.n),
                }
                | {"Δ": f"{delta_name}: {cell(result.mean, result.sd, result.n, signed=True)}"}
                | {"p (t)": stats.p_text(result.t_p), "95 % CI of Δ": stats.ci_text(result.ci), "verdict": verdict}
            )
            verdicts.append(verdict)
            names.append(f"{task}: {claim}" if runs["task"].nunique() > 1 else claim)
    verdict = (
        stats.tally(verdicts, [str(i + 1) for i in range(len(names))])
        if verdicts
        else "not checked: the sweep lacks the arms these claims compare"
    )
    statement = (
        "SLAD (slad.txt): a LoRA teacher aligns (higher CKA) and distils better than a fully fine-tuned one; joint "
        "training with shared adapters (slad_full) improves both models over separate training; and it trains ≥ 2× "
        "faster than fine-tuning both. Each check pairs its two arms by seed (final values); Δ > 0 is the claimed "
        "direction (checks numbered in table order). " + _RULE.replace("the paper's side", "the claimed side")
    )
    deltas = [
        {"name": f"{i + 1}. {row['task']}", "delta_mean": row["delta_mean"]}
        | {"ci_low": row["ci_low"], "ci_high": row["ci_high"]}
        for i, row in enumerate(table)
    ]
    return Claim("SLAD arms", statement, pd.DataFrame(table), pd.DataFrame(shown), verdict, deltas)


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
