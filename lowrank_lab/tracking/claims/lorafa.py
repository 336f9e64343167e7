"""LoRA-FA (lora-fa.txt): the gradient-SVD init, the teacher-alignment term and cyclic realignment
(experiment=lorafa_math)."""

from __future__ import annotations

from lowrank_lab.tracking.claims.base import ARM, RULE, Claim, Comparison, paired_arms
from lowrank_lab.tracking.results import Sweep, label
from lowrank_lab.tracking.tables import run_values

# arm = `<arm>/<init>`; the seed states directions only, on a perplexity (lower is better): paper Δ = −1
LORAFA_COMPARISONS = (
    Comparison("task_only/default", "task_only/gradient", "gradient-SVD init vs peft's init (task loss)", "init", -1.0),
    Comparison("align/default", "align/gradient", "gradient-SVD init vs peft's init (aligned)", "init+align", -1.0),
    Comparison("task_only/gradient", "align/gradient", "L_task + λ·KL vs L_task (gradient init)", "align", -1.0),
    Comparison("align/gradient", "cyclic/gradient", "cyclic realignment vs aligning every step", "cyclic", -1.0),
)


def lorafa_parts(sweep: Sweep, group_by: list[str]) -> Claim:
    """Each comparison of LORAFA_COMPARISONS per task, paired by seed (paired_arms), in the direction the seed
    claims: the data-aware init, the alignment term and the cycle each lower the held-out perplexity."""
    labels = [k for k in group_by if k not in ("arm", "init")]
    values = run_values(sweep, labels)
    arms = {r.info.run_id: f"{label(r, 'arm')}/{label(r, 'init')}" for r in sweep.finished}
    values[ARM] = values["run_id"].map(arms)
    statement = (
        "LoRA-FA's seed claims three ingredients each help: the gradient-SVD (data-aware) init over peft's B = 0 "
        "init, the dual objective L_task + λ·KL(p_T ‖ p_S) over the task loss alone, and cyclic teacher "
        "realignment. Each is paired by seed per task; the claimed side is a lower perplexity: "
        + RULE.replace("the paper's side", "the claimed side")
    )
    found = paired_arms(values, LORAFA_COMPARISONS, [*labels, "task", "metric"])
    return Claim("LoRA-FA's ingredients, paired by seed", statement, **found)
