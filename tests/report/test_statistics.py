"""regbench.report.statistics against hand calculations, scipy and Demšar 2006's worked example."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest
from scipy import stats

from regbench.report.statistics import (
    INDISTINGUISHABLE,
    TOO_FEW_SEEDS,
    cliques,
    critical_difference,
    holm,
    iman_davenport,
    nemenyi_q,
    paired_comparison,
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
    assert result.ci_low == result.ci_high == result.mean_diff
    assert verdict(result, result.p_value) == INDISTINGUISHABLE
    six = paired_comparison([1.0] * 6, [0.0] * 6)
    assert six.p_value == 2 / 64 and verdict(six, six.p_value) == "higher"


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


def test_seeds_needed_against_hand_calculation():
    # z_0.975 + z_0.8 = 1.959964 + 0.841621 = 2.801585; (2.801585 · 0.01 / 0.005)² = 31.39 -> 32.
    assert seeds_needed(0.005, 0.01) == 32
    assert seeds_needed(-0.005, 0.01) == 32
    assert seeds_needed(0.01, 0.01) == 8  # 7.85 rounded up
    assert seeds_needed(1.0, 0.01) == 2   # a test needs at least 2 pairs
    assert seeds_needed(0.0, 0.01) is None and seeds_needed(math.nan, 0.01) is None


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
