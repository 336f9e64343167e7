"""Paired statistics on per-seed deltas (Δ_s = new_s − baseline_s, one per seed both arms ran) and the verdict rule
every claim uses (DESIGN "A result"): scipy's paired t-test, Wilcoxon's signed-rank test from 6 seeds, a seeded
percentile-bootstrap 95 % CI of the mean Δ, and holds / does not hold / inconclusive read off that CI only.

Verdict against the paper's Δ (in the metric's units and sign; its sign is the claimed direction):
    |Δ_paper| ≥ PAPER_SAME  holds          CI lies entirely on the paper's side of 0
                            does not hold  CI lies entirely on the other side
                            inconclusive   CI contains 0, or fewer than 2 seeds (no CI)
    |Δ_paper| <  PAPER_SAME the paper reports ≈ (no difference): an equivalence test with margin EQUIVALENCE_MARGIN
                            holds          CI ⊂ [−margin, +margin]     (the difference is shown to be small)
                            does not hold  CI lies entirely outside it (the difference is shown to be large)
                            inconclusive   otherwise ("CI contains 0" alone is absence of evidence, not ≈)
    any arm with a run that did not beat its trivial baseline: `undecided: <arm> did not learn` (decide())
    an arm with the same value for every seed (≥ 2): `undecided: <arm> is the same for every seed` (the seed
    changes nothing in it, so its seeds are not replicates and a CI over them means nothing)
Never mean ± sd. With very few seeds the percentile bootstrap is optimistic (for 3 seeds its 95 % interval is about
[min Δ, max Δ]); the report prints n and the t-test p beside it so a reader can weigh that.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE = 10_000, 0, 0.95
MIN_WILCOXON = 6  # Wilcoxon's signed-rank test from this many pairs (its smallest exact p at n = 5 is 0.0625)
PAPER_SAME = 0.005  # |Δ_paper| below this the paper writes ≈
EQUIVALENCE_MARGIN = 0.01  # "≈" holds when the CI lies within ±this (one point of accuracy / F1 / ρ / MCC)
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Paired:
    """Per-seed deltas and what they support: n, mean, sample sd (ddof = 1), t-test p, Wilcoxon p, bootstrap CI."""

    n: int
    mean: float
    sd: float
    t_p: float | None  # None: fewer than 2 seeds, or every Δ equal
    wilcoxon_p: float | None  # None: fewer than MIN_WILCOXON seeds, or every Δ zero
    ci: tuple[float, float] | None  # None: fewer than 2 seeds


def t_test_p(deltas: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test (scipy.stats.ttest_1samp of Δ against 0 ≡ ttest_rel of the two arms)."""
    from scipy import stats

    d = np.asarray(deltas, dtype=float)
    if len(d) < 2 or np.ptp(d) == 0:
        return None
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def wilcoxon_p(deltas: Sequence[float]) -> float | None:
    """Two-sided p of Wilcoxon's signed-rank test on Δ (scipy.stats.wilcoxon), from MIN_WILCOXON pairs."""
    from scipy import stats

    d = np.asarray(deltas, dtype=float)
    if len(d) < MIN_WILCOXON or not np.any(d):
        return None
    with warnings.catch_warnings():  # ties / zeros: scipy falls back to the normal approximation and says so
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d).pvalue)


def bootstrap_ci(
    deltas: Sequence[float], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Percentile-bootstrap CI of the mean Δ: `resamples` draws of n seeds with replacement from
    numpy's default_rng(seed) (deterministic), the (1 ± confidence)/2 quantiles of their means."""
    d = np.asarray(deltas, dtype=float)
    if len(d) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)  # (resamples, n) -> (resamples,)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired(deltas: Sequence[float]) -> Paired:
    """Everything the report shows about one set of per-seed deltas."""
    d = np.asarray(deltas, dtype=float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    mean = float(d.mean()) if len(d) else math.nan
    return Paired(len(d), mean, sd, t_test_p(d), wilcoxon_p(d), bootstrap_ci(d))


def verdict(ci: tuple[float, float] | None, paper_delta: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    """holds / does not hold / inconclusive for a paper Δ from the CI of ours (rule in the module docstring)."""
    if ci is None:
        return INCONCLUSIVE
    low, high = ci
    if abs(paper_delta) < PAPER_SAME:  # the paper says ≈: equivalence within ±margin
        if -margin <= low and high <= margin:
            return HOLDS
        return FAILS if low > margin or high < -margin else INCONCLUSIVE
    if paper_delta < 0:  # the paper's direction is down: mirror
        low, high = -high, -low
    return HOLDS if low > 0 else FAILS if high < 0 else INCONCLUSIVE


def decide(ci: tuple[float, float] | None, paper_delta: float, not_learned: str, same_every_seed: str = "") -> str:
    """stats.verdict, unless an arm of the comparison has a run that did not learn or gives one value for every
    seed (comma-separated arm names)."""
    if not_learned:
        return f"undecided: {' and '.join(not_learned.split(','))} did not learn"
    if same_every_seed:
        return f"undecided: {' and '.join(same_every_seed.split(','))} is the same for every seed (not replicates)"
    return verdict(ci, paper_delta)


def tally(verdicts: list[str], names: list[str]) -> str:
    """`holds on 2 of 6 (stsb, rte); inconclusive on 4 (…)`: how many items got each verdict."""
    if not verdicts:
        return "not checked"
    parts = []
    for kind in (HOLDS, FAILS, INCONCLUSIVE, "undecided"):
        hit = [n for v, n in zip(verdicts, names) if v.startswith(kind)]
        if hit or kind == HOLDS:
            of = f" of {len(verdicts)}" if kind == HOLDS else ""
            parts.append(f"{kind} on {len(hit)}{of}" + (f" ({', '.join(hit)})" if hit else ""))
    return "; ".join(parts)


def direction(ci: tuple[float, float] | None) -> str:
    """Without a paper Δ: `higher` / `lower` when the CI excludes 0, else `no difference shown`."""
    if ci is None:
        return "no difference shown"
    return "higher" if ci[0] > 0 else "lower" if ci[1] < 0 else "no difference shown"


def paper_label(delta: float | None) -> str:
    """`+0.046`, or `-0.001 (≈)` when |Δ| < PAPER_SAME (the paper's ≈), `–` when the paper has no number."""
    if delta is None:
        return "–"
    return f"{delta:+.3f}" + (" (≈)" if abs(delta) < PAPER_SAME else "")


def p_text(p: float | None) -> str:
    """A p-value for a table: `0.012`, `<0.001`, `–` (not computed)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def ci_text(ci: tuple[float, float] | None, digits: int = 4) -> str:
    """`[+0.0120, +0.0410]`, `–` without a CI."""
    return "–" if ci is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
