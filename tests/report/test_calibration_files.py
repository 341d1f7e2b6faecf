"""The runs' test_calibration.json files behind the report's reliability and confidence figures: one
that cannot be read is named in one warning line and in summary.md, and each figure says how many
runs it pools."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_jobs
from regbench.report.plots import confidence_histograms, reliability
from sweep_folders import fake_sweep, write_calibration


def sweep_with_a_truncated_calibration_file(folder: Path) -> Path:
    """none with 3 seeds (seed 1's test_calibration.json cut in half), dropout with 2."""
    runs = [(regularizer, seed, {"test/acc": 0.9, "test/ece": 0.05})
            for regularizer, seeds in (("none", 3), ("dropout", 2)) for seed in range(seeds)]
    fake_sweep(folder, runs)
    paths = [write_calibration(folder / str(number), seed)
             for number, (_, seed, _) in enumerate(runs)]
    paths[1].write_bytes(paths[1].read_bytes()[:300])
    return paths[1]


def test_a_truncated_calibration_file_is_named_in_one_warning_line_and_in_summary_md(tmp_path):
    truncated = sweep_with_a_truncated_calibration_file(tmp_path / "sweep")
    report = run_cli([str(tmp_path / "sweep")], cwd=tmp_path, module="regbench.report", timeout=120)
    assert report.returncode == 0, report.stderr
    (line,) = report.stderr.strip().splitlines()
    assert line.startswith(f"regbench-report: warning: {truncated} cannot be read (")
    assert line.endswith("): the reliability and confidence figures of none pool 2 of its 3 runs")
    markdown = (tmp_path / "sweep" / "summary.md").read_text()
    assert f"- ⚠ {line.removeprefix('regbench-report: warning: ')}" in markdown.split("## Plots")[1]


def test_each_calibration_figure_says_how_many_runs_it_pools(tmp_path):
    sweep_with_a_truncated_calibration_file(tmp_path / "sweep")
    grouping = group_jobs(load_jobs(tmp_path / "sweep"))
    for figure in (reliability(grouping), confidence_histograms(grouping)):
        titles = [axes.get_title().split(",")[0] for axes in figure.axes if axes.get_title()]
        assert titles == ["none\n2 of 3 seeds pooled", "dropout\n2 seeds"]
