"""The report's calibration section (report/calibration.py): the table and the ranking flips."""

from __future__ import annotations

from types import SimpleNamespace

from regbench.report.calibration import calibration_table_markdown, ranking_flips


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


def test_ranking_flips():
    groups = [group("label_smoothing", {"test/ece": 0.01, "test/ece_classwise": 0.05, "test/ece_adaptive": 0.01},
                    {"test/ece": 0.03, "test/ece_classwise": 0.05, "test/ece_adaptive": 0.01}),
              group("dropout", {"test/ece": 0.04, "test/ece_classwise": 0.02, "test/ece_adaptive": 0.03,
                                "test/ece@temperature": 0.01}),
              group("none", {"test/ece@temperature": 0.02})]
    assert ranking_flips(groups) == [
        "ranking flip: best by test/ece is label_smoothing, by test/ece_classwise is dropout"]
    # the same winner everywhere, or a single group with the key: no flip
    assert ranking_flips(groups[:1]) == []
    assert ranking_flips([group("a", {"test/ece": 0.1}), group("b", {})]) == []
    assert ranking_flips([]) == []
