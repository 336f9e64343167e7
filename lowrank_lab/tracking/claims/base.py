"""What every claim shares: the checked Claim, a Comparison of two arms paired by seed, paired_arms() that decides
each with stats.py (bootstrap 95 % CI of the mean paired Δ → holds / does not hold / inconclusive; `undecided: <arm>
did not learn` when an arm has a run under its trivial baseline), and the rule's wording for the pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lowrank_lab.tracking import stats
from lowrank_lab.tracking.tables import ci_of, compare, shown_comparison

ARM = "arm"  # the column paired_arms() compares on


@dataclass
class Claim:
    """A checked claim: what it says, the per-seed or per-task numbers (claim.csv), the table shown, the verdict."""

    title: str
    statement: str
    table: pd.DataFrame
    shown: pd.DataFrame
    verdict: str
    deltas: list[dict[str, Any]] = field(default_factory=list)  # plots.delta_figure's rows


@dataclass(frozen=True)
class Comparison:
    """Arm `new` against arm `base`, paired by seed. `paper`: the paper's Δ per task (dict; a task it lacks is not
    judged), or one number for every task (+1.0 / −1.0 when the paper states only the direction)."""

    base: str
    new: str
    name: str
    short: str  # the plot's label
    paper: dict[str, float] | float

    def paper_delta(self, task: str) -> float | None:
        return self.paper.get(task) if isinstance(self.paper, dict) else self.paper

    def paper_text(self, delta: float | None) -> str:
        if isinstance(self.paper, dict) or delta is None:
            return stats.paper_label(delta)
        return "higher" if delta > 0 else "lower"


def paired_arms(values: pd.DataFrame, comparisons: tuple[Comparison, ...], by: list[str]) -> dict[str, Any]:
    """Each comparison per group of `by` (tables.compare on column ARM): Δ = new − base paired by seed with the
    t-test, Wilcoxon, bootstrap CI and the verdict against the paper (`undecided` when an arm did not learn).
    Returns Claim's fields: table, shown, verdict, deltas."""
    tables, shown, parts, deltas = [], [], [], []
    for c in comparisons:
        delta = compare(values, ARM, c.base, c.new, by)
        if delta.empty:
            parts.append(f"{c.name}: not checked (no finished `{c.base}` and `{c.new}` runs of the same seed)")
            continue
        paper = [c.paper_delta(t) for t in delta["task"]]
        verdicts = [
            "no paper number" if p is None else stats.decide(ci_of(row), p, row["not_learned"], row["same_every_seed"])
            for row, p in zip(delta.to_dict("records"), paper)
        ]
        delta = delta.assign(comparison=c.name, paper_delta=paper, verdict=verdicts)
        fixed = {
            f"{a}_{s}": f"{role}_{s}"
            for a, role in ((c.base, "base"), (c.new, "new"))
            for s in ("mean", "std", "learned")
        }
        tables.append(delta.rename(columns=fixed).assign(base_arm=c.base, new_arm=c.new))
        for out, p, v in zip(shown_comparison(delta, by), paper, verdicts):
            shown.append(
                {"comparison": c.name} | _relabel(out, c.base, c.new) | {"paper Δ": c.paper_text(p)} | {"verdict": v}
            )
        deltas += [
            {"name": f"{row['task']} · {c.short}", "delta_mean": row["delta_mean"]}
            | {"paper_delta": p if isinstance(c.paper, dict) else None}
            | {"ci_low": row["ci_low"], "ci_high": row["ci_high"]}
            for row, p in zip(delta.to_dict("records"), paper)
        ]
        judged = [(v, t) for v, t, p in zip(verdicts, delta["task"], paper) if p is not None]
        parts.append(f"{c.name}: " + stats.tally([v for v, _ in judged], [t for _, t in judged]))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return {"table": table, "shown": pd.DataFrame(shown), "verdict": " | ".join(parts), "deltas": deltas}


RULE = (
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
