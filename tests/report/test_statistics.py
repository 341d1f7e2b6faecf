"""regbench.report.statistics against hand calculations, scipy, simulation and Demšar 2006's worked
example."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest
from scipy import stats

from regbench.report.statistics import (
    INDISTINGUISHABLE,
    SEEDS_CAP,
    TOO_FEW_SEEDS,
    bonferroni_level,
    cliques,
    critical_difference,
    critical_t,
    holm,
    iman_davenport,
    mcnemar,
    nemenyi_q,
    paired_comparison,
    paired_t_power,
    percentile_interval,
    probability_of_improvement,
    rank_test,
    seeds_needed,
    sign_flip_seeds_needed,
    verdict,
)


def friedman_from_ranks(average_ranks: Sequence[float], n_blocks: int) -> float:
    """The oracle for rank_test's Friedman statistic: Demšar's eq.,
    χ²_F = 12N / (k(k+1)) · (Σ_j R_j² − k(k+1)²/4), without tie correction."""
    k = len(average_ranks)
    ranks = np.asarray(average_ranks, dtype=float)
    return float(12 * n_blocks / (k * (k + 1)) * ((ranks ** 2).sum() - k * (k + 1) ** 2 / 4))


# --- paired comparison ---------------------------------------------------------------------------


def test_paired_comparison_equals_scipy():
    group, baseline = [0.975, 0.981, 0.969, 0.978], [0.970, 0.972, 0.968, 0.971]
    result = paired_comparison(group, baseline)
    expected = stats.ttest_rel(group, baseline)
    interval = expected.confidence_interval(0.95)
    diff = np.subtract(group, baseline)
    assert result.n_pairs == 4
    assert result.mean_diff == pytest.approx(diff.mean(), rel=1e-12)
    assert result.sd_diff == pytest.approx(diff.std(ddof=1), rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert result.test == "paired t-test"


def test_identical_results_are_indistinguishable():
    values = [0.97, 0.98, 0.96]
    result = paired_comparison(values, list(values))
    assert (result.mean_diff, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert verdict(result, holm([result.p_value])[0]) == INDISTINGUISHABLE


def test_constant_nonzero_difference_uses_the_sign_flip_p_value():
    # Every seed gains exactly one of 360 test examples: scipy would say t = inf, p = 0. Computed
    # as k/360 in floating point, the differences are not bitwise equal; still "constant".
    baseline = [350 / 360, 347 / 360, 352 / 360]
    group = [351 / 360, 348 / 360, 353 / 360]
    result = paired_comparison(group, baseline)
    assert result.mean_diff == pytest.approx(1 / 360)
    assert result.p_value == 2 * 0.5 ** 3  # 0.25: only the observed signs and their mirror
    # Inverting the sign-flip test: every shift but d leaves 3 equal differences (p = 0.25 > 0.05),
    # so the 95 % interval is the whole line, not [d, d] next to "indistinguishable".
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert verdict(result, result.p_value) == INDISTINGUISHABLE
    six = paired_comparison([1.0] * 6, [0.0] * 6)
    assert six.p_value == 2 / 64 and verdict(six, six.p_value) == "higher"
    assert six.ci_low == six.ci_high == 1.0  # 2/64 < 0.05: every other shift is rejected
    # At a Bonferroni level 1 - 0.05/2 = 0.975, 2/64 = 0.031 is not below 0.025: unbounded again.
    assert math.isnan(paired_comparison([1.0] * 6, [0.0] * 6, level=0.975).ci_low)


def test_fewer_than_two_pairs_gives_no_test():
    one = paired_comparison([0.9], [0.8])
    assert one.n_pairs == 1 and one.mean_diff == pytest.approx(0.1)
    assert math.isnan(one.p_value) and math.isnan(one.ci_low) and one.test == ""  # no test ran
    assert verdict(one, math.nan) == TOO_FEW_SEEDS
    assert paired_comparison([], []).n_pairs == 0


def test_verdict_direction():
    up = paired_comparison([2.0, 3.1, 4.0, 5.2], [1.0, 2.0, 3.1, 4.0])
    down = paired_comparison([1.0, 2.0, 3.1, 4.0], [2.0, 3.1, 4.0, 5.2])
    assert verdict(up, 0.01) == "higher" and verdict(down, 0.01) == "lower"
    assert verdict(up, 0.05) == INDISTINGUISHABLE  # p_holm < 0.05 decides, 0.05 itself does not


def test_holm_against_hand_calculation():
    # Sorted p: 0.01, 0.02, 0.03, 0.04 (m = 4): 4·0.01 = 0.04, 3·0.02 = 0.06, 2·0.03 = 0.06,
    # 1·0.04 = 0.04 -> running maximum 0.04, 0.06, 0.06, 0.06. NaN (no test) is not counted.
    assert holm([0.03, 0.01, math.nan, 0.04, 0.02])[:2] == pytest.approx([0.06, 0.04])
    adjusted = holm([0.03, 0.01, math.nan, 0.04, 0.02])
    assert math.isnan(adjusted[2])
    assert [adjusted[i] for i in (0, 1, 3, 4)] == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_probability_of_improvement_with_ties():
    # Pairs (group, baseline) over 3 x 2 runs: 3 vs 1 win, 3 vs 3 tie, 2 vs 1 win, 2 vs 3 loss,
    # 1 vs 1 tie, 1 vs 3 loss: (2 wins + 2 ties / 2) / 6 = 0.5.
    assert probability_of_improvement([3, 2, 1], [1, 3]) == pytest.approx(0.5)
    assert probability_of_improvement([5, 6], [1, 2, 3]) == 1.0
    assert probability_of_improvement([0.1], [0.1]) == 0.5
    assert probability_of_improvement([4, 4], [4, 3]) == pytest.approx(0.75)
    assert math.isnan(probability_of_improvement([], [1.0]))


def test_power_reproduces_statsmodels_and_the_notes_table():
    # statsmodels' ttest_power docstring: d = 0.5, alpha 0.05, power 0.8 -> n = 33.37, so 34 pairs.
    assert paired_t_power(np.array([33, 34]), 0.5).tolist() == pytest.approx([0.7954, 0.8078], abs=1e-4)
    # Notes §9.4, derived with scipy: n for power 0.8 at d = 0.5, 0.8, 1, 1.5, 2.
    for effect, pairs in ((0.5, 34), (0.8, 15), (1.0, 10), (1.5, 6), (2.0, 5)):
        assert seeds_needed(effect, 1.0) == pairs, effect
        assert seeds_needed(-effect * 0.01, 0.01) == pairs  # sign and units do not matter
    # Power with few seeds: n = 3 -> 0.08 / 0.18 / 0.47 for d = 0.5 / 1 / 2; n = 10 -> 0.29 / 0.80.
    assert paired_t_power(np.array([3, 3, 3]), 1.0).tolist() == pytest.approx([0.18] * 3, abs=0.005)
    assert float(paired_t_power(np.array([3]), 0.5)[0]) == pytest.approx(0.08, abs=0.005)
    assert float(paired_t_power(np.array([3]), 2.0)[0]) == pytest.approx(0.47, abs=0.005)
    assert float(paired_t_power(np.array([10]), 0.5)[0]) == pytest.approx(0.29, abs=0.005)


def test_power_matches_simulated_t_tests():
    # 20,000 simulated studies of 5 pairs with a true difference of 1 sd: the share the t-test
    # rejects at 0.05 (standard error 0.0035) is the noncentral t's power, 0.40.
    rng = np.random.default_rng(0)
    differences = rng.normal(1.0, 1.0, size=(20000, 5))
    t = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / math.sqrt(5))
    rejected = float((np.abs(t) > stats.t.ppf(0.975, 4)).mean())
    assert rejected == pytest.approx(float(paired_t_power(np.array([5]), 1.0)[0]), abs=0.012)
    # Without a difference a two-sided test rejects alpha of the time, half in each tail.
    assert paired_t_power(np.array([2, 5, 50]), 0.0).tolist() == pytest.approx([0.05] * 3)


def test_seeds_needed_is_never_fewer_than_the_pairs_run_and_capped():
    # The issue's "+0.42 pp [-1.35, 2.18] (2 pairs); about 2 seeds would detect a difference this
    # large": the interval's half width 1.765 pp = t_{0.975, 1} · sd / sqrt(2) gives sd = 0.196 pp,
    # d = 2.14. The normal approximation said 1.7 -> 2 (the pairs already run, which found
    # nothing); the noncentral t says 4 (power 0.51 with 3 pairs, 0.80 with 4).
    sd = 0.01765 * math.sqrt(2) / stats.t.ppf(0.975, 1)
    assert paired_t_power(np.array([3, 4]), 0.0042 / sd).tolist() == pytest.approx([0.513, 0.803], abs=1e-3)
    assert seeds_needed(0.0042, sd, pairs_run=2) == 4
    assert seeds_needed(1.0, 0.01) == 2                  # huge effect: 2 pairs suffice...
    assert seeds_needed(1.0, 0.01, pairs_run=5) == 5     # ...but never fewer than those run
    assert seeds_needed(0.5, 1.0, pairs_run=40) == 40
    # The issue's "about 11672 seeds": a difference negligible next to its spread is "more than
    # 1000" (cap + 1), not a number to plan by.
    assert seeds_needed(0.001, 0.036) == SEEDS_CAP + 1
    assert seeds_needed(0.0, 0.01) is None and seeds_needed(math.nan, 0.01) is None
    assert seeds_needed(0.01, 0.0) is None  # constant differences: the sign-flip count instead
    # At a stricter level (Bonferroni over 3 comparisons) more pairs are needed.
    assert seeds_needed(1.0, 1.0, alpha=0.05 / 3) > seeds_needed(1.0, 1.0)
    assert sign_flip_seeds_needed(pairs_run=7) == 7


def test_critical_t_of_two_and_three_pairs():
    assert critical_t(2) == pytest.approx(12.706, abs=1e-3)  # 1 degree of freedom
    assert critical_t(3) == pytest.approx(4.303, abs=1e-3)


def test_bonferroni_intervals_equal_scipy_and_agree_with_holm():
    assert bonferroni_level(1) == 0.95 and bonferroni_level(3) == pytest.approx(1 - 0.05 / 3)
    group, baseline = [0.975, 0.981, 0.969, 0.978], [0.970, 0.972, 0.968, 0.971]
    wide = paired_comparison(group, baseline, level=bonferroni_level(3))
    interval = stats.ttest_rel(group, baseline).confidence_interval(1 - 0.05 / 3)
    assert (wide.ci_low, wide.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    # Duality: a family's interval that excludes 0 at 1 - alpha/m has p < alpha/m, and then Holm's
    # adjusted p is below alpha: never "indistinguishable" with an interval that excludes 0.
    rng = np.random.default_rng(1)
    for _ in range(200):
        family = [paired_comparison(rng.normal(rng.normal(0, 0.01), 0.01, 4) + 0.9, [0.9] * 4,
                                    level=bonferroni_level(3)) for _ in range(3)]
        for one, adjusted in zip(family, holm([one.p_value for one in family])):
            if one.ci_low > 0 or one.ci_high < 0:
                assert verdict(one, adjusted) != INDISTINGUISHABLE


def test_mcnemar_against_hand_binomials():
    def predictions(b: int, c: int, both: int = 100) -> tuple[np.ndarray, np.ndarray]:
        group = np.array([1] * b + [0] * c + [1] * both, dtype=bool)
        baseline = np.array([0] * b + [1] * c + [1] * both, dtype=bool)
        return group, baseline

    # Notes §9.2: b = 30, c = 15 -> exact p = 2 · P(Binomial(45, 1/2) <= 15) = 0.0357.
    hand = 2 * sum(math.comb(45, k) for k in range(16)) / 2 ** 45
    test = mcnemar(*predictions(30, 15))
    assert (test.group_only, test.baseline_only) == (30, 15)
    assert test.p_value == pytest.approx(hand, rel=1e-10) and round(hand, 4) == 0.0357
    assert mcnemar(*predictions(0, 5)).p_value == pytest.approx(2 / 32)  # 2 · 0.5^5
    assert mcnemar(*predictions(7, 7)).p_value == 1.0
    assert mcnemar(*predictions(0, 0)).p_value == 1.0  # no discordant example: nothing to test
    assert mcnemar(*predictions(3, 9, both=0)).p_value == mcnemar(*predictions(9, 3)).p_value


def test_percentile_interval_is_numpys():
    values = np.random.default_rng(2).normal(size=2000)
    assert percentile_interval(values, 0.95) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert percentile_interval(values, 0.99)[0] < percentile_interval(values, 0.95)[0]


# --- ranks: Demšar 2006 --------------------------------------------------------------------------

DEMSAR_AVERAGE_RANKS = [3.143, 2.000, 2.893, 1.964]  # Table 6: C4.5, C4.5+m, C4.5+cf, C4.5+m+cf


def test_nemenyi_q_reproduces_demsar_table():
    expected = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102,
                10: 3.164}
    for k, q in expected.items():
        assert nemenyi_q(k) == pytest.approx(q, abs=1e-3), k


def test_critical_difference_of_demsar_example():
    # k = 4 classifiers, N = 14 data sets: CD = 2.569 · sqrt(4·5 / (6·14)) = 1.25.
    assert critical_difference(4, 14) == pytest.approx(2.569 * math.sqrt(20 / 84), abs=1e-3)
    assert round(critical_difference(4, 14), 2) == 1.25


def test_friedman_statistic_of_demsar_example():
    chi2 = friedman_from_ranks(DEMSAR_AVERAGE_RANKS, 14)
    assert chi2 == pytest.approx(9.28, abs=0.01)
    assert iman_davenport(chi2, 4, 14) == pytest.approx(3.69, abs=0.01)


def test_rank_test_on_a_table_without_ties_matches_the_formula():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 4))
    result = rank_test(scores, higher_is_better=True)
    ranks = np.argsort(np.argsort(-scores, axis=1), axis=1) + 1  # 1 = highest score
    assert result.average_ranks == pytest.approx(ranks.mean(axis=0).tolist())
    assert result.friedman_statistic == pytest.approx(friedman_from_ranks(result.average_ranks, 6))
    assert result.friedman_p == pytest.approx(stats.friedmanchisquare(*scores.T).pvalue)
    assert result.critical_difference == pytest.approx(critical_difference(4, 6))
    lower = rank_test(scores, higher_is_better=False)
    assert lower.average_ranks == pytest.approx((5 - ranks.mean(axis=0)).tolist())
    two = rank_test(scores[:, :2])
    assert math.isnan(two.friedman_statistic) and two.critical_difference > 0


def test_cliques_join_methods_closer_than_cd():
    # Demšar's example: sorted ranks 1.964, 2.000, 2.893, 3.143. At α = 0.05 (CD 1.25) the best
    # and worst differ by 1.179 < CD: one clique, no conclusion (as the paper says). At α = 0.10
    # (CD 1.12) C4.5+m+cf is better than C4.5 (1.179 > 1.12): cliques 1st-3rd and 3rd-4th.
    assert cliques(DEMSAR_AVERAGE_RANKS, 1.25) == [(0, 3)]
    assert round(critical_difference(4, 14, alpha=0.10), 2) == 1.12
    assert cliques(DEMSAR_AVERAGE_RANKS, critical_difference(4, 14, alpha=0.10)) == [(0, 2), (2, 3)]
    assert cliques([1.0, 2.0, 3.0], 0.5) == []
    assert cliques([1.0, 1.2, 3.0], 0.5) == [(0, 1)]


def test_sign_flip_seeds_needed():
    # 2 · 0.5^5 = 0.0625 is not below 0.05, 2 · 0.5^6 = 0.03125 is.
    assert sign_flip_seeds_needed() == 6
    assert sign_flip_seeds_needed(0.01) == 8  # 2 · 0.5^7 = 0.0156, 2 · 0.5^8 = 0.0078
