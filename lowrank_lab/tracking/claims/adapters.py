"""KaSA, DoRA, PiSSA and OLoRA against LoRA with peft's init (experiment=adapter_compare)."""

from __future__ import annotations

from lowrank_lab.tracking.claims.base import ARM, RULE, Claim, Comparison, paired_arms
from lowrank_lab.tracking.results import Sweep, label
from lowrank_lab.tracking.tables import run_values

ADAPTER_BASE = "lora/default"
ADAPTER_COMPARISONS = (  # each paper's claim: better than LoRA (B = 0) on its benchmarks; the direction only
    Comparison(ADAPTER_BASE, "kasa/default", "KaSA vs LoRA (KaSA's GLUE table)", "KaSA", 1.0),
    Comparison(ADAPTER_BASE, "dora/default", "DoRA vs LoRA (DoRA's commonsense / GLUE tables)", "DoRA", 1.0),
    Comparison(ADAPTER_BASE, "lora/pissa", "PiSSA init vs peft's init, LoRA (PiSSA's GLUE table)", "PiSSA", 1.0),
    Comparison(ADAPTER_BASE, "lora/olora", "OLoRA init vs peft's init, LoRA (OLoRA's tables)", "OLoRA", 1.0),
)


def adapters_over_lora(sweep: Sweep, group_by: list[str]) -> Claim:
    """Per task (and method), each adapter / init of ADAPTER_COMPARISONS against LoRA with peft's init, paired by
    seed (paired_arms; the papers give the direction, so the verdict reads the CI's side of 0)."""
    labels = [k for k in group_by if k not in ("peft", "init", "adapter_arm")]
    values = run_values(sweep, labels)
    arms = {r.info.run_id: f"{label(r, 'peft')}/{label(r, 'init')}" for r in sweep.finished}
    values[ARM] = values["run_id"].map(arms)
    statement = (
        "KaSA, DoRA, PiSSA and OLoRA each report beating LoRA with peft's init (B = 0) at the same rank. Each is "
        "paired by seed with `lora/default` (peft/init) per task and method, in the direction its paper claims: "
        + RULE.replace("the paper's side", "the claimed side")
    )
    found = paired_arms(values, ADAPTER_COMPARISONS, [*labels, "task", "metric"])
    return Claim("Adapters and inits vs LoRA, paired by seed", statement, **found)
