"""Verdicts with the test split's own noise (report/split_noise.py): the resampled metrics against
ensembles.py's index bootstrap, the crossed two-level bootstrap against hand variances (the test
split's noise does not shrink with more seeds; the same examples for both groups), McNemar through
a report, and runs without test logits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sweep_folders import fake_sweep, read_comparisons, row_for

from regbench.report.analysis import analyse
from regbench.report.command import make_report
from regbench.report.comparisons import comparison_rows
from regbench.report.duplicates import merge_duplicates
from regbench.report.ensembles import example_terms
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_sweeps
from regbench.report.split_noise import (
    BOOTSTRAP_REPLICATES,
    EXAMPLE_BATCH,
    example_counts,
    resampled_metrics,
)
from regbench.report.tables import comparison_section
from regbench.run.spec import TEST_ACC, TEST_ECE, TEST_LOGITS_FILE, TEST_NLL

CLASSES = 3


def terms_of(logits: np.ndarray, labels: np.ndarray):
    log_probabilities = torch.from_numpy(logits).double().log_softmax(dim=1)
    label_tensor = torch.from_numpy(labels)
    nll = -log_probabilities.gather(1, label_tensor[:, None]).squeeze(1)
    return example_terms(log_probabilities.exp(), nll, label_tensor)


def logits_for(correct: np.ndarray, labels: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    """Logits whose argmax is the label where ``correct``, the next class elsewhere, with top
    probability ``confidence``."""
    predicted = np.where(correct, labels, (labels + 1) % CLASSES)
    probabilities = np.full((len(labels), CLASSES), (1 - confidence) / (CLASSES - 1))
    probabilities[np.arange(len(labels)), predicted] = confidence
    return np.log(probabilities).astype(np.float32)


def sweep_with_predictions(
    tmp_path: Path, runs: list[tuple[str, int, np.ndarray]], labels: np.ndarray
) -> Path:
    """A fake sweep whose job i has runs[i]'s correct/incorrect predictions as test_logits.npz
    and the matching test/acc, test/nll and test/ece in metrics.json."""
    logits = [logits_for(correct, labels) for _, _, correct in runs]
    everything = np.arange(len(labels))[None]
    metrics = [
        dict(
            zip(
                ("test/acc", "test/nll", "test/ece"),
                terms_of(one, labels).metrics(everything)[:3, 0].tolist(),
            )
        )
        for one in logits
    ]
    sweep = fake_sweep(
        tmp_path / "sweep",
        [(regularizer, seed, values) for (regularizer, seed, _), values in zip(runs, metrics)],
    )
    for number, one in enumerate(logits):
        np.savez(sweep / str(number) / TEST_LOGITS_FILE, logits=one, labels=labels.astype(np.int64))
    return sweep


def verdicts_of(folder: Path) -> tuple[list[dict], str]:
    """comparisons.csv's rows and summary.md's verdict section, without drawing any figure."""
    jobs = merge_duplicates(load_sweeps([folder]))
    analysis = analyse(jobs, group_jobs(jobs))
    rows = [
        {key: "" if value == "" else str(value) for key, value in row.items()}
        for row in comparison_rows(analysis.comparisons)
    ]
    return rows, "\n\n".join(comparison_section(analysis))


# --- the resampled metrics ---------------------------------------------------------------------------


def test_resampled_metrics_equal_the_index_bootstrap_of_ensembles():
    # The same draws as ensembles.percentile_bootstrap's (default_rng(0).integers in batches):
    # counts @ terms must give ExampleTerms.metrics of the drawn indices, ECE bins included.
    rng = np.random.default_rng(5)
    labels = rng.integers(0, CLASSES, 300)
    runs = [terms_of(rng.normal(size=(300, CLASSES)) * 3, labels) for _ in range(2)]
    replicates = 2 * EXAMPLE_BATCH + 10
    found = resampled_metrics(runs, replicates=replicates, seed=0)
    draws = np.random.default_rng(0)
    index = np.concatenate(
        [
            draws.integers(0, 300, (min(EXAMPLE_BATCH, replicates - start), 300))
            for start in range(0, replicates, EXAMPLE_BATCH)
        ]
    )
    for run, terms in enumerate(runs):
        accuracy, nll, ece, _ = terms.metrics(index)
        assert found[run][TEST_ACC] == pytest.approx(accuracy, abs=1e-12)  # integers: exact
        # Sums in float32: about 1e-7 of their size.
        assert found[run][TEST_NLL] == pytest.approx(nll, rel=1e-6)
        assert found[run][TEST_ECE] == pytest.approx(ece, rel=1e-6, abs=1e-9)


def test_example_counts_draw_every_example_n_times_in_all():
    counts = example_counts(np.random.default_rng(0), 40, 1000)
    assert counts.shape == (1000, 40) and (counts.sum(axis=1) == 40).all()
    assert counts.mean() == pytest.approx(1.0) and counts.var() == pytest.approx(
        1 - 1 / 40, abs=0.02
    )


# --- the two-level bootstrap through a report ------------------------------------------------------


def test_a_seed_consistent_gain_within_the_test_splits_noise_is_indistinguishable(tmp_path):
    # 3 seeds on 50 test examples: the group gets 2, 3 and 2 more of the same few examples right
    # (+4, +6, +4 pp): the seed-paired t-test calls it higher (p = 0.020), but with only 50 test
    # examples the bootstrap over seeds and examples finds it within the split's noise.
    labels = np.arange(50) % CLASSES
    base = np.arange(50) >= 10  # 40 of 50 right
    gains = (2, 3, 2)
    runs = [("none", seed, base) for seed in range(3)]
    runs += [
        ("label_smoothing", seed, base | (np.arange(50) < gain)) for seed, gain in enumerate(gains)
    ]
    folder = sweep_with_predictions(tmp_path, runs, labels)
    text = make_report(folder)
    row = row_for(read_comparisons(folder), "label_smoothing", "test/acc")
    assert row["verdict"] == "higher" and float(row["p_holm"]) == pytest.approx(0.0198, abs=1e-4)
    assert (row["boot_pairs"], row["boot_verdict"]) == ("3", "indistinguishable")
    assert float(row["boot_ci_low"]) <= 0 < float(row["boot_ci_high"])
    assert row["mcnemar_p"] == ""  # 3 pairs: McNemar is for one seed pair
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("- label_smoothing vs none: test accuracy")
    )
    assert "higher, better (3 pairs: a t-test with 2 degrees of freedom has little power" in line
    assert (
        "; seeds and test examples resampled: [" in line
        and "pp, indistinguishable (3 seed pairs" in line
    )
    assert "**Seeds and test examples resampled**" in text and "Owen 2007" in text


def test_the_test_splits_noise_does_not_shrink_with_more_seeds(tmp_path):
    # Every seed pair has the same per-example differences d_i (+1 on 40, -1 on 20 of 400): the
    # seeds agree, the only noise is the test split's, shared by every seed. The bootstrap's spread
    # must be that of one test split, sd = sqrt(var(d) / N), for 1 pair as for 4 (an independent
    # resample per seed would shrink it by sqrt(4)).
    labels = np.arange(400) % CLASSES
    base = np.arange(400) >= 100
    group = base.copy()
    group[:40], group[100:120] = True, False
    d = group.astype(float) - base
    expected_sd = math.sqrt(d.var() / 400)
    widths = {}
    for seeds in (1, 4):
        runs = [
            (reg, seed, predictions)
            for reg, predictions in (("none", base), ("dropout", group))
            for seed in range(seeds)
        ]
        folder = sweep_with_predictions(tmp_path / str(seeds), runs, labels)
        row = row_for(verdicts_of(folder)[0], "dropout", "test/acc")
        widths[seeds] = float(row["boot_ci_high"]) - float(row["boot_ci_low"])
        assert row["boot_pairs"] == str(seeds)
        # A 95 % percentile interval spans about 2 · 1.96 sd (2000 replicates: a few % off).
        assert widths[seeds] == pytest.approx(2 * 1.96 * expected_sd, rel=0.1)
    assert widths[4] == pytest.approx(widths[1], rel=0.05)


def test_identical_predictions_give_a_zero_width_interval_the_same_examples_for_both(tmp_path):
    # Both groups predict the same: every replicate resamples the same examples for both, so every
    # difference is exactly 0 (unpaired resampling would give an interval of a few pp).
    labels = np.arange(200) % CLASSES
    predictions = np.arange(200) % 7 != 0
    runs = [(reg, seed, predictions) for reg in ("none", "dropout") for seed in range(2)]
    rows, _ = verdicts_of(sweep_with_predictions(tmp_path, runs, labels))
    for metric in ("test/acc", "test/nll", "test/ece"):
        row = row_for(rows, "dropout", metric)
        assert (float(row["boot_ci_low"]), float(row["boot_ci_high"])) == (0.0, 0.0), metric
        assert row["boot_verdict"] == "indistinguishable"


# --- one seed: McNemar --------------------------------------------------------------------------------


def test_a_single_seed_comparison_gets_mcnemar_and_the_example_bootstrap(tmp_path):
    # One seed each on 300 examples: the group alone right on 30, the baseline alone on 12.
    # McNemar: 2 · P(Binomial(42, 1/2) <= 12) = 0.0079 by hand.
    labels = np.arange(300) % CLASSES
    base = np.arange(300) >= 60
    group = base.copy()
    group[:30], group[60:72] = True, False
    folder = sweep_with_predictions(tmp_path, [("none", 0, base), ("dropout", 0, group)], labels)
    rows, text = verdicts_of(folder)
    row = row_for(rows, "dropout", "test/acc")
    hand = 2 * sum(math.comb(42, k) for k in range(13)) / 2**42
    assert row["verdict"] == "too few seeds" and row["n_pairs"] == "1"
    assert (row["mcnemar_group_only"], row["mcnemar_baseline_only"]) == ("30", "12")
    assert float(row["mcnemar_p"]) == pytest.approx(hand, rel=1e-9) and round(hand, 4) == 0.0079
    assert float(row["mcnemar_p_holm"]) == pytest.approx(hand, rel=1e-9)
    assert row["mcnemar_verdict"] == "higher" and row["boot_pairs"] == "1"
    assert float(row["boot_ci_low"]) > 0  # +6 pp on 300 examples: beyond the split's noise
    line = next(
        line for line in text.splitlines() if line.startswith("- dropout vs none: test accuracy")
    )
    assert line.startswith(
        "- dropout vs none: test accuracy +6.00 pp (1 pair): too few seeds for a test; "
        "test examples resampled: ["
    )
    assert (
        "; McNemar on the 300 test examples: 30 right only in dropout, 12 only in none, "
        "p_holm = 0.0079, higher, better"
    ) in line
    assert "**McNemar** (one seed pair, test accuracy)" in text
    # NLL has no McNemar test, only the example bootstrap.
    assert row_for(rows, "dropout", "test/ece")["mcnemar_p"] == ""


def test_runs_without_test_logits_are_left_out_with_a_note(tmp_path):
    labels = np.arange(60) % CLASSES
    runs = [
        (reg, seed, np.arange(60) >= 10 + seed) for reg in ("none", "dropout") for seed in range(3)
    ]
    folder = sweep_with_predictions(tmp_path, runs, labels)
    (folder / "4" / TEST_LOGITS_FILE).unlink()  # dropout, seed 1
    rows, text = verdicts_of(folder)
    row = row_for(rows, "dropout", "test/acc")
    assert row["n_pairs"] == "3" and row["boot_pairs"] == "2"
    assert f"(2 of 3 pairs: {folder / '4' / TEST_LOGITS_FILE} is missing" in text
    assert (
        "Verdicts with the test split's noise leave out 1 of 6 compared runs without a usable "
        f"{TEST_LOGITS_FILE}"
    ) in text
    # A sweep whose runs kept no test logits has none of it, and no paragraph about it.
    for number in range(6):
        (folder / str(number) / TEST_LOGITS_FILE).unlink(missing_ok=True)
    rows, text = verdicts_of(folder)
    assert row_for(rows, "dropout", "test/acc")["boot_pairs"] == ""
    assert "**Seeds and test examples resampled**" not in text
    assert (
        "No verdict with the test split's noise: none of the 6 compared runs has a usable "
        f"{TEST_LOGITS_FILE}"
    ) in text


def test_replicates_follow_the_notes():
    assert BOOTSTRAP_REPLICATES >= 2000  # notes §9.3
