"""The ensemble of the seeds (report/ensembles.py) and the test_logits.npz every run writes for it:
the ensemble's metrics against a hand computation on three hand-made runs, its bootstrap against
scipy's, ensembles.csv and the summary.md section, members left out and named, and a real digits
sweep reported in a subprocess."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import FAST, read_metrics, run_cli, train_in_process
from sweep_folders import fake_sweep

from regbench.evaluation.calibration_errors import expected_calibration_error
from regbench.evaluation.metrics import brier_score
from regbench.report.command import make_report
from regbench.report.ensembles import (
    ENSEMBLE_COLUMNS,
    build_ensembles,
    example_terms,
    percentile_bootstrap,
)
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_sweeps
from regbench.run.spec import TEST_ACC, TEST_BRIER, TEST_ECE, TEST_LOGITS_FILE, TEST_NLL

# Three runs' test probabilities on four examples of three classes. No confidence lies within 0.01
# of a 15-bin edge (k/15), so float32 rounding cannot move an example to another ECE bin.
LABELS = np.array([0, 1, 2, 0])
RUN_A = np.array([[.62, .28, .10], [.20, .70, .10], [.10, .15, .75], [.30, .65, .05]])  # 3/4 right
RUN_B = np.array([[.78, .12, .10], [.50, .40, .10], [.20, .25, .55], [.40, .50, .10]])  # 2/4 right
RUN_C = np.array([[.70, .20, .10], [.25, .65, .10], [.25, .20, .55], [.85, .10, .05]])  # 4/4 right
# Their mean, by hand: every row's argmax is its label.
ENSEMBLE = np.array([[2.1 / 3, .6 / 3, .1], [.95 / 3, 1.75 / 3, .1],
                     [.55 / 3, .6 / 3, 1.85 / 3], [1.55 / 3, 1.25 / 3, .2 / 3]])
# Metrics.json values the report does not read for the ensemble (it reads the logits).
METRICS = {"test/acc": 0.5, "test/nll": 1.0, "test/ece": 0.1, "test/mean_confidence": 0.6,
           "epochs": 3, "seconds": 1.0}


def write_logits(folder: Path, probabilities: np.ndarray, labels: np.ndarray = LABELS) -> None:
    """test_logits.npz in the agreed format: logits whose softmax is ``probabilities``."""
    np.savez(folder / TEST_LOGITS_FILE, logits=np.log(probabilities).astype(np.float32),
             labels=labels.astype(np.int64))


def sweep_with(tmp_path: Path, runs: list[tuple[str, int, np.ndarray]],
               labels: dict[int, np.ndarray] | None = None) -> Path:
    """A fake sweep whose job i holds runs[i]'s probabilities (labels[i] instead of LABELS)."""
    sweep = fake_sweep(tmp_path / "sweep", [(regularizer, seed, METRICS) for regularizer, seed, _ in runs])
    for number, (_, _, probabilities) in enumerate(runs):
        write_logits(sweep / str(number), probabilities, (labels or {}).get(number, LABELS))
    return sweep


def report_of(sweep: Path, selectors=(("regularizer", "none"),)):
    grouping = group_jobs(load_sweeps([sweep]))
    return build_ensembles(grouping, list(selectors))


def ensemble_of(report, label: str):
    return next(one for one in report.ensembles if one.group.label == label)


def nll_of(probabilities: np.ndarray) -> float:
    return -float(np.mean(np.log(probabilities[np.arange(len(LABELS)), LABELS])))


def brier_of(probabilities: np.ndarray) -> float:
    return float(np.mean(((probabilities - np.eye(3)[LABELS]) ** 2).sum(axis=1)))


# --- the ensemble's metrics -------------------------------------------------------------------------

def test_the_ensemble_of_three_runs_has_the_hand_computed_accuracy_nll_ece_and_brier(tmp_path):
    sweep = sweep_with(tmp_path, [("none", 0, RUN_A), ("none", 1, RUN_B), ("none", 2, RUN_C)])
    one = ensemble_of(report_of(sweep), "none")
    metrics = one.mixture.metrics
    assert metrics[TEST_ACC] == 1.0  # every mean row's argmax is its label, though A and B err
    assert metrics[TEST_NLL] == pytest.approx(-np.mean(np.log([2.1 / 3, 1.75 / 3, 1.85 / 3, 1.55 / 3])), abs=1e-6)
    # All four right, their confidences in four different bins (10, 8, 9, 7): ECE = 1 − mean confidence.
    assert metrics[TEST_ECE] == pytest.approx(1 - np.mean([2.1 / 3, 1.75 / 3, 1.85 / 3, 1.55 / 3]), abs=1e-6)
    assert metrics[TEST_BRIER] == pytest.approx(brier_of(ENSEMBLE), abs=1e-6)
    assert one.mixture.low[TEST_NLL] <= metrics[TEST_NLL] <= one.mixture.high[TEST_NLL]


def test_the_members_mean_is_each_runs_metrics_by_hand_averaged(tmp_path):
    sweep = sweep_with(tmp_path, [("none", 0, RUN_A), ("none", 1, RUN_B), ("none", 2, RUN_C)])
    mean = ensemble_of(report_of(sweep), "none").member_mean
    assert mean[TEST_ACC] == pytest.approx((3 / 4 + 2 / 4 + 4 / 4) / 3)
    assert mean[TEST_NLL] == pytest.approx(np.mean([nll_of(run) for run in (RUN_A, RUN_B, RUN_C)]), abs=1e-6)
    # A: bin 9 holds .62 (right) and .65 (wrong): |.38 − .65|; .70 and .75 alone: .30, .25.
    # B: bin 7 holds both wrong .50s: 1.0; .78 and .55 right: .22, .45.  C: all right, own bins.
    eces = [(.27 + .30 + .25) / 4, (1.0 + .22 + .45) / 4, (.30 + .35 + .45 + .15) / 4]
    assert mean[TEST_ECE] == pytest.approx(np.mean(eces), abs=1e-6)
    assert mean[TEST_BRIER] == pytest.approx(np.mean([brier_of(run) for run in (RUN_A, RUN_B, RUN_C)]), abs=1e-6)


# --- the bootstrap ---------------------------------------------------------------------------------

def test_the_bootstrap_draws_the_intervals_of_scipys_percentile_bootstrap():
    values = np.random.default_rng(5).gamma(2.0, size=(2, 300))

    def statistic(index, axis=-1):
        return np.stack([values[0][index].mean(axis=axis), np.median(values[1][index], axis=axis)])

    low, high = percentile_bootstrap(statistic, 300, seed=7)
    scipy_result = scipy.stats.bootstrap((np.arange(300),), statistic, vectorized=True, method="percentile",
                                         n_resamples=1000, batch=100, rng=np.random.default_rng(7))
    np.testing.assert_allclose(low, scipy_result.confidence_interval.low, rtol=1e-12)
    np.testing.assert_allclose(high, scipy_result.confidence_interval.high, rtol=1e-12)


def test_the_bootstrapped_statistics_of_the_original_sample_are_regbenchs_metrics():
    """The per-example terms the bootstrap resamples give, on the sample itself, what
    calibration_errors and metrics.brier_score give (ECE's bins included)."""
    generator = torch.Generator().manual_seed(3)
    probabilities = (2 * torch.randn(400, 10, generator=generator, dtype=torch.float64)).softmax(dim=1)
    labels = torch.randint(0, 10, (400,), generator=generator)
    nll = -probabilities.log().gather(1, labels[:, None]).squeeze(1)
    acc, mean_nll, ece, brier = example_terms(probabilities, nll, labels).metrics(np.arange(400)[None])[:, 0]
    assert acc == pytest.approx((probabilities.argmax(dim=1) == labels).double().mean().item())
    assert mean_nll == pytest.approx(nll.mean().item())
    assert ece == pytest.approx(expected_calibration_error(probabilities, labels), rel=1e-12)
    assert brier == pytest.approx(brier_score(probabilities, labels).item(), rel=1e-12)


# --- members left out --------------------------------------------------------------------------------

def test_a_member_with_other_test_labels_is_skipped_and_named(tmp_path):
    """The labels most members share are the reference, even when the odd run comes first."""
    other = np.array([0, 1, 2, 1])
    sweep = sweep_with(tmp_path, [("none", 3, RUN_C), ("none", 0, RUN_A), ("none", 1, RUN_B),
                                  ("none", 2, RUN_C)], labels={0: other})
    report = report_of(sweep)
    one = ensemble_of(report, "none")
    assert one.seeds == [0, 1, 2]
    assert one.mixture.metrics[TEST_ACC] == 1.0
    [note] = report.notes
    assert note.startswith(f"none: {sweep / '0'}: its test labels differ from the other members'")
    assert "(first at example 3: 1 instead of 0), skipped" in note


def test_a_run_without_test_logits_is_named_and_a_group_of_one_has_no_ensemble(tmp_path):
    sweep = sweep_with(tmp_path, [("none", 0, RUN_A), ("none", 1, RUN_B), ("dropout", 0, RUN_C),
                                  ("dropout", 1, RUN_A)])
    (sweep / "3" / TEST_LOGITS_FILE).unlink()
    report = report_of(sweep)
    assert ensemble_of(report, "dropout").mixture is None
    assert report.notes == [
        f"dropout: {sweep / '3' / TEST_LOGITS_FILE} is missing (a run of a regbench older than "
        f"{TEST_LOGITS_FILE}), skipped",
        "dropout: 1 run with usable test logits (seed 0), so no ensemble (it needs 2 runs)"]


# --- ensembles.csv and summary.md --------------------------------------------------------------------

CONFIDENT = np.full((4, 3), .025) + .925 * np.eye(3)[LABELS]  # p(label) = .95 everywhere


@pytest.fixture
def reported(tmp_path):
    """none: A, B, C; dropout: one confident run and A; label_smoothing: one run."""
    sweep = sweep_with(tmp_path, [("none", 0, RUN_A), ("none", 1, RUN_B), ("none", 2, RUN_C),
                                  ("dropout", 0, CONFIDENT), ("dropout", 1, RUN_A),
                                  ("label_smoothing", 0, RUN_B)])
    return sweep, make_report(sweep)


def test_ensembles_csv_has_one_row_per_group_with_an_ensemble_in_the_agreed_columns(reported):
    sweep, _ = reported
    with (sweep / "ensembles.csv").open() as file:
        reader = csv.DictReader(file)
        rows = {row["settings"]: row for row in reader}
    assert list(reader.fieldnames) == list(ENSEMBLE_COLUMNS)
    assert reader.fieldnames[:2] == ["settings", "members"]
    for key in (TEST_ACC, TEST_NLL, TEST_ECE, TEST_BRIER):
        assert {f"ensemble/{key}", f"members/{key}", f"ensemble/{key}_ci_low",
                f"ensemble/{key}_ci_high"} <= set(reader.fieldnames)
    assert set(rows) == {"none", "dropout"}  # label_smoothing has one run
    assert rows["none"]["members"] == "3" and rows["none"]["member_seeds"] == "0 1 2"
    assert float(rows["none"]["ensemble/test/brier"]) == pytest.approx(brier_of(ENSEMBLE), abs=1e-6)
    assert float(rows["dropout"]["members/test/acc"]) == pytest.approx((1 + 3 / 4) / 2)


def test_summary_says_which_single_regularized_run_beats_the_unregularized_ensemble(reported):
    _, text = reported
    section = text.split("## Ensemble of the seeds")[1].split("\n## ")[0]
    assert "| none | 3 | 1.0000 [" in section and "| dropout | 2 |" in section
    assert "| label_smoothing |" not in section
    # No run reaches the none ensemble's accuracy of 1; the confident dropout run's NLL −log .95
    # is below the ensemble's.
    assert "On test accuracy: no; on test NLL: yes, dropout (1 of 2 runs)." in section
    ensemble_nll = -np.mean(np.log([2.1 / 3, 1.75 / 3, 1.85 / 3, 1.55 / 3]))
    assert (f"- dropout vs the none ensemble of 3: test NLL: 1 of 2 runs beat it; best run (seed 0) "
            f"{-math.log(.95):.4f} vs {ensemble_nll:.4f}, {-math.log(.95) - ensemble_nll:+.4f} [") in section
    assert "- label_smoothing vs the none ensemble of 3: test accuracy: 0 of 1 runs beat it" in section
    assert "- label_smoothing: 1 run with usable test logits (seed 0), so no ensemble" in section


def test_another_baseline_selector_compares_with_that_groups_ensemble(tmp_path):
    sweep = sweep_with(tmp_path, [("none", 0, RUN_A), ("none", 1, RUN_B), ("dropout", 0, RUN_C),
                                  ("dropout", 1, RUN_A)])
    report = report_of(sweep, [("regularizer", "dropout")])
    assert {(one.group, one.baseline) for one in report.versus} == {("none", "dropout")}


# --- the run's file ----------------------------------------------------------------------------------

def test_a_run_writes_its_test_logits_and_labels_in_test_split_order(tmp_path):
    from regbench.datasets.digits import load_digits

    run_dir = tmp_path / "run"
    metrics = train_in_process(run_dir, ["trainer.epochs=1"])
    with np.load(run_dir / TEST_LOGITS_FILE, allow_pickle=False) as arrays:
        logits, labels = arrays["logits"], arrays["labels"]
    assert logits.dtype == np.float32 and logits.shape == (360, 10) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, load_digits(None).test.labels.numpy())
    assert (logits.argmax(axis=1) == labels).mean() == pytest.approx(metrics[TEST_ACC])
    nll = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    assert nll.item() == pytest.approx(metrics[TEST_NLL], abs=1e-6)
    assert not list(run_dir.glob(".*.tmp"))
    written = (run_dir / TEST_LOGITS_FILE).stat().st_mtime_ns
    train_in_process(run_dir, ["trainer.epochs=1"])  # completed: nothing is run or rewritten
    assert (run_dir / TEST_LOGITS_FILE).stat().st_mtime_ns == written


# --- end to end ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_digits_sweep_of_two_seeds_and_two_groups_is_reported_with_its_ensembles(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "regularizer=none,dropout", "seed=0,1", *FAST, "trainer.epochs=1",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = run_cli([str(sweep)], cwd=tmp_path, module="regbench.report")
    assert report.returncode == 0, report.stderr
    with (sweep / "ensembles.csv").open() as file:
        rows = {row["settings"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"none", "dropout"}
    every_run = [read_metrics(folder) for folder in sweep.iterdir() if (folder / "metrics.json").is_file()]
    for label, row in rows.items():
        runs = [run for run in every_run if run["regularizer"] == [label]]
        assert row["members"] == "2" and len(runs) == 2
        for key in (TEST_ACC, TEST_NLL, TEST_BRIER):  # the runs' own float32 metrics
            assert float(row[f"members/{key}"]) == pytest.approx(np.mean([run[key] for run in runs]), abs=1e-5)
    assert "## Ensemble of the seeds" in report.stdout and "ensembles.csv" in report.stdout
