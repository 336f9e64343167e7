"""lowrank_lab.tracking.stats: the paired tests against scipy on fixed data, the bootstrap CI against the exact
bootstrap distribution (every resample enumerated) and its known properties, and the verdict rule on constructed
deltas (clear win, clear loss, noise, the paper's ≈, one seed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lowrank_lab.tracking import stats

BASE = np.array([0.781, 0.775, 0.790, 0.769, 0.784, 0.772, 0.779])
NEW = np.array([0.802, 0.779, 0.801, 0.790, 0.781, 0.795, 0.788])


def test_t_test_is_scipys_paired_t_test() -> None:
    assert stats.t_test_p(NEW - BASE) == pytest.approx(scipy_stats.ttest_rel(NEW, BASE).pvalue, rel=1e-12)
    assert stats.t_test_p(NEW[:3] - BASE[:3]) == pytest.approx(scipy_stats.ttest_rel(NEW[:3], BASE[:3]).pvalue)
    assert stats.t_test_p([0.01]) is None and stats.t_test_p([0.02, 0.02, 0.02]) is None  # no spread: no t


def test_wilcoxon_from_six_pairs() -> None:
    assert stats.wilcoxon_p(NEW - BASE) == pytest.approx(scipy_stats.wilcoxon(NEW, BASE).pvalue, rel=1e-12)
    assert stats.wilcoxon_p(NEW[:6] - BASE[:6]) == pytest.approx(scipy_stats.wilcoxon(NEW[:6], BASE[:6]).pvalue)
    assert stats.wilcoxon_p(NEW[:5] - BASE[:5]) is None  # n < 6
    assert stats.wilcoxon_p(np.zeros(7)) is None


def _exact_bootstrap_quantiles(d: np.ndarray, q: list[float]) -> np.ndarray:
    """The bootstrap distribution of the mean with every one of the n^n ordered resamples (equally likely)."""
    means = np.array([d[list(idx)].mean() for idx in itertools.product(range(len(d)), repeat=len(d))])
    return np.quantile(means, q)


def test_bootstrap_ci_against_the_exact_bootstrap() -> None:
    d = np.array([0.012, -0.004, 0.031, 0.008, 0.019])
    low, high = stats.bootstrap_ci(d)
    exact_low, exact_high = _exact_bootstrap_quantiles(d, [0.025, 0.975])
    tolerance = 0.1 * d.std() / np.sqrt(len(d))  # Monte-Carlo error of 10 000 resamples is ~0.02 of this scale
    assert low == pytest.approx(exact_low, abs=tolerance) and high == pytest.approx(exact_high, abs=tolerance)
    reference = scipy_stats.bootstrap((d,), np.mean, n_resamples=10_000, method="percentile", random_state=1)
    assert low == pytest.approx(reference.confidence_interval.low, abs=tolerance)
    assert high == pytest.approx(reference.confidence_interval.high, abs=tolerance)


def test_bootstrap_ci_properties() -> None:
    d = NEW - BASE
    assert stats.bootstrap_ci(d) == stats.bootstrap_ci(d)  # seeded: the same interval every time
    low, high = stats.bootstrap_ci(d)
    assert low < d.mean() < high
    shifted = stats.bootstrap_ci(d + 1.0)  # same resamples: the interval moves with the data
    assert shifted == pytest.approx((low + 1.0, high + 1.0), abs=1e-12)
    assert stats.bootstrap_ci([0.3, -0.1]) == (-0.1, 0.3)  # two seeds: P(both draws = one value) = 1/4 > 2.5 %
    assert stats.bootstrap_ci([0.3]) is None
    wide, narrow = stats.bootstrap_ci(d, confidence=0.99), stats.bootstrap_ci(d, confidence=0.5)
    assert wide[0] <= low <= narrow[0] <= narrow[1] <= high <= wide[1]


def test_paired_collects_everything() -> None:
    result = stats.paired(NEW - BASE)
    assert (result.n, result.mean, result.sd) == (
        7,
        pytest.approx((NEW - BASE).mean()),
        pytest.approx((NEW - BASE).std(ddof=1)),
    )
    assert result.t_p == stats.t_test_p(NEW - BASE) and result.ci == stats.bootstrap_ci(NEW - BASE)
    one = stats.paired([0.018])  # issue 13's single SST-2 seed: no sd, no test, no CI
    assert one.n == 1 and np.isnan(one.sd) and (one.t_p, one.wilcoxon_p, one.ci) == (None, None, None)


RNG = np.random.default_rng(7)
WIN = 0.05 + 0.01 * RNG.standard_normal(5)  # clearly above 0
LOSS = -0.05 + 0.01 * RNG.standard_normal(5)  # clearly below 0
NOISE = np.array([0.03, -0.02, 0.01, -0.03, 0.015])  # straddles 0
SMALL = np.array([0.002, -0.003, 0.001, 0.0, -0.001, 0.002])  # |Δ| ≤ 0.003: equivalent within ±0.01


@pytest.mark.parametrize(
    ("deltas", "paper", "expected"),
    [
        (WIN, 0.046, "holds"),
        (LOSS, 0.046, "does not hold"),
        (NOISE, 0.046, "inconclusive"),
        (LOSS, -0.02, "holds"),  # the paper's direction is down
        (WIN, -0.02, "does not hold"),
        (SMALL, -0.001, "holds"),  # paper ≈: our CI lies within ±margin
        (WIN, -0.001, "does not hold"),  # paper ≈, ours clearly +0.05
        (NOISE, 0.001, "inconclusive"),  # paper ≈, ours too noisy to tell (contains 0, leaves ±margin)
        (np.array([0.018]), 0.046, "inconclusive"),  # one seed: never a verdict (was "holds" on mean − sd, sd = 0)
    ],
)
def test_verdict_rule(deltas: np.ndarray, paper: float, expected: str) -> None:
    assert stats.verdict(stats.paired(deltas).ci, paper) == expected


def test_verdict_never_from_mean_minus_sd() -> None:
    """Three seeds, mean − sd > 0 but one seed behind: the CI (≈ [min, max] at n = 3) contains 0."""
    d = np.array([-0.001, 0.02, 0.021])
    assert d.mean() - d.std(ddof=1) > 0  # the old rule called this "ahead"
    assert stats.paired(d).ci[0] < 0 and stats.verdict(stats.paired(d).ci, 0.046) == "inconclusive"


def test_labels() -> None:
    assert stats.paper_label(-0.02) == "-0.020" and stats.paper_label(-0.001) == "-0.001 (≈)"  # |Δ| decides ≈
    assert stats.paper_label(0.046) == "+0.046" and stats.paper_label(None) == "–"
    assert stats.p_text(0.0004) == "<0.001" and stats.p_text(0.0312) == "0.031" and stats.p_text(None) == "–"
    assert stats.ci_text((-0.01, 0.02)) == "[-0.0100, +0.0200]" and stats.direction((0.1, 0.2)) == "higher"


def test_decide_and_tally() -> None:
    ci = stats.bootstrap_ci(WIN)
    assert stats.decide(ci, 0.046, "") == "holds" and stats.decide(ci, 0.046, "kd") == "undecided: kd did not learn"
    assert stats.decide(ci, 0.046, "kd,sad") == "undecided: kd and sad did not learn"
    verdicts = ["holds", "inconclusive", "does not hold", "undecided: kd did not learn", "holds"]
    expected = "holds on 2 of 5 (a, e); does not hold on 1 (c); inconclusive on 1 (b); undecided on 1 (d)"
    assert stats.tally(verdicts, list("abcde")) == expected and stats.tally([], []) == "not checked"


def test_an_arm_the_seed_does_not_change_is_undecided() -> None:
    """Deterministic runs (e.g. a data-aware init with the data order fixed) give one value for every seed: the
    bootstrap CI of a constant Δ is a point, which would read as a certain win; the comparison is undecided instead."""
    import pandas as pd

    from lowrank_lab.tracking.tables import compare

    rows = [("peft", s, 4.8 + 0.01 * s) for s in range(3)] + [("grad", s, 4.5) for s in range(3)]
    values = pd.DataFrame(rows, columns=["arm", "seed", "value"]).assign(task="gsm8k", baseline=900.0, learned=True)
    row = compare(values, "arm", "peft", "grad", ["task"]).iloc[0]
    assert row["same_every_seed"] == "grad" and row["ci_low"] < row["ci_high"] < 0  # a CI that alone would say holds
    ci = (row["ci_low"], row["ci_high"])
    assert (
        stats.decide(ci, -1.0, "", row["same_every_seed"])
        == "undecided: grad is the same for every seed (not replicates)"
    )
    assert stats.decide(ci, -1.0, "", "") == "holds"
    varied = values.assign(value=values["value"] + np.where(values["arm"] == "grad", 0.001 * values["seed"], 0.0))
    assert compare(varied, "arm", "peft", "grad", ["task"]).iloc[0]["same_every_seed"] == ""
