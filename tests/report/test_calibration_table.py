"""The report's calibration section (report/calibration.py): the table (values below display
precision, NLL made worse than raw marked) and the ranking flips beyond the noise."""

from __future__ import annotations

from types import SimpleNamespace

from regbench.report.calibration import calibration_table_markdown, flip_text, ranking_flips


def group(label: str, *metrics: dict) -> SimpleNamespace:
    return SimpleNamespace(label=label, completed=[SimpleNamespace(metrics=m) for m in metrics])


def test_calibration_table_mean_std_and_missing_keys():
    groups = [group("none", {"test/ece": 0.1, "test/ece@temperature": 0.02},
                    {"test/ece": 0.3, "test/ece@temperature": 0.04}),
              group("label_smoothing", {"test/ece": 0.05}, {"test/nll": float("nan")}),
              group("empty")]
    table = calibration_table_markdown(groups)
    assert "**test/ece**" in table and "**test/nll**" not in table and "platt" not in table
    assert "| settings | seeds | raw | temperature |" in table
    assert "| none | 2 | 0.2000 ± 0.1414 | 0.0300 ± 0.0141 |" in table
    assert "| label_smoothing | 2 | 0.0500 (n=1) | – |" in table
    assert "| empty | 0 | – | – |" in table
    assert calibration_table_markdown([group("x", {"acc": 1.0})]) == ""


def test_ranking_flips_beyond_the_noise_are_listed_with_their_numbers():
    # label_smoothing: ECE 0.010, 0.012 (mean 0.011); dropout 0.040, 0.044 (0.042): apart by 0.031,
    # standard error of the difference sqrt(0.0014²/2 + 0.0028²/2) = 0.0022: 14 standard errors.
    # Classwise ECE the other way round, as clearly. adaptive agrees with ece: no flip there.
    groups = [group("label_smoothing", {"test/ece": 0.010, "test/ece_classwise": 0.050, "test/ece_adaptive": 0.01},
                    {"test/ece": 0.012, "test/ece_classwise": 0.052, "test/ece_adaptive": 0.01}),
              group("dropout", {"test/ece": 0.040, "test/ece_classwise": 0.020, "test/ece_adaptive": 0.03},
                    {"test/ece": 0.044, "test/ece_classwise": 0.024, "test/ece_adaptive": 0.03}),
              group("none", {"test/ece@temperature": 0.02})]
    assert ranking_flips(groups) == [
        "ranking flip: best by test/ece is label_smoothing (0.0110 ± 0.0014 vs 0.0420 ± 0.0028 for "
        "dropout), by test/ece_classwise is dropout (0.0220 ± 0.0028 vs 0.0510 ± 0.0014 for "
        "label_smoothing)"]
    # the same winner everywhere, or a single group with the key: no flip
    assert ranking_flips(groups[:1]) == []
    assert ranking_flips([group("a", {"test/ece": 0.1}), group("b", {})]) == []
    assert ranking_flips([]) == []


def test_ranking_flips_at_the_noise_level_are_not_listed_and_the_rule_is_said():
    # The "0.0250 ± 0.0002 vs 0.0249 ± 0.0003": a difference of 0.0001 against a standard
    # error of 0.00025; the classwise ordering is clear, the ECE one is not: no flip is listed.
    groups = [group("none", {"test/ece": 0.0248, "test/ece_classwise": 0.040},
                    {"test/ece": 0.0252, "test/ece_classwise": 0.041}),
              group("label_smoothing", {"test/ece": 0.0247, "test/ece_classwise": 0.060},
                    {"test/ece": 0.0251, "test/ece_classwise": 0.061})]
    assert ranking_flips(groups) == []
    text = flip_text(groups)
    assert "A ranking flip is listed only when both orderings are beyond the noise" in text
    assert "2·sqrt(s₁²/n₁ + s₂²/n₂)" in text and "No ranking flip beyond the noise." in text
    assert text.endswith("1 other pair of ECE conventions or calibrators picks a different best "
                         "group only within the noise (not listed).")
    # Groups with one seed have no standard error: not judged, not listed.
    single = [group("a", {"test/ece": 0.01, "test/ece_classwise": 0.09}),
              group("b", {"test/ece": 0.09, "test/ece_classwise": 0.01})]
    assert ranking_flips(single) == []
    assert flip_text([group("a", {"test/ece": 0.01}), group("b", {"test/ece": 0.02})]).startswith(
        "No ranking flips: every ECE convention and calibrator picks the same")


def test_values_below_display_precision_and_nll_worse_than_raw_are_marked():
    # The "ece_debiased_l2 0.0000 ± 0.0000" for a normal run: nonzero values below 0.0001.
    groups = [group("none", {"test/ece_classwise": 2e-5, "test/nll": 0.15, "test/nll@isotonic": 0.29},
                    {"test/ece_classwise": 3e-5, "test/nll": 0.16, "test/nll@isotonic": 0.14}),
              group("dropout", {"test/ece_classwise": 0.0, "test/nll": 0.15, "test/nll@isotonic": 0.15},
                    {"test/ece_classwise": 0.0, "test/nll": 0.15, "test/nll@isotonic": 0.12})]
    table = calibration_table_markdown(groups)
    assert "| none | 2 | < 0.0001 |" in table
    assert "| dropout | 2 | 0.0000 ± 0.0000 |" in table  # exactly 0 is 0
    assert "0.0000 ± 0.0000 |" not in table.split("| dropout")[0]
    # none's isotonic NLL is worse than raw in 1 of its 2 runs; dropout's in none (equal is not worse).
    assert "| none | 2 | 0.1550 ± 0.0071 | 0.2150 ± 0.1061 ⚠ 1/2 |" in table
    assert "| dropout | 2 | 0.1500 ± 0.0000 | 0.1350 ± 0.0212 |" in table
    assert "⚠ k/n: in k of the group's n runs this calibrator's test NLL is worse than the raw" in table
    assert "⚠" not in calibration_table_markdown(groups[1:])


def test_a_debiased_ece_clamped_at_zero_in_every_run_says_so():
    # The "ece_debiased_l2 0.0000 ± 0.0000" on a normal digits run: the estimator clamps a
    # negative estimate at 0 (measured: 0.0 in all 3 runs of none on digits).
    groups = [group("none", {"test/ece_debiased_l2": 0.0, "test/ece_debiased_l2@platt": 0.114},
                    {"test/ece_debiased_l2": 0.0, "test/ece_debiased_l2@platt": 0.115}),
              group("label_smoothing", {"test/ece_debiased_l2": 0.166, "test/ece_debiased_l2@platt": 0.111},
                    {"test/ece_debiased_l2": 0.0, "test/ece_debiased_l2@platt": 0.112})]
    table = calibration_table_markdown(groups)
    assert "| none | 2 | clamped 0 | 0.1145 ± 0.0007 |" in table
    assert "| label_smoothing | 2 | 0.0830 ± 0.1174 |" in table  # one run at 0: an ordinary mean
    assert "0.0000 ± 0.0000" not in table
    assert "clamped 0: 0 in every run. The debiased estimator (Kumar et al. 2019)" in table
    assert "clamped 0" not in calibration_table_markdown(groups[1:])
