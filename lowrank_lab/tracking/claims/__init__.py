"""The claim a paper makes that a sweep can check, one function per experiment file (CLAIMS). Each states the
claim, pairs arms by seed from MLflow's final values (finished runs only), and decides with stats.py: a bootstrap
95 % CI of the mean paired Δ gives holds / does not hold / inconclusive; a comparison in which an arm has a run that
did not learn (tag lowrank_lab.learned=false) is `undecided: <arm> did not learn`. DESIGN: never tune until it holds.

    slora_ablation(_instruct)  SLoRA: per gate mode vs `none`: Δ val loss, Δ accepted steps, Δ wall time; the
                               seed's criterion (val loss ≤ +0.5 % of `none` with ≥ 30 % fewer accepted steps) on CIs
    sad_glue                   SAD-LoRA: per task, SAD − KD (B = 0; the paper's comparison) and SAD − KD with the same
                               spectral init (what L_align adds), against the paper's Δ
    adapter_compare            KaSA / DoRA / PiSSA / OLoRA vs LoRA with peft's init, in each paper's direction
    lorafa_math                LoRA-FA: gradient init vs peft's, alignment vs task loss, cyclic vs every step
    slad(_vision)              SLAD: LoRA vs FT teacher (CKA, distilled student), joint vs separate, speed vs FT
"""

from __future__ import annotations

from collections.abc import Callable

from lowrank_lab.tracking.claims.adapters import adapters_over_lora
from lowrank_lab.tracking.claims.base import Claim, Comparison, paired_arms
from lowrank_lab.tracking.claims.lorafa import lorafa_parts
from lowrank_lab.tracking.claims.sad import PAPER_SAD_MINUS_KD, sad_over_kd
from lowrank_lab.tracking.claims.slad import slad_arms
from lowrank_lab.tracking.claims.slora import slora_gate
from lowrank_lab.tracking.results import Sweep

# `experiment=<name>` -> its claim; an experiment not listed has none
CLAIMS: dict[str, Callable[[Sweep, list[str]], Claim]] = {
    "slora_ablation": slora_gate,
    "slora_ablation_instruct": slora_gate,
    "sad_glue": sad_over_kd,
    "adapter_compare": adapters_over_lora,
    "lorafa_math": lorafa_parts,
    "slad": slad_arms,
    "slad_vision": slad_arms,
}


def check(sweep: Sweep, group_by: list[str]) -> Claim | None:
    """The claim of the sweep's experiment file (see CLAIMS), checked; None when it has none."""
    claim = CLAIMS.get(sweep.experiment_file)
    return claim(sweep, group_by) if claim else None


__all__ = ["CLAIMS", "PAPER_SAD_MINUS_KD", "Claim", "Comparison", "check", "paired_arms"]
