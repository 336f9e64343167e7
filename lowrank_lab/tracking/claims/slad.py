"""SLAD (slad.txt): a LoRA teacher trained jointly with its student, against FT / separate training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lowrank_lab.tracking import stats
from lowrank_lab.tracking.claims.base import RULE, Claim
from lowrank_lab.tracking.results import Sweep, label, learned, task_of
from lowrank_lab.tracking.tables import cell

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
                | {"claimed better": f"{win}: {cell(pair[win].mean(), pair[win].std(), result.n)}"}
                | {"other": f"{lose}: {cell(pair[lose].mean(), pair[lose].std(), result.n)}"}
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
        "direction (checks numbered in table order). " + RULE.replace("the paper's side", "the claimed side")
    )
    deltas = [
        {"name": f"{i + 1}. {row['task']}", "delta_mean": row["delta_mean"]}
        | {"ci_low": row["ci_low"], "ci_high": row["ci_high"]}
        for i, row in enumerate(table)
    ]
    return Claim("SLAD arms", statement, pd.DataFrame(table), pd.DataFrame(shown), verdict, deltas)
