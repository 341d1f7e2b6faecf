"""summary.md's group table on hand-built sweep folders, its number cells, and the figures it
embeds."""

from __future__ import annotations

from sweep_folders import fake_sweep, table_rows

from regbench.report.command import make_report
from regbench.report.groups import format_mean_std, format_number


def test_bootstrap_interval_widths_next_to_the_seed_spread(tmp_path):
    runs = [("none", s, {"test/acc": 0.9, "test/acc_ci_low": 0.88 - s / 100, "test/acc_ci_high": 0.92,
                         "test/ece_ci_low": 0.01, "test/ece_ci_high": 0.05}) for s in range(2)]
    runs.append(("dropout", 0, {"test/acc": 0.91}))
    folder = fake_sweep(tmp_path / "sweep", runs)
    rows = table_rows(make_report(folder))
    assert rows["none"][-2:] == ["0.0450", "0.0400"]  # mean of widths 0.04 and 0.05; 0.04
    assert rows["dropout"][-2:] == ["–", "–"]


def test_numbers_below_display_precision_never_read_as_zero():
    assert format_number(2e-5, ".4f") == "< 0.0001"
    assert format_number(-2e-5, ".4f") == "> -0.0001"
    assert format_number(0.0, ".4f") == "0.0000"            # zero is zero
    assert format_number(0.00005, ".4f") == "0.0001"        # rounds up: shown as it is
    assert format_number(0.04, ".1f") == "< 0.1" and format_number(3e-7, ".3e") == "3.000e-07"
    # The "0.0000 ± 0.0000" for a nonzero value; a spread below precision next to a mean.
    assert format_mean_std([1e-5, 3e-5], ".4f", 2) == "< 0.0001"
    assert format_mean_std([0.0250, 0.02502], ".4f", 2) == "0.0250 ± < 0.0001"
    assert format_mean_std([0.5, 0.5], ".4f", 2) == "0.5000 ± 0.0000"


def test_a_skipped_figure_is_neither_drawn_nor_embedded_and_an_earlier_one_is_named(tmp_path):
    # No baseline and one block: no comparisons.png and no ranks.png (pictures of sentences).
    runs = [(reg, s, {"test/acc": 0.9 + s / 100}) for reg in ("dropout", "label_smoothing") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert not (folder / "ranks.png").exists() and not (folder / "comparisons.png").exists()
    plots = text.split("## Plots")[1]
    assert "ranks.png" not in plots and "comparisons.png" not in plots
    assert "![accuracy_vs_ece](accuracy_vs_ece.png)" in plots
    assert "- No ranks.png drawn." in text
    # A ranks.png an earlier report left there is not deleted (the report deletes nothing it did not
    # write now) but named as not describing these runs.
    (folder / "ranks.png").write_bytes(b"an earlier report's figure")
    text = make_report(folder)
    assert (folder / "ranks.png").read_bytes() == b"an earlier report's figure"
    assert ("- ⚠ ranks.png in this folder is not from this report (it has nothing to draw there "
            "now): an earlier report or someone else wrote it") in text.split("## Plots")[1]
    assert "comparisons.png in this folder" not in text
