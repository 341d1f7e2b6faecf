"""Every group against its baseline on hand-built sweep folders: the numbers against scipy and
hand calculations, Holm's adjustment, missing pairs, and the --baseline selectors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import run_cli
from regbench.report.command import main, make_report
from regbench.report.comparisons import COMPARISON_COLUMNS
from sweep_folders import fake_sweep, read_comparisons, row_for

BASE_ACC = [0.970, 0.962, 0.975, 0.968]
SMOOTH_ACC = [0.978, 0.970, 0.977, 0.980]
BASE_NLL = [0.110, 0.120, 0.100, 0.115]


def test_comparisons_equal_scipy_on_a_hand_built_sweep(tmp_path):
    runs = [("none", s, {"test/acc": a, "test/nll": n}) for s, (a, n) in enumerate(zip(BASE_ACC, BASE_NLL))]
    runs += [("label_smoothing", s, {"test/acc": a, "test/nll": 0.2 + 0.01 * s})
             for s, a in enumerate(SMOOTH_ACC)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    rows = read_comparisons(folder)
    with (folder / "comparisons.csv").open() as file:
        assert next(csv.reader(file))[:11] == ["group", "baseline", "metric", "n_pairs", "mean_diff",
                                               "ci_low", "ci_high", "p_value", "p_holm",
                                               "prob_improvement", "verdict"]
    assert list(rows[0])[:11] == list(COMPARISON_COLUMNS[:11])
    row = row_for(rows, "label_smoothing", "test/acc")
    assert (row["baseline"], row["n_pairs"]) == ("none", "4")
    expected = scipy_stats.ttest_rel(SMOOTH_ACC, BASE_ACC)
    interval = expected.confidence_interval(0.95)
    assert float(row["mean_diff"]) == pytest.approx(np.mean(np.subtract(SMOOTH_ACC, BASE_ACC)), rel=1e-12)
    assert float(row["p_value"]) == pytest.approx(expected.pvalue, rel=1e-12)
    assert float(row["ci_low"]) == pytest.approx(interval.low, rel=1e-12)
    assert float(row["ci_high"]) == pytest.approx(interval.high, rel=1e-12)
    # One comparison per metric: Holm changes nothing. Of the 4 x 4 run pairs, 0.978, 0.977 and
    # 0.980 beat every baseline run (12); 0.970 beats 0.962 and 0.968, ties 0.970, loses to 0.975.
    assert float(row["p_holm"]) == pytest.approx(expected.pvalue, rel=1e-12)
    assert float(row["prob_improvement"]) == pytest.approx((12 + 2 + 0.5) / 16)
    assert row["verdict"] == ("higher" if expected.pvalue < 0.05 else "indistinguishable")
    nll = row_for(rows, "label_smoothing", "test/nll")
    assert nll["verdict"] == "higher" and float(nll["prob_improvement"]) == 1.0
    # Metrics no job recorded are not compared.
    assert {r["metric"] for r in rows} == {"test/acc", "test/nll"}
    # summary.md opens with the verdict lines, accuracy in percentage points.
    diff_pp = 100 * np.mean(np.subtract(SMOOTH_ACC, BASE_ACC))
    lines = text.split("## Groups")[0]
    assert (f"- label_smoothing vs none: test accuracy +{diff_pp:.2f} pp "
            f"[{100 * interval.low:.2f}, {100 * interval.high:.2f}], p_holm = ") in lines
    assert "scipy.stats.ttest_rel" in lines and "pairs per group: label_smoothing 4" in lines
    assert (folder / "comparisons.png").stat().st_size > 1000


def test_identical_groups_are_indistinguishable(tmp_path):
    runs = [(reg, s, {"test/acc": a, "test/mean_confidence": 0.9 + a / 100})
            for reg in ("none", "dropout") for s, a in enumerate(BASE_ACC)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    for row in read_comparisons(folder):
        assert row["group"] == "dropout"
        assert (float(row["mean_diff"]), float(row["p_value"]), row["verdict"]) == (0.0, 1.0,
                                                                                 "indistinguishable")
        assert float(row["prob_improvement"]) == 0.5
        assert row["seeds_needed"] == ""  # no number of seeds detects no difference
    assert "dropout vs none: test accuracy +0.00 pp [0.00, 0.00], p_holm = 1, indistinguishable" in text


def test_holm_runs_over_every_comparison_of_a_metric(tmp_path):
    runs = [("none", s, {"test/acc": a}) for s, a in enumerate(BASE_ACC)]
    runs += [("label_smoothing", s, {"test/acc": a}) for s, a in enumerate(SMOOTH_ACC)]
    runs += [("dropout", s, {"test/acc": a + 0.001 * (-1) ** s}) for s, a in enumerate(BASE_ACC)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    make_report(folder)
    rows = {row["group"]: row for row in read_comparisons(folder)}
    p = sorted([float(rows["label_smoothing"]["p_value"]), float(rows["dropout"]["p_value"])])
    holm_expected = sorted([min(1, 2 * p[0]), max(min(1, 2 * p[0]), p[1])])
    assert sorted(float(row["p_holm"]) for row in rows.values()) == pytest.approx(holm_expected)


def test_missing_pairs_one_seed_and_failed_jobs_are_lines_not_crashes(tmp_path):
    runs = [("none", 0, {"test/acc": 0.97}), ("none", 1, {"test/acc": 0.96}),
            ("none", 2, {"test/acc": 0.965}),
            ("label_smoothing", 0, {"test/acc": 0.98}), ("label_smoothing", 1, {"test/acc": 0.975}),
            ("label_smoothing", 2, {"test/acc": None, "error": "loss is not finite"}, "diverged"),
            ("label_smoothing", 3, {"test/acc": 0.99}),  # no baseline run with seed 3
            ("dropout", 0, {"test/acc": 0.97}),            # one seed only
            ("dropout", 1, None)]                          # unfinished
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    rows = {row["group"]: row for row in read_comparisons(folder)}
    assert rows["label_smoothing"]["n_pairs"] == "2"
    assert rows["label_smoothing"]["dropped_seeds"] == ("seed 2 not completed in label_smoothing; "
                                                        "seed 3 not completed in none")
    assert rows["dropout"]["n_pairs"] == "1" and rows["dropout"]["verdict"] == "too few seeds"
    assert rows["dropout"]["p_value"] == rows["dropout"]["ci_low"] == ""
    verdicts = text.split("## Groups")[0]
    assert "- dropout vs none: test accuracy +0.00 pp (1 pair): too few seeds for a test" in verdicts
    assert "- label_smoothing vs none: dropped seed 2 not completed in label_smoothing; seed 3" in verdicts
    assert "**diverged**" in text and "**unfinished**" in text


def test_no_baseline_group_is_a_line(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9 + s / 100 + (reg == "dropout") / 50})
            for reg in ("dropout", "label_smoothing") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert "No baseline group (regularizer=none) in this sweep" in text
    assert read_comparisons(folder) == []
    assert (folder / "comparisons.png").is_file()


def test_baseline_selector_picks_another_group(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9 + s / 100 + {"none": 0, "dropout": 0.01, "label_smoothing": 0.02}[reg]})
            for reg in ("none", "dropout", "label_smoothing") for s in range(3)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    main(["--baseline", "regularizer=dropout", str(folder)])
    rows = read_comparisons(folder)
    assert {(r["group"], r["baseline"]) for r in rows} == {("none", "dropout"), ("label_smoothing", "dropout")}
    assert float(row_for(rows, "none", "test/acc")["mean_diff"]) == pytest.approx(-0.01)
    # Several selectors, each one flag; a value Hydra would read as a list works too.
    main([str(folder), "--baseline", "regularizer=[label_smoothing]", "--baseline", "optimizer.lr=0.1"])
    assert {(r["group"], r["baseline"]) for r in read_comparisons(folder)} == {
        ("none", "label_smoothing"), ("dropout", "label_smoothing")}


def test_bad_baseline_selector_is_one_line_error(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9}) for reg in ("none", "dropout") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    result = run_cli([str(folder), "--baseline", "regularizer=dropuot"], cwd=tmp_path,
                     module="regbench.report", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "regbench-report: error: --baseline regularizer=dropuot matches no group "
        "(regularizer takes dropout, none)"]


def test_a_baseline_selector_matching_every_group_is_one_line_naming_them(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9}) for reg in ("none", "dropout") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    result = run_cli([str(folder), "--baseline", "trainer.epochs=3"], cwd=tmp_path,
                     module="regbench.report", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "regbench-report: error: --baseline trainer.epochs=3 matches all 2 groups (none; dropout), so "
        "no group is left to compare with it: a baseline selector names a value of a setting that "
        "varies (regularizer), matching one group of each set that differs only in it, e.g. "
        "--baseline regularizer=none"]


def test_the_default_baseline_matching_every_group_says_so_instead_of_one_group(tmp_path):
    runs = [("none", s, {"test/acc": 0.9}, "completed", {"lr": lr}) for lr in (0.1, 0.05) for s in range(2)]
    text = make_report(fake_sweep(tmp_path / "sweep", runs))
    verdicts = text.split("## Groups")[0]
    assert "only one group" not in verdicts
    assert ("- No comparisons: the baseline regularizer=none matches all 2 groups (none, "
            "optimizer.lr=0.1; none, optimizer.lr=0.05), so no group is left to compare with it: a "
            "baseline selector names a value of a setting that varies (optimizer.lr), matching one "
            "group of each set that differs only in it, e.g. --baseline optimizer.lr=0.1.") in verdicts
