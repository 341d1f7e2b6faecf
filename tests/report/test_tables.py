"""summary.md's group table on hand-built sweep folders."""

from __future__ import annotations

from regbench.report.command import make_report
from sweep_folders import fake_sweep, table_rows


def test_bootstrap_interval_widths_next_to_the_seed_spread(tmp_path):
    runs = [("none", s, {"test/acc": 0.9, "test/acc_ci_low": 0.88 - s / 100, "test/acc_ci_high": 0.92,
                         "test/ece_ci_low": 0.01, "test/ece_ci_high": 0.05}) for s in range(2)]
    runs.append(("dropout", 0, {"test/acc": 0.91}))
    folder = fake_sweep(tmp_path / "sweep", runs)
    rows = table_rows(make_report(folder))
    assert rows["none"][-2:] == ["0.0450", "0.0400"]  # mean of widths 0.04 and 0.05; 0.04
    assert rows["dropout"][-2:] == ["–", "–"]
