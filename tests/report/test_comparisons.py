"""Every group against its baseline on hand-built sweep folders: the numbers against scipy and
hand calculations, Holm's adjustment with Bonferroni-width intervals, missing pairs, the --baseline
selectors, and the issue's nonsense lines, which can no longer be produced."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sweep_folders import fake_sweep, read_comparisons, row_for

from conftest import run_cli
from regbench.report.analysis import analyse
from regbench.report.command import main, make_report
from regbench.report.comparisons import COMPARISON_COLUMNS, comparison_rows
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_sweeps
from regbench.report.tables import comparison_section

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


def test_no_baseline_group_is_a_line_and_no_picture(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9 + s / 100 + (reg == "dropout") / 50})
            for reg in ("dropout", "label_smoothing") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert "No baseline group (regularizer=none) in this sweep" in text
    assert read_comparisons(folder) == []
    # Nothing to draw: no comparisons.png picture of a sentence, and summary.md embeds none.
    assert not (folder / "comparisons.png").exists() and "comparisons.png" not in text


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


# --- the nonsense lines ---------------------------------------------------------------------

def verdicts_of(folder: Path) -> tuple[dict[tuple[str, str], dict], str]:
    """comparisons.csv's rows by (group, metric) and summary.md's verdict section, no figures."""
    jobs = load_sweeps([folder])
    analysis = analyse(jobs, group_jobs(jobs))
    rows = {(row["group"], row["metric"]): row for row in comparison_rows(analysis.comparisons)}
    return rows, "\n\n".join(comparison_section(analysis))


def test_two_pairs_say_the_t_test_has_little_power_and_need_the_noncentral_t_seeds(tmp_path):
    # The issue's line: "test accuracy +0.42 pp [-1.35, 2.18], p_holm = 0.2, indistinguishable
    # (2 pairs); about 2 seeds would detect a difference this large". Differences 0.281 and
    # 0.559 pp: mean 0.42, sd 0.196 pp, d = 2.14; the noncentral t needs 4 pairs for 80 % power.
    runs = [("none", 0, {"test/acc": 0.95}), ("none", 1, {"test/acc": 0.96}),
            ("label_smoothing", 0, {"test/acc": 0.95281}), ("label_smoothing", 1, {"test/acc": 0.96559})]
    rows, text = verdicts_of(fake_sweep(tmp_path / "sweep", runs))
    row = rows[("label_smoothing", "test/acc")]
    assert (row["verdict"], row["seeds_needed"]) == ("indistinguishable", 4)
    assert ("- label_smoothing vs none: test accuracy +0.42 pp [-1.35, 2.19], p_holm = 0.2, "
            "indistinguishable (2 pairs: a t-test with 1 degree of freedom has little power, |t| "
            "must exceed 12.71 at α = 0.05); about 4 seeds would detect a difference this large "
            "with 80% power") in text
    assert "about 2 seeds" not in text


def test_a_negligible_difference_needs_more_than_a_thousand_seeds_not_a_number(tmp_path):
    # The "about 11672 seeds would detect a difference this large": mean 0.01 pp against a
    # spread of 1.15 pp (d = 0.009).
    base = [0.90, 0.91, 0.92, 0.93]
    differences = [0.0100, -0.0100, 0.0102, -0.0098]
    runs = [("none", s, {"test/acc": a}) for s, a in enumerate(base)]
    runs += [("dropout", s, {"test/acc": a + d}) for s, (a, d) in enumerate(zip(base, differences))]
    rows, text = verdicts_of(fake_sweep(tmp_path / "sweep", runs))
    assert rows[("dropout", "test/acc")]["seeds_needed"] == ">1000"
    assert ("; more than 1000 seeds would be needed to detect a difference this large with 80% "
            "power: it is negligible next to its spread over seeds") in text


def test_one_comparison_and_no_test_read_as_sentences(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9 + s / 100 + (reg == "dropout") * (0.001 + s / 1000)})
            for reg in ("none", "dropout") for s in range(3)]
    _, text = verdicts_of(fake_sweep(tmp_path / "one", runs))
    assert "over the 1 comparisons" not in text
    assert "Holm–Bonferroni over one comparison per metric, so it changes nothing" in text
    assert "95 % intervals (one comparison per metric: nothing to adjust)" in text
    single = [(reg, 0, {"test/acc": 0.9}) for reg in ("none", "dropout", "label_smoothing")]
    _, text = verdicts_of(fake_sweep(tmp_path / "single", single))
    assert "the 0 comparisons" not in text
    assert "Holm–Bonferroni over no test ran (fewer than 2 seed pairs in every comparison)" in text


def test_intervals_are_bonferroni_wide_over_a_metrics_comparisons(tmp_path):
    # Three groups against none on test NLL: each t-interval at 1 - 0.05/3 (98.3 %), as scipy's.
    base = [0.110, 0.120, 0.100, 0.115]
    shifts = {"dropout": [-0.010, -0.012, -0.009, -0.011], "label_smoothing": [0.02, 0.01, 0.03, 0.02],
              "confidence_penalty": [0.001, -0.002, 0.002, 0.0]}
    runs = [("none", s, {"test/nll": v}) for s, v in enumerate(base)]
    runs += [(reg, s, {"test/nll": v + d}) for reg, ds in shifts.items() for s, (v, d) in enumerate(zip(base, ds))]
    rows, text = verdicts_of(fake_sweep(tmp_path / "sweep", runs))
    for regularizer, ds in shifts.items():
        row = rows[(regularizer, "test/nll")]
        expected = scipy_stats.ttest_rel(np.add(base, ds), base).confidence_interval(1 - 0.05 / 3)
        assert row["ci_level"] == pytest.approx(1 - 0.05 / 3)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((expected.low, expected.high), rel=1e-10)
        if row["ci_low"] > 0 or row["ci_high"] < 0:  # an interval excluding 0 is never "indistinguishable"
            assert row["verdict"] != "indistinguishable"
    assert (rows[("dropout", "test/nll")]["verdict"], rows[("dropout", "test/nll")]["outcome"]) == ("lower", "better")
    assert rows[("label_smoothing", "test/nll")]["outcome"] == "worse"
    assert "lower, better (4 pairs)" in text and "higher, worse (4 pairs)" in text
    assert "(98.3 %), p_holm = " in text and "Bonferroni level 1 − 0.05/m (Dunn 1961)" in text
    assert "about" in text and "at α = 0.05/3" in text  # seeds needed at Holm's strictest level


def test_comparisons_csv_has_the_new_columns_after_the_old_ones(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9 + s / 100}) for reg in ("none", "dropout") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    make_report(folder)
    with (folder / "comparisons.csv").open() as file:
        header = next(csv.reader(file))
    assert header[:16] == ["group", "baseline", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high",
                           "p_value", "p_holm", "prob_improvement", "verdict", "seeds_needed",
                           "sd_diff", "test", "dropped_seeds", "did_not_learn"]
    assert header[16:] == ["ci_level", "outcome", "boot_pairs", "boot_ci_low", "boot_ci_high",
                           "boot_verdict", "mcnemar_group_only", "mcnemar_baseline_only", "mcnemar_p",
                           "mcnemar_p_holm", "mcnemar_verdict"]
