"""The equivalence verdict (TOST, --equivalence): its numbers against a hand computation and
scipy, each verdict on constructed differences, equal differences and single pairs, Holm over a
metric's comparisons, the one-line refusals, and the columns and lines it adds to the report."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
from scipy import stats
from sweep_folders import fake_sweep, read_comparisons, row_for

from conftest import run_cli
from regbench.report.analysis import analyse
from regbench.report.command import main
from regbench.report.comparisons import (
    COMPARISON_COLUMNS,
    EQUIVALENCE_COLUMNS,
    add_equivalence,
    comparison_header,
    comparison_rows,
)
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_sweeps
from regbench.report.statistics import equivalence, holm
from regbench.report.tables import comparison_section

BASELINE = [0.950, 0.960, 0.970, 0.955, 0.965]


def with_differences(differences: list[float]) -> tuple[list[float], list[float]]:
    """(group, baseline) whose same-seed differences are ``differences``."""
    baseline = [0.95 + 0.003 * i for i in range(len(differences))]
    return [b + d for b, d in zip(baseline, differences)], baseline


def t4_cdf(x: float) -> float:
    """Student's t CDF with 4 degrees of freedom in closed form:
    1/2 + (3/8)·u·(1 − x²/(12(1 + x²/4))), u = x / sqrt(1 + x²/4)."""
    u = x / math.sqrt(1 + x * x / 4)
    return 0.5 + 3 / 8 * u * (1 - x * x / (12 * (1 + x * x / 4)))


def test_tost_p_values_and_90_percent_interval_equal_a_hand_computation_and_scipy():
    differences = [0.002, -0.001, 0.003, 0.000, 0.001]
    group = [b + d for b, d in zip(BASELINE, differences)]
    result = equivalence(group, BASELINE, margin=0.004)
    # By hand: mean 0.001; squared deviations 1, 4, 4, 1, 0 (·1e-6) sum to 1e-5, s² = 1e-5/4,
    # SE = sqrt(2.5e-6 / 5) = 7.0710678e-4; t_L = (0.001 + 0.004)/SE = 7.0710678,
    # t_U = (0.001 − 0.004)/SE = −4.2426407; t_{0.95, 4} = 2.1318468 (tables).
    se = math.sqrt(2.5e-6 / 5)
    assert result.mean_diff == pytest.approx(0.001, rel=1e-9)
    assert result.p_lower == pytest.approx(1 - t4_cdf(0.005 / se), rel=1e-6)
    assert result.p_upper == pytest.approx(t4_cdf(-0.003 / se), rel=1e-6)
    assert result.p_value == max(result.p_lower, result.p_upper) == result.p_upper
    assert result.level == pytest.approx(0.90)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (0.001 - 2.1318468 * se, 0.001 + 2.1318468 * se), rel=1e-6)
    # scipy by another path: the paired test of group against baseline ± margin.
    shifted_lower = [b - 0.004 for b in BASELINE]
    shifted_upper = [b + 0.004 for b in BASELINE]
    assert result.p_lower == pytest.approx(
        stats.ttest_rel(group, shifted_lower, alternative="greater").pvalue, rel=1e-9)
    assert result.p_upper == pytest.approx(
        stats.ttest_rel(group, shifted_upper, alternative="less").pvalue, rel=1e-9)
    interval = stats.ttest_rel(group, BASELINE).confidence_interval(0.90)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    # Inside (−0.004, 0.004) and p = 0.0066 < 0.05: equivalent, although the mean is not 0.
    assert result.verdict == "equivalent" and result.test == "paired t-test"


@pytest.mark.parametrize("differences, margin, verdict", [
    ([0.001, -0.001, 0.0005, 0.0, -0.0005, 0.001], 0.005, "equivalent"),
    # Shown nonzero (two-sided p < 0.05) and the interval reaches past +0.005.
    ([0.010, 0.012, 0.011, 0.009, 0.013], 0.005, "different"),
    # Neither: mean near 0 but a spread that bounds it only to about ±0.02.
    ([0.02, -0.015, 0.01, -0.02, 0.012], 0.005, "not shown equivalent"),
    # A significant difference inside the margin is equivalent: small, and shown small.
    ([0.0010, 0.0012, 0.0011, 0.0009, 0.0010], 0.005, "equivalent"),
])
def test_each_verdict_follows_the_rule_on_constructed_differences(differences, margin, verdict):
    group, baseline = with_differences(differences)
    result = equivalence(group, baseline, margin)
    assert result.verdict == verdict
    inside = -margin < result.ci_low and result.ci_high < margin
    assert inside == (result.p_value < 0.05) == (verdict == "equivalent")
    two_sided = stats.ttest_rel(group, baseline).pvalue
    assert (verdict == "different") == (two_sided < 0.05 and not inside)


@pytest.mark.parametrize("differences, verdict, p_value, interval", [
    # Equal differences: the exact one-sided sign-flip p 0.5^n, not scipy's 0 or NaN.
    ([0.001] * 4, "not shown equivalent", 1 / 16, (math.nan, math.nan)),
    ([0.001] * 5, "equivalent", 1 / 32, (0.001, 0.001)),
    ([0.0] * 2, "not shown equivalent", 1 / 4, (math.nan, math.nan)),   # identical results
    ([0.0] * 10, "equivalent", 1 / 1024, (0.0, 0.0)),
    # Beyond the margin on every pair: TOST p 1; the two-sided sign-flip p 2/1024 says different.
    ([0.01] * 10, "different", 1.0, (0.01, 0.01)),
    ([0.001], "too few seeds", math.nan, (math.nan, math.nan)),
])
def test_equal_differences_and_one_pair_get_one_clear_verdict(differences, verdict, p_value,
                                                               interval):
    group, baseline = with_differences(differences)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's precision-loss warning would mean it was called
        result = equivalence(group, baseline, margin=0.005)
    assert result.verdict == verdict
    assert result.p_value == pytest.approx(p_value, nan_ok=True)
    assert (result.ci_low, result.ci_high) == pytest.approx(interval, nan_ok=True, abs=1e-12)


# --- in the report ---------------------------------------------------------------------------

GAINS = {"dropout": [0.001, -0.001, 0.002, 0.0], "label_smoothing": [0.004, 0.006, 0.005, 0.007]}


def three_groups(folder: Path) -> Path:
    runs = [("none", s, {"test/acc": b, "test/nll": 0.1 + b / 10})
            for s, b in enumerate(BASELINE[:4])]
    runs += [(name, s, {"test/acc": b + d, "test/nll": 0.1 + b / 10})
             for name, gains in GAINS.items() for s, (b, d) in enumerate(zip(BASELINE, gains))]
    return fake_sweep(folder, runs)


def analysis_with_margins(folder: Path, margins: dict[str, float]):
    jobs = load_sweeps([folder])
    analysis = analyse(jobs, group_jobs(jobs))
    add_equivalence(analysis.comparisons, margins)
    return analysis


def test_holm_adjusts_the_tost_p_over_a_metrics_comparisons_with_bonferroni_intervals(tmp_path):
    analysis = analysis_with_margins(three_groups(tmp_path / "sweep"), {"test/acc": 0.005})
    rows = comparison_rows(analysis.comparisons)
    acc = {row["group"]: row for row in rows if row["metric"] == "test/acc"}
    raw = [acc[name]["tost_p"] for name in GAINS]
    assert [acc[name]["tost_p_holm"] for name in GAINS] == pytest.approx(holm(raw))
    for name, gains in GAINS.items():
        # Two comparisons: each interval at 1 − 2·0.05/2 = 95 %.
        assert acc[name]["tost_ci_level"] == pytest.approx(0.95)
        interval = stats.ttest_1samp(gains, 0).confidence_interval(0.95)
        assert (acc[name]["tost_low"], acc[name]["tost_high"]) == pytest.approx(
            (interval.low, interval.high), rel=1e-9)
    assert acc["dropout"]["tost_verdict"] == "equivalent"
    assert acc["label_smoothing"]["tost_verdict"] == "different"


def test_the_csv_columns_and_summary_lines_appear_only_with_a_margin(tmp_path):
    folder = three_groups(tmp_path / "sweep")
    plain = analysis_with_margins(folder, {})
    assert comparison_header(plain.comparisons) == list(COMPARISON_COLUMNS)
    assert "tost_p" not in comparison_rows(plain.comparisons)[0]
    assert "TOST" not in "\n".join(comparison_section(plain))

    analysis = analysis_with_margins(folder, {"test/acc": 0.005})
    assert comparison_header(analysis.comparisons) == [*COMPARISON_COLUMNS, *EQUIVALENCE_COLUMNS]
    nll = row_for(comparison_rows(analysis.comparisons), "dropout", "test/nll")
    assert all(nll[column] == "" for column in EQUIVALENCE_COLUMNS)  # no margin for NLL
    acc = row_for(comparison_rows(analysis.comparisons), "dropout", "test/acc")
    text = "\n".join(comparison_section(analysis))
    # At 1 − 2·0.05/2 = 95 %, the report's usual level, which its intervals do not spell out.
    assert (f"; TOST at ±0.50 pp: [{100 * acc['tost_low']:.2f}, {100 * acc['tost_high']:.2f}], "
            "p_holm = ") in text
    assert text.count("equivalent within ±0.50 pp") == 1 and ", different" in text
    assert ("**Equivalence** (--equivalence; margins in the metric's own units: test accuracy "
            "±0.005)") in text


# --- the command line ------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, line", [
    (["--equivalence", "test/acc"], "--equivalence 'test/acc' is not of the form KEY=MARGIN (for "
     "example test/acc=0.003); the sweep folders go before --equivalence or after --"),
    (["--equivalence", "test/accuracy=0.01"], "--equivalence test/accuracy=0.01: test/accuracy is "
     "not a compared metric (did you mean test/acc?); they are test/acc, test/nll, test/ece, "),
    (["--equivalence", "test/acc=0"], "--equivalence test/acc=0: the margin must be a positive "
     "finite number in the metric's own units (test/acc=0.003 is 0.3 percentage points)"),
    (["--equivalence", "test/acc=-0.01"], "--equivalence test/acc=-0.01: the margin must be"),
    (["--equivalence", "test/acc=nan"], "--equivalence test/acc=nan: the margin must be"),
    (["--equivalence", "test/acc=inf"], "--equivalence test/acc=inf: the margin must be"),
    (["--equivalence", "test/acc=1pp"], "--equivalence test/acc=1pp: the margin must be"),
    (["--equivalence", "test/acc=0.01", "--equivalence", "test/acc=0.02"],
     "--equivalence names test/acc twice (test/acc=0.01 and test/acc=0.02)"),
])
def test_bad_margins_are_refused_in_one_line_before_any_folder_is_read(arguments, line, tmp_path,
                                                                       capsys):
    missing = tmp_path / "no such sweep"  # never read: the margins are refused first
    with pytest.raises(SystemExit) as stop:
        main([str(missing), *arguments])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"regbench-report: error: {line}")


def test_a_folder_after_the_margins_and_a_metric_the_sweep_lacks_are_one_line_each(tmp_path,
                                                                                   capsys):
    folder = fake_sweep(tmp_path / "sweep", [(r, s, {"test/acc": 0.9 + s / 100})
                                             for r in ("none", "dropout") for s in range(2)])
    with pytest.raises(SystemExit):
        main(["--equivalence", "test/acc=0.01", str(folder)])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"regbench-report: error: --equivalence {str(folder)!r} is not of the form KEY=MARGIN (for "
        "example test/acc=0.003); the sweep folders go before --equivalence or after --"]
    with pytest.raises(SystemExit):
        main([str(folder), "--equivalence", "test/acc=0.01", "test/ece=0.01"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "regbench-report: error: --equivalence test/ece: no run of these sweeps recorded it "
        "(compared metrics here: test/acc)"]
    assert not (folder / "summary.md").exists() and not (folder / "comparisons.csv").exists()


# fp32 against bf16 (trainer.amp) over 10 seeds: accuracy within ±0.2 pp, ECE 0.02 higher.
FP32_ACC = [0.961, 0.957, 0.966, 0.959, 0.963, 0.955, 0.962, 0.958, 0.964, 0.960]
AMP_GAIN = [0.001, -0.002, 0.0, 0.002, -0.001, 0.001, 0.0, -0.001, 0.002, -0.002]


def test_the_command_compares_bf16_with_fp32_by_seed_and_prints_the_tost_verdicts(tmp_path):
    runs = []
    for seed, (acc, gain) in enumerate(zip(FP32_ACC, AMP_GAIN)):
        ece = 0.02 + acc / 10
        runs += [("none", seed, {"test/acc": acc, "test/ece": ece}, "completed",
                  {"trainer": {"amp": False}}),
                 ("none", seed, {"test/acc": acc + gain, "test/ece": ece + 0.02 + gain},
                  "completed", {"trainer": {"amp": True}})]
    folder = fake_sweep(tmp_path / "sweep", runs)
    result = run_cli([str(folder), "--baseline", "trainer.amp=false", "--equivalence",
                      "test/acc=0.01", "test/ece=0.01"], cwd=tmp_path, module="regbench.report",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    head = "- none, trainer.amp=true vs none, trainer.amp=false: test "
    lines = {line.removeprefix(head).split(" ")[0]: line for line in result.stdout.splitlines()
             if line.startswith(head)}
    assert lines["accuracy"].endswith(", equivalent within ±1.00 pp")
    assert "; TOST at ±1.00 pp: [" in lines["accuracy"] and "(90 %)" in lines["accuracy"]
    assert lines["ECE"].endswith("p_holm = 1, different")
    rows = read_comparisons(folder)
    acc = row_for(rows, "none, trainer.amp=true", "test/acc")
    assert (acc["baseline"], acc["n_pairs"], acc["tost_margin"]) == ("none, trainer.amp=false",
                                                                     "10", "0.01")
    interval = stats.ttest_1samp(AMP_GAIN, 0).confidence_interval(0.90)
    assert float(acc["tost_low"]) == pytest.approx(interval.low, abs=1e-12)
    assert acc["tost_verdict"] == "equivalent"
    page = (folder / "report.html").read_text()
    # Beside the difference in the verdict matrix, and a column of the comparisons table.
    assert '<span class="word">equivalent within ±1.00 pp</span>' in page
    assert '<span class="word">different</span>' in page and "tost interval" in page
    assert "--equivalence test/acc=0.01 test/ece=0.01" in page
