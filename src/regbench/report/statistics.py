"""Statistics for comparing trained models: pure functions, no file I/O (the report does that).

- Paired comparison of one metric over same-seed pairs: mean difference, t-interval, paired t-test
  (``scipy.stats.ttest_rel``), Holm–Bonferroni adjustment over a family of tests, and
  Bonferroni-width intervals for the same family (Dunn 1961: level 1 − α/m).
- Probability of improvement (Agarwal et al. 2021, "Deep RL at the edge of the statistical
  precipice"): P(X > Y) over all run pairs, ties counting half.
- Equivalence within a margin ±Δ: two one-sided paired t-tests (TOST; Schuirmann 1987, "A
  comparison of the two one-sided tests procedure and the power approach for assessing the
  equivalence of average bioavailability", J. Pharmacokinet. Biopharm. 15; notes §9.1).
- Seeds needed to detect a difference: the paired t-test's power from the noncentral t
  distribution (``scipy.stats.nct``), solved for the smallest number of pairs.
- McNemar's exact test on paired predictions of one test set (``scipy.stats.binomtest``).
- Ranks across data sets: Friedman test and Nemenyi's critical difference (Demšar 2006, JMLR 7).

The module is named ``statistics`` but lives inside the ``regbench`` package, so it never shadows
the standard library's ``statistics`` (absolute imports: ``import statistics`` is still stdlib's).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from regbench.evaluation import LEVEL

ALPHA = 0.05
# The conventional power a study is sized for (Cohen 1988, "Statistical Power Analysis for the
# Behavioral Sciences": .80 when no other basis exists).
POWER = 0.8
# Seeds needed beyond this are reported as "more than 1000": the difference is then negligible
# next to its seed-to-seed spread (below 0.089 of a standard deviation at α = 0.05, power 0.8).
SEEDS_CAP = 1000
# Pairs with which a t-test runs but has little power: 1 or 2 degrees of freedom, where |t| must
# exceed 12.71 or 4.30 at α = 0.05; a true difference of one standard deviation of the paired
# differences is detected with probability 0.09 or 0.18 (paired_t_power).
LOW_POWER_PAIRS = (2, 3)
# A bootstrap that resamples this many seeds or fewer is coarse (notes §9.3: "with few seeds
# (S <= 5) the level-1 resampling is coarse"): S seeds have few distinct resamples, and the
# percentile interval of their mean is narrower than the t-interval, so it understates the
# spread between seeds. The verdicts say so.
FEW_BOOTSTRAP_SEEDS = 5

HIGHER = "higher"
LOWER = "lower"
INDISTINGUISHABLE = "indistinguishable"
TOO_FEW_SEEDS = "too few seeds"
T_TEST = "paired t-test"
ZERO_VARIANCE_TEST = "sign-flip (zero variance)"

# Differences whose standard deviation is this small relative to the values compared are treated
# as exactly constant: accuracies k/n computed in floating point differ in the last bits even
# when every seed gains the same number of test examples, and scipy then reports a t of 1e15.
ZERO_SD_RELATIVE = 1e-10


# --- one paired comparison ----------------------------------------------------------------------

@dataclass
class PairedComparison:
    """Group minus baseline over same-seed pairs for one metric."""

    n_pairs: int
    mean_diff: float      # mean over pairs of (group - baseline); NaN without pairs
    sd_diff: float        # sample standard deviation of the differences; NaN with < 2 pairs
    ci_low: float         # the t-interval of the mean difference; NaN with < 2 pairs
    ci_high: float
    p_value: float        # two-sided; NaN when no test was possible
    test: str             # which test gave p_value ("paired t-test", "sign-flip (zero variance)", "")


def paired_comparison(group: Sequence[float], baseline: Sequence[float],
                      level: float = LEVEL) -> PairedComparison:
    """``group[i]`` and ``baseline[i]`` are the same seed's results (the caller pairs them).

    Special cases, decided here once:
    - fewer than 2 pairs: no variance, so no test and no interval (p NaN; the verdict says why);
    - every difference exactly 0 (identical results): mean 0, interval [0, 0], p = 1;
    - every difference the same nonzero d (zero variance): the t statistic is infinite and scipy
      says p = 0, which would call two seeds "significant". Instead the p-value is the exact
      sign-flip randomization test's, 2 · 0.5^n: of the 2^n sign patterns only the observed one
      and its mirror reach |mean| = |d|; its interval is ``with_interval``'s.
    ``level``: of the interval (``bonferroni_level`` for one of several comparisons).
    """
    x = np.asarray(group, dtype=float)
    y = np.asarray(baseline, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values differ in length: {x.shape} vs {y.shape}")
    n = len(x)
    diff = x - y
    mean = float(diff.mean()) if n else math.nan
    if n < 2:
        return PairedComparison(n, mean, math.nan, math.nan, math.nan, math.nan, "")
    sd = float(diff.std(ddof=1))
    scale = max(float(np.abs(np.concatenate([x, y])).max()), np.finfo(float).tiny)
    if sd <= ZERO_SD_RELATIVE * scale:
        if mean == 0.0 or abs(mean) <= ZERO_SD_RELATIVE * scale:
            return PairedComparison(n, 0.0, 0.0, 0.0, 0.0, 1.0, "identical")
        constant = PairedComparison(n, mean, 0.0, math.nan, math.nan, sign_flip_p_value(n),
                                    ZERO_VARIANCE_TEST)
        return with_interval(constant, level)
    result = stats.ttest_rel(x, y)
    paired = PairedComparison(n, mean, sd, math.nan, math.nan, float(result.pvalue), T_TEST)
    return with_interval(paired, level)


def with_interval(paired: PairedComparison, level: float) -> PairedComparison:
    """``paired`` with its ``level`` interval of the mean difference.

    - t-test: mean ± t_{(1+level)/2, n-1} · sd / sqrt(n).
    - identical results: [0, 0].
    - constant nonzero difference d: the interval that inverts the sign-flip test. Every shift
      other than d leaves n equal differences, whose sign-flip p is 2 · 0.5^n; the shift d leaves
      zeros (p = 1). So the interval is [d, d] when 2 · 0.5^n < 1 − level, else every difference is
      accepted and there is no finite interval (NaN): 3 equal gains are not evidence of that gain.
    """
    if paired.n_pairs < 2 or paired.test == "":
        return paired
    if paired.test == "identical":
        return dataclasses.replace(paired, ci_low=0.0, ci_high=0.0)
    if paired.test == ZERO_VARIANCE_TEST:
        bounded = sign_flip_p_value(paired.n_pairs) < 1 - level
        end = paired.mean_diff if bounded else math.nan
        return dataclasses.replace(paired, ci_low=end, ci_high=end)
    low, high = stats.t.interval(level, paired.n_pairs - 1, loc=paired.mean_diff,
                                 scale=paired.sd_diff / math.sqrt(paired.n_pairs))
    return dataclasses.replace(paired, ci_low=float(low), ci_high=float(high))


def bonferroni_level(tests: int, alpha: float = ALPHA) -> float:
    """The level of each of ``tests`` intervals that hold together with probability 1 − α
    (Bonferroni; Dunn 1961, "Multiple comparisons among means", JASA 56): 1 − α/m. An interval
    that excludes 0 at this level means p < α/m, which Holm's adjusted p then also puts below α,
    so an "indistinguishable" verdict never comes with an interval that excludes 0."""
    return 1 - alpha / max(tests, 1)


def sign_flip_p_value(n_pairs: int) -> float:
    """Two-sided exact randomization p-value when all n differences are equal and nonzero."""
    return min(1.0, 2.0 * 0.5 ** n_pairs)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order; NaN entries (no test) stay NaN and
    do not count as tests. Written out (a few lines) rather than importing statsmodels'
    ``multipletests`` for it, which would bring statsmodels and pandas into the install.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) · p_(j)); rejecting where adjusted < α is Holm's step-down procedure."""
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(tested, key=lambda i: p_values[i])
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(comparison: PairedComparison, p_adjusted: float, alpha: float = ALPHA) -> str:
    """``higher``/``lower`` (group vs baseline) when the adjusted p is below alpha."""
    if comparison.n_pairs < 2 or math.isnan(p_adjusted):
        return TOO_FEW_SEEDS
    if p_adjusted < alpha and comparison.mean_diff != 0:
        return HIGHER if comparison.mean_diff > 0 else LOWER
    return INDISTINGUISHABLE


# --- equivalence within a margin (TOST) ---------------------------------------------------------

EQUIVALENT = "equivalent"
NOT_SHOWN_EQUIVALENT = "not shown equivalent"
DIFFERENT = "different"


@dataclass
class Equivalence:
    """Whether group − baseline lies within ±margin, over same-seed pairs of one metric."""

    margin: float
    n_pairs: int
    mean_diff: float  # NaN without pairs
    level: float      # of the interval: 1 − 2α (90 % at α = 0.05), the interval TOST inverts
    ci_low: float     # NaN with < 2 pairs, or from equal pairs too few to bound it
    ci_high: float
    p_lower: float    # one-sided p of H0 mean <= −margin (alternative: greater); NaN: no test
    p_upper: float    # one-sided p of H0 mean >= +margin (alternative: less)
    p_value: float    # TOST: max(p_lower, p_upper)
    test: str         # T_TEST, ZERO_VARIANCE_TEST or "" (no test)
    p_holm: float = math.nan  # p_value after Holm's adjustment over a family (the caller's)
    verdict: str = TOO_FEW_SEEDS


def equivalence(group: Sequence[float], baseline: Sequence[float], margin: float,
                alpha: float = ALPHA, level: Optional[float] = None) -> Equivalence:
    """TOST of the paired differences d = group − baseline against ±``margin`` (> 0).

    p_lower: ``ttest_1samp(d, -margin, alternative="greater")``, p_upper: ``ttest_1samp(d,
    margin, alternative="less")``; the TOST p is the larger. Equivalence at α (p < α) is the same
    decision as the (1 − 2α) t-interval d̄ ± t_{1−α, n−1}·s/√n lying inside (−margin, +margin).
    ``level``: of that interval, 1 − 2α unless the caller widens it for a family (Bonferroni).

    Zero-variance differences: scipy says p = 0 for equal differences on the far side of a bound
    (2 equal pairs would be "equivalent") and NaN when they sit on it, so equal differences d get
    the exact one-sided sign-flip p instead, as paired_comparison does for the two-sided test:
    0.5^n when d is on the alternative's side of the bound (only the observed sign pattern
    reaches it), else 1; the interval is with_interval's, which inverts the same test ([d, d]
    when 0.5^n < α, else none: it is what these p-values accept). Identical results (d = 0) are
    such a case. Fewer than 2 pairs: no test (NaN), verdict "too few seeds".
    The verdict is equivalence_verdict's on this one comparison's p-values (no family).
    """
    level = 1 - 2 * alpha if level is None else level
    paired = paired_comparison(group, baseline, level)
    if paired.test == "":
        return Equivalence(margin, paired.n_pairs, paired.mean_diff, level, math.nan, math.nan,
                           math.nan, math.nan, math.nan, "")
    if paired.test == T_TEST:
        differences = np.asarray(group, dtype=float) - np.asarray(baseline, dtype=float)
        p_lower = stats.ttest_1samp(differences, -margin, alternative="greater").pvalue
        p_upper = stats.ttest_1samp(differences, margin, alternative="less").pvalue
    else:
        # One-sided sign-flip: half of sign_flip_p_value's two mirrored patterns.
        one_sided = 0.5 ** paired.n_pairs
        p_lower = one_sided if paired.mean_diff > -margin else 1.0
        p_upper = one_sided if paired.mean_diff < margin else 1.0
        constant = dataclasses.replace(paired, test=ZERO_VARIANCE_TEST)
        paired = with_interval(constant, level)
    p_value = max(float(p_lower), float(p_upper))
    result = Equivalence(margin, paired.n_pairs, paired.mean_diff, level, paired.ci_low,
                         paired.ci_high, float(p_lower), float(p_upper), p_value, paired.test,
                         p_holm=p_value)
    result.verdict = equivalence_verdict(result.n_pairs, p_value, paired.p_value, alpha)
    return result


def equivalence_verdict(n_pairs: int, tost_p: float, difference_p: float,
                        alpha: float = ALPHA) -> str:
    """The rule: "equivalent" (within the margin) when the TOST p is below α; otherwise
    "different" when the two-sided paired test of a zero difference has p below α (a difference
    is shown, and not shown to be small); otherwise "not shown equivalent". "too few seeds" with
    fewer than 2 pairs. ``tost_p`` and ``difference_p``: adjusted ones for a family."""
    if n_pairs < 2 or math.isnan(tost_p):
        return TOO_FEW_SEEDS
    if tost_p < alpha:
        return EQUIVALENT
    return DIFFERENT if difference_p < alpha else NOT_SHOWN_EQUIVALENT


def probability_of_improvement(group: Sequence[float], baseline: Sequence[float]) -> float:
    """P(a group run's value > a baseline run's value) over all (group run, baseline run) pairs,
    ties counting half (Agarwal et al. 2021; for two samples it is the Mann–Whitney U / (n·m)).
    "Higher" for every metric: for NLL or ECE, a value near 0 means the group is lower (better).
    NaN when either side has no runs."""
    x = np.asarray(group, dtype=float)[:, None]
    y = np.asarray(baseline, dtype=float)[None, :]
    if x.size == 0 or y.size == 0:
        return math.nan
    return float(((x > y) + 0.5 * (x == y)).mean())


def paired_t_power(pairs: np.ndarray, effect: float, alpha: float = ALPHA) -> np.ndarray:
    """Power of the two-sided paired t-test at level ``alpha`` with ``pairs`` pairs (an array)
    when the true mean difference is ``effect`` standard deviations of the differences:
    P(|T'| > t_{1-α/2, n-1}) with T' noncentral t, n − 1 degrees of freedom, noncentrality
    effect · sqrt(n) (as statsmodels' ``ttest_power``; notes §9.4). The lower tail's NaN that
    scipy's nct gives far from its centre (notes §9.4) is a probability of 0."""
    n = np.asarray(pairs, dtype=float)
    df, noncentrality = n - 1, abs(effect) * np.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    upper = np.nan_to_num(stats.nct.sf(critical, df, noncentrality), nan=1.0)
    lower = np.nan_to_num(stats.nct.cdf(-critical, df, noncentrality), nan=0.0)
    return upper + lower


def seeds_needed(mean_diff: float, sd_diff: float, pairs_run: int = 2, alpha: float = ALPHA,
                 power: float = POWER, cap: int = SEEDS_CAP) -> Optional[int]:
    """The fewest pairs (seeds) with which a two-sided paired t-test at level ``alpha`` detects
    ``mean_diff`` with probability ``power``, if the paired differences have standard deviation
    ``sd_diff`` (the noncentral t's power, ``paired_t_power``, over every n up to ``cap``). Never
    fewer than ``pairs_run``: those already ran. ``cap + 1`` means "more than cap". None when the
    difference is 0 or unknown (no number of seeds detects no difference)."""
    if not (math.isfinite(mean_diff) and math.isfinite(sd_diff)) or mean_diff == 0 or sd_diff <= 0:
        return None
    first = max(2, pairs_run)
    if first > cap:
        return first
    pairs = np.arange(first, cap + 1)
    enough = paired_t_power(pairs, mean_diff / sd_diff, alpha) >= power
    return int(pairs[np.argmax(enough)]) if enough.any() else cap + 1


def sign_flip_seeds_needed(alpha: float = ALPHA, pairs_run: int = 2) -> int:
    """When every pair differs by the same amount, the sign-flip p is 2 · 0.5^n: the smallest n
    with p < alpha (6 at alpha = 0.05), never fewer than ``pairs_run``."""
    return max(pairs_run, math.floor(1 + math.log2(1 / alpha)) + 1)


def critical_t(pairs: int, alpha: float = ALPHA) -> float:
    """|t| a paired t-test with ``pairs`` pairs must exceed: t_{1-α/2, n-1} (12.71 for 2 pairs)."""
    return float(stats.t.ppf(1 - alpha / 2, pairs - 1))


# --- McNemar's test on one test set ---------------------------------------------------------

@dataclass
class McNemar:
    """McNemar's exact test (McNemar 1947) of two models' paired predictions on one test set."""

    group_only: int     # b: examples the group gets right and the baseline wrong
    baseline_only: int  # c: the reverse
    p_value: float


def mcnemar(group_correct: np.ndarray, baseline_correct: np.ndarray) -> McNemar:
    """The exact (binomial) McNemar test, statsmodels' default (notes §9.2): under the null each
    discordant example is equally likely to favour either model, so min(b, c) ~ Binomial(b + c,
    1/2) and p = min(1, 2 · P(X <= min(b, c))); concordant examples do not count. scipy's
    two-sided ``binomtest`` at 1/2 is that p (statsmodels is not a dependency); p = 1 without
    discordant examples."""
    group_correct = np.asarray(group_correct, dtype=bool)
    baseline_correct = np.asarray(baseline_correct, dtype=bool)
    b = int((group_correct & ~baseline_correct).sum())
    c = int((~group_correct & baseline_correct).sum())
    p = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    return McNemar(b, c, float(p))


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap replicates (``np.percentile``, linear)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


# --- ranks across data sets (Demšar 2006) --------------------------------------------------------

@dataclass
class RankTest:
    average_ranks: list[float]  # per method, rank 1 = best
    n_blocks: int               # N: data sets (blocks)
    n_methods: int              # k
    friedman_statistic: float   # χ²_F (scipy's, with its tie correction); NaN with k < 3
    friedman_p: float
    iman_davenport: float       # F_F = (N-1)χ²_F / (N(k-1) - χ²_F), Demšar's preferred statistic
    critical_difference: float  # Nemenyi's CD at alpha


def block_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks within each row (block), 1 = best, ties get the average of their ranks."""
    scores = np.asarray(scores, dtype=float)
    return stats.rankdata(-scores if higher_is_better else scores, axis=1)


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Demšar's q_α: the studentized range quantile for k means and infinite degrees of
    freedom, divided by sqrt(2) (2.343, 2.569, 2.728 for k = 3, 4, 5 at α = 0.05)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Nemenyi's CD = q_α · sqrt(k(k+1) / (6N)): average ranks further apart differ at level α."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_blocks))


def iman_davenport(chi2: float, k: int, n_blocks: int) -> float:
    """F_F = (N−1)χ²_F / (N(k−1) − χ²_F), F-distributed with k−1 and (k−1)(N−1) df."""
    denominator = n_blocks * (k - 1) - chi2
    return (n_blocks - 1) * chi2 / denominator if denominator > 0 else math.inf


def rank_test(scores: np.ndarray, higher_is_better: bool = True, alpha: float = ALPHA) -> RankTest:
    """``scores[block, method]``: one number per data set (block) and method."""
    scores = np.asarray(scores, dtype=float)
    n_blocks, k = scores.shape
    average = block_ranks(scores, higher_is_better).mean(axis=0)
    chi2 = p = f_f = math.nan
    if k >= 3:  # scipy's friedmanchisquare refuses fewer than 3 methods
        result = stats.friedmanchisquare(*scores.T)
        chi2, p = float(result.statistic), float(result.pvalue)
        f_f = iman_davenport(chi2, k, n_blocks)
    cd = critical_difference(k, n_blocks, alpha) if k >= 2 else math.nan
    return RankTest(list(map(float, average)), n_blocks, k, chi2, p, f_f, cd)


def cliques(average_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs of methods (by sorted average rank) whose extreme ranks differ by less than
    CD: the bars of a critical-difference diagram. Pairs (first, last) of indices into the
    rank-sorted order; runs of one method are left out."""
    ranks = sorted(average_ranks)
    runs = []
    for first in range(len(ranks)):
        last = first
        while last + 1 < len(ranks) and ranks[last + 1] - ranks[first] < cd:
            last += 1
        if last > first and not any(a <= first and last <= b for a, b in runs):
            runs.append((first, last))
    return runs
