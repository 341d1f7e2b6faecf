"""One run counted once: job folders holding the same experiment identity and seed are merged, and
copies that disagree are refused; by hand on Jobs, and end to end on a real tiny run's copied
folder through ``python -m regbench.report``."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from conftest import FAST, read_metrics, run_cli
from regbench.files import atomic_write_json
from regbench.report.duplicates import merge_duplicates
from regbench.report.jobs import Job, ReportError
from regbench.run.spec import METRICS_FILE, experiment_settings
from sweep_folders import config, table_rows


def job(name: str, seed: int = 0, status: str = "completed", lr: float = 0.1, **metrics) -> Job:
    return Job(name, Path(name), status, experiment_settings(config(seed=seed, lr=lr)), seed,
               metrics={"status": status, **metrics})


# --- the merge rule ------------------------------------------------------------------------------

def test_the_same_identity_and_seed_twice_is_one_run_that_names_the_other_folder():
    jobs = merge_duplicates([job("a/0", **{"test/acc": 0.9}), job("a/1", seed=1, **{"test/acc": 0.8}),
                             job("b/0", **{"test/acc": 0.9, "seconds": 3.0})])
    assert [(j.name, j.merged) for j in jobs] == [("a/0", ["b/0"]), ("a/1", [])]


def test_another_seed_or_setting_is_another_run():
    jobs = merge_duplicates([job("0"), job("1", seed=1), job("2", lr=0.05)])
    assert [j.merged for j in jobs] == [[], [], []]


def test_a_completed_copy_is_kept_over_an_unfinished_or_failed_one():
    jobs = merge_duplicates([job("0", status="unfinished"), job("1", status="diverged"),
                             job("2", **{"test/acc": 0.9})])
    assert [(j.name, j.merged) for j in jobs] == [("2", ["0", "1"])]


def test_copies_whose_settings_cannot_be_read_are_not_merged():
    unreadable = [Job(name, Path(name), "unreadable", None) for name in ("0", "1")]
    assert merge_duplicates(unreadable) == unreadable


def test_completed_copies_with_different_test_metrics_are_refused_naming_both_folders():
    with pytest.raises(ReportError) as error:
        merge_duplicates([job("a/0", **{"test/acc": 0.9, "test/nll": 0.3}),
                          job("b/0", **{"test/acc": 0.9, "test/nll": 0.4})])
    assert str(error.value) == (
        "`a/0` and `b/0` hold the same run (none, seed 0) with different results (test/nll 0.3 and "
        "0.4); move the folder that should not count out of the sweep, or report them separately")


# --- end to end on a real run's copied folder ----------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A one-job sweep (regularizer none, seed 0, one epoch), as the run leaves it."""
    cwd = tmp_path_factory.mktemp("duplicates")
    folder = cwd / "sweep"
    result = run_cli(["-m", "seed=0", *FAST, "trainer.epochs=1", f"hydra.sweep.dir={folder}"], cwd=cwd,
                     env={"REGBENCH_DATA": str(cwd / "data")})
    assert result.returncode == 0, result.stderr
    return folder


def copy_sweep(sweep: Path, target: Path, copies: int) -> tuple[Path, str]:
    """``target``: the sweep's job folder and ``copies`` copies of it under other names."""
    (original,) = [path for path in sweep.iterdir() if (path / METRICS_FILE).is_file()]
    for number in range(copies + 1):
        shutil.copytree(original, target / (original.name if number == 0 else f"copy{number}"))
    return target, original.name


def test_a_relaunched_sweeps_copies_count_as_one_seed(sweep, tmp_path):
    folder, name = copy_sweep(sweep, tmp_path / "sweep", copies=3)
    report = run_cli([str(folder)], cwd=tmp_path, module="regbench.report", timeout=120)
    assert report.returncode == 0, report.stderr
    markdown = (folder / "summary.md").read_text()
    assert table_rows(markdown)["none"][0] == "1"  # seeds
    assert ("- 4 folders hold one run (none | mlp on digits | seed 0), counted once as "
            f"`{name}`: `{name}`, `copy1`, `copy2`, `copy3`") in report.stdout
    with (folder / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["job"], row["merged"]) for row in rows] == [(name, "copy1; copy2; copy3")]


def test_pooling_a_sweep_with_its_copy_counts_each_seed_once(sweep, tmp_path):
    copy, name = copy_sweep(sweep, tmp_path / "copy", copies=0)
    report = run_cli([str(sweep), str(copy)], cwd=tmp_path, module="regbench.report", timeout=120)
    assert report.returncode == 0, report.stderr
    assert table_rows(report.stdout)["none"][0] == "1"
    assert f"counted once as `{sweep / name}`: `{sweep / name}`, `{copy / name}`" in report.stdout


def test_copies_that_disagree_are_refused_in_one_line(sweep, tmp_path):
    folder, name = copy_sweep(sweep, tmp_path / "sweep", copies=1)
    metrics = read_metrics(folder / "copy1")
    atomic_write_json(folder / "copy1" / METRICS_FILE, {**metrics, "test/acc": 0.5})
    report = run_cli([str(folder)], cwd=tmp_path, module="regbench.report", timeout=120)
    assert report.returncode == 2
    assert report.stderr.strip().splitlines() == [
        f"regbench-report: error: `{name}` and `copy1` hold the same run (none | mlp on digits | "
        f"seed 0) with different results (test/acc {metrics['test/acc']} and 0.5); move the folder "
        "that should not count out of the sweep, or report them separately"]
    assert not (folder / "summary.md").exists()
