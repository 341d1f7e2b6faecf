"""Verdicts that include the test split's own noise, from every run's test_logits.npz
(``spec.TEST_LOGITS_FILE``, read as report/ensembles.py reads it).

The seed-paired t-test (comparisons.py) sees each run's test metric as exact; on a small test split
the sampling noise of the split itself can be ten times the spread over seeds. Two verdicts add it,
for test accuracy, NLL and ECE (the metrics test_logits.npz determines):

- **Paired two-level bootstrap over seeds and test examples** (notes §9.3; Bouthillier et al.
  2021, "Accounting for variance in machine learning benchmarks": randomize every source of
  variance). Each of ``BOOTSTRAP_REPLICATES`` replicates draws the S seed pairs with replacement
  and ONE resample of the N test examples, used for both groups and for every drawn seed. The
  test split is one sample that every run shares, so its noise does not average out over seeds:
  resampling it independently per seed would shrink that noise by S. Seeds and examples are
  crossed, not nested, and resampling the rows and the columns separately is Owen's (2007, Ann.
  Appl. Stat. 1(2), "The pigeonhole bootstrap") bootstrap for crossed random effects, whose
  variance is mildly conservative. Replicate value: the mean over the drawn pairs of
  metric(group run) − metric(baseline run), each on the resampled examples; the interval is its
  percentile interval at the comparison's level (Bonferroni over the metric's comparisons, as the
  t-interval). With one seed pair it is the paired bootstrap over test examples only.
- **McNemar's exact test** (statistics.mcnemar) for a comparison with one seed pair, on test
  accuracy: the only test possible with one run per side, and it covers the test examples only.
  Holm's adjustment runs over the metric's comparisons that have one.

Every replicate's resampled metrics are computed once per run, as matrix products of the
replicates' example counts with the runs' per-example terms: correct and −log p(y) (means), and
for the ECE each example's correct − confidence in its bin's row of a sparse matrix (|sum per bin|
/ N, the runs' 15 bins, as ensembles.ExampleTerms). Written with numpy and scipy.sparse rather
than ``scipy.stats.bootstrap``, which resamples one sample (or several independently), not the
same examples for many runs at once with seeds resampled on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from scipy import sparse

from regbench.evaluation.calibration_errors import CALIBRATION_BINS
from regbench.report.comparisons import (
    Comparison,
    SplitNoise,
    pair_runs,
)
from regbench.report.ensembles import ExampleTerms, Member, example_terms, read_member
from regbench.report.jobs import Job
from regbench.report.statistics import (
    ALPHA,
    FEW_BOOTSTRAP_SEEDS,
    HIGHER,
    INDISTINGUISHABLE,
    LOWER,
    holm,
    mcnemar,
    percentile_interval,
)
from regbench.run.spec import TEST_ACC, TEST_ECE, TEST_LOGITS_FILE, TEST_NLL

# Notes §9.3: B >= 2,000 replicates for a percentile interval (a 95 % interval's tails then hold
# 50 replicates each; a Bonferroni level over 4 comparisons still 12).
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same sweep gives the same intervals
# Replicates whose example counts are held at once: 250 x N float32 (10 MB for N = 10,000).
EXAMPLE_BATCH = 250
NOISE_METRICS = (TEST_ACC, TEST_NLL, TEST_ECE)


@dataclass
class RunReplicates:
    """One run's test predictions, summarized: its test split, which examples it gets right, and
    each metric of NOISE_METRICS on every replicate's resampled examples."""

    job: Job
    split: tuple  # (examples, classes, labels' bytes): runs compared must share it
    correct: np.ndarray  # bool [N]
    replicates: dict[str, np.ndarray]  # metric -> [B]


def example_counts(rng: np.random.Generator, examples: int, size: int) -> np.ndarray:
    """[size, examples] float32: how often each example is drawn in each of ``size`` resamples
    of ``examples`` draws with replacement (the draws of ensembles.percentile_bootstrap; counts
    row by row, which stays in cache, rather than one bincount over size x examples)."""
    draws = rng.integers(0, examples, (size, examples))
    return np.stack([np.bincount(row, minlength=examples) for row in draws]).astype(np.float32)


def term_matrices(terms: Sequence[ExampleTerms]) -> tuple[np.ndarray, sparse.csr_matrix]:
    """(dense [N, 2R]: per run its correct and −log p(y) columns; sparse [bins · R, N]: per run
    its ECE gaps in their bin's row), so counts @ dense and (gaps @ counts.T).T give every run's
    resampled sums. The gaps are sparse (one bin per example): a dense product would spend 15 of
    every 17 multiplications on zeros. float32: the counts and correct are exact in it, and a sum
    of N terms is off by about 1e-7 of its size, far below the intervals' 4 decimals."""
    examples, bins = len(terms[0].correct), CALIBRATION_BINS
    dense = np.empty((examples, 2 * len(terms)), dtype=np.float32)
    dense[:, 0::2] = np.stack([one.correct for one in terms], axis=1)
    dense[:, 1::2] = np.stack([one.nll for one in terms], axis=1)
    rows = np.concatenate([run * bins + one.ece_bin for run, one in enumerate(terms)])
    columns = np.tile(np.arange(examples), len(terms))
    gaps = np.concatenate([one.ece_gap for one in terms]).astype(np.float32)
    return dense, sparse.csr_matrix((gaps, (rows, columns)), shape=(bins * len(terms), examples))


def resampled_metrics(terms: Sequence[ExampleTerms], replicates: int = BOOTSTRAP_REPLICATES,
                      seed: int = BOOTSTRAP_SEED) -> list[dict[str, np.ndarray]]:
    """Per run (all on the same test split), each NOISE_METRICS metric on every replicate's
    resampled test examples: the same resamples for every run."""
    examples, bins, runs = len(terms[0].correct), CALIBRATION_BINS, len(terms)
    dense, gaps = term_matrices(terms)
    rng = np.random.default_rng(seed)
    means, eces = [], []
    for start in range(0, replicates, EXAMPLE_BATCH):
        counts = example_counts(rng, examples, min(EXAMPLE_BATCH, replicates - start))
        means.append((counts @ dense).astype(float).reshape(len(counts), runs, 2) / examples)
        per_bin = np.asarray(gaps @ counts.T).T.astype(float).reshape(len(counts), runs, bins)
        eces.append(np.abs(per_bin).sum(axis=2) / examples)
    means, ece = np.concatenate(means), np.concatenate(eces)
    return [{TEST_ACC: means[:, run, 0], TEST_NLL: means[:, run, 1], TEST_ECE: ece[:, run]}
            for run in range(runs)]


def member_terms(member: Member) -> ExampleTerms:
    """The run's per-example terms, as ensembles.member_evaluation computes them (without the
    point metrics, which the comparisons take from metrics.json). On one torch thread: for tensors
    this small, torch's thread pool costs more than it computes (6x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log_probabilities = member.log_probabilities
        labels = torch.from_numpy(member.labels)
        nll = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
        return example_terms(log_probabilities.exp(), nll, labels)
    finally:
        torch.set_num_threads(threads)


def read_runs(jobs: Iterable[Job]) -> tuple[dict[int, RunReplicates], dict[int, str]]:
    """(the runs with usable test_logits.npz, why the others have none), keyed by id(job)."""
    found, why, by_split = {}, {}, {}
    for job in {id(job): job for job in jobs}.values():
        member, problem = read_member(job)
        if member is None:
            why[id(job)] = problem
            continue
        split = (*member.logits.shape, member.labels.tobytes())
        by_split.setdefault(split, []).append((job, member_terms(member)))
    for split, runs in by_split.items():
        metrics = resampled_metrics([terms for _, terms in runs])
        for (job, terms), replicates in zip(runs, metrics):
            found[id(job)] = RunReplicates(job, split, terms.correct.astype(bool), replicates)
    return found, why


def interval_verdict(low: float, high: float) -> str:
    return HIGHER if low > 0 else LOWER if high < 0 else INDISTINGUISHABLE


def seed_weights(pairs: int, replicates: int = BOOTSTRAP_REPLICATES,
                 seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[B, pairs]: how often each seed pair is drawn in each replicate (pairs draws)."""
    rng = np.random.default_rng([seed, pairs])
    return example_counts(rng, pairs, replicates)


def comparison_noise(c: Comparison, runs: dict[int, RunReplicates], why: dict[int, str]
                     ) -> Optional[SplitNoise]:
    """The bootstrap interval (and McNemar's test for one pair) of one comparison, or None when no
    seed pair has both runs' test logits on the same test split."""
    usable, missing = [], []
    for ours, theirs in pair_runs(c.group, c.baseline)[0]:
        first, second = runs.get(id(ours)), runs.get(id(theirs))
        if first is None or second is None:
            missing.append(why.get(id(ours if first is None else theirs), ""))
        elif first.split != second.split:
            missing.append(f"seed {ours.seed}: the two runs' test splits differ")
        else:
            usable.append((first, second))
    if not usable:
        return None
    differences = np.stack([a.replicates[c.metric] - b.replicates[c.metric] for a, b in usable],
                           axis=1)
    weights = seed_weights(len(usable))
    low, high = percentile_interval((weights * differences).sum(axis=1) / len(usable), c.ci_level)
    note = f"{len(usable)} of {len(usable) + len(missing)} pairs: {missing[0]}" if missing else ""
    test = mcnemar(usable[0][0].correct, usable[0][1].correct) \
        if c.metric == TEST_ACC and len(usable) == 1 and c.paired.n_pairs == 1 else None
    return SplitNoise(len(usable), len(usable[0][0].correct), low, high,
                      interval_verdict(low, high), note, test)


def judge_mcnemar(comparisons: Sequence[Comparison]) -> None:
    """Holm's adjustment over each metric's McNemar tests, and their verdicts."""
    for metric in dict.fromkeys(c.metric for c in comparisons):
        tested = [c for c in comparisons if c.metric == metric and c.noise and c.noise.mcnemar]
        for c, adjusted in zip(tested, holm([c.noise.mcnemar.p_value for c in tested])):
            test = c.noise.mcnemar
            c.noise.mcnemar_p_holm = adjusted
            decided = adjusted < ALPHA and test.group_only != test.baseline_only
            c.noise.mcnemar_verdict = (INDISTINGUISHABLE if not decided else
                                       HIGHER if test.group_only > test.baseline_only else LOWER)


def add_split_noise(comparisons: Sequence[Comparison]) -> list[str]:
    """Attach a SplitNoise to every comparison of test accuracy, NLL and ECE whose runs kept their
    test logits; returns a note naming the runs whose test_logits.npz could not be used."""
    wanted = [c for c in comparisons if c.metric in NOISE_METRICS and c.paired.n_pairs > 0]
    jobs = [job for c in wanted for pair in pair_runs(c.group, c.baseline)[0] for job in pair]
    runs, why = read_runs(jobs)
    for c in wanted:
        c.noise = comparison_noise(c, runs, why)
    judge_mcnemar(wanted)
    if not why:
        return []
    first = next(iter(why.values()))
    if not runs:
        return [f"No verdict with the test split's noise: none of the {len(why)} compared runs has "
                f"a usable {TEST_LOGITS_FILE} (e.g. {first})."]
    return [f"Verdicts with the test split's noise leave out {len(why)} of {len(why) + len(runs)} "
            f"compared runs without a usable {TEST_LOGITS_FILE} (e.g. {first})."]


def method_text(with_mcnemar: bool) -> str:
    """summary.md's paragraph on what these verdicts are and what each covers."""
    text = (
        "**Seeds and test examples resampled** (from each run's "
        f"{TEST_LOGITS_FILE}; test accuracy, NLL and ECE): a paired two-level bootstrap (notes "
        "§9.3, Bouthillier et al. 2021) whose "
        f"{BOOTSTRAP_REPLICATES} replicates (seed {BOOTSTRAP_SEED}) each draw the seed pairs with "
        "replacement and one resample of the test examples, the same examples for both groups and "
        "every drawn seed (the test split is one sample every run shares; seeds and examples "
        "resampled separately as in Owen 2007's pigeonhole bootstrap, mildly conservative); "
        "percentile interval at the same level as the t-interval; higher/lower when it excludes "
        "0. It covers training randomness and the test split's sampling noise: whether the "
        "difference would hold on another test set from the same distribution, where the "
        "t-test asks whether it would hold for other seeds on this test set. With one seed pair "
        f"it resamples the test examples only; with {FEW_BOOTSTRAP_SEEDS} or fewer the seed "
        "level is coarse (few distinct resamples, narrower than the t-interval), and the "
        "verdict says so.")
    if with_mcnemar:
        text += (
            " **McNemar** (one seed pair, test accuracy): the exact binomial test on the test "
            "examples one model gets right and the other wrong (scipy.stats.binomtest, as "
            "statsmodels' mcnemar(exact=True)), Holm-adjusted over the metric's single-pair "
            "comparisons. It covers the test examples only: one trained model per side, so it "
            "says nothing about another seed.")
    return text
