"""The report on a real (tiny) sweep with a failed and an unfinished job added, through
``python -m regbench.report`` and ``main``: its files, its one-line errors."""

from __future__ import annotations

import csv
import shutil
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from conftest import read_metrics, run_cli
from regbench.files import atomic_write_json
from regbench.report.command import main
from regbench.run.folder import RunFolder
from regbench.run.spec import (
    HYDRA_CONFIG_FILE,
    HYDRA_OVERRIDES_FILE,
    HYDRA_SUBDIR,
    METRICS_FILE,
    RunSpec,
)
from sweep_folders import read_comparisons, row_for, table_rows

TABLE_METRICS = ("test/acc", "test/nll", "test/ece", "test/ece@temperature", "test/mean_confidence",
                 "gap/acc")
DIVERGED_ERROR = "loss is not finite at epoch 1, step 3 ({'ce': nan, 'label_smoothing': nan})"


def copy_job(source: Path, target: Path, seed: int) -> None:
    """A new job folder as a run leaves it before its first metrics.json: ``source``'s config with
    another seed, claimed (spec.json) and its .hydra/ files written, the seed override first."""
    config = OmegaConf.load(source / HYDRA_SUBDIR / HYDRA_CONFIG_FILE)
    config.seed = seed
    with RunFolder(target).claim(RunSpec.from_config(config)):
        shutil.copytree(source / HYDRA_SUBDIR, target / HYDRA_SUBDIR)
        OmegaConf.save(config, target / HYDRA_SUBDIR / HYDRA_CONFIG_FILE)
        overrides = [o for o in OmegaConf.load(target / HYDRA_SUBDIR / HYDRA_OVERRIDES_FILE)
                     if not o.startswith("seed=")]
        OmegaConf.save(OmegaConf.create([f"seed={seed}", *overrides]),
                       target / HYDRA_SUBDIR / HYDRA_OVERRIDES_FILE)


def job_with(folder: Path, regularizer: str) -> Path:
    return next(job for job in sorted(folder.iterdir())
                if (job / "metrics.json").is_file() and read_metrics(job)["regularizer"] == [regularizer]
                and read_metrics(job)["status"] == "completed")


# The fixture's job folders: job number, then the overrides the sweep varies.
SWEEP_JOBS = ["0_regularizer=none,seed=0", "1_regularizer=label_smoothing,seed=0",
              "2_regularizer=none,seed=1", "3_regularizer=label_smoothing,seed=1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2x2 sweep (seed x regularizer), one epoch each; then a diverged job (label_smoothing,
    seed 2) and an unfinished one (none, seed 3: spec.json and .hydra/, no metrics.json yet) are
    added, and the report runs."""
    cwd = tmp_path_factory.mktemp("report")
    folder = cwd / "sweep"
    env = {"REGBENCH_DATA": str(cwd / "data")}
    result = run_cli(["-m", "seed=0,1", "regularizer=none,label_smoothing", "trainer.epochs=1",
                      "trainer.num_threads=1", "trainer.progress=false", "evaluation.figures=false",
                      f"hydra.sweep.dir={folder}"], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [*SWEEP_JOBS, "report"]

    copy_job(job_with(folder, "label_smoothing"), folder / "4", seed=2)
    atomic_write_json(folder / "4" / METRICS_FILE, {
        "status": "diverged", "error": DIVERGED_ERROR, "diverged_epoch": 1, "diverged_step": 3,
        "dataset": "digits", "model": "mlp", "regularizer": ["label_smoothing"], "seed": 2,
        "train/loss": None, "epochs": 0, "seconds": 0.25})
    copy_job(job_with(folder, "none"), folder / "5", seed=3)

    report = run_cli([str(folder)], cwd=cwd, module="regbench.report", env=env, timeout=120)
    return folder, report


def completed_metrics(folder: Path) -> dict[str, list[dict]]:
    """The completed jobs' metrics.json, per regularizer: what the report must average."""
    groups: dict[str, list[dict]] = {}
    for job in folder.iterdir():
        if (job / "metrics.json").is_file():
            metrics = read_metrics(job)
            if metrics["status"] == "completed":
                groups.setdefault("+".join(metrics["regularizer"]), []).append(metrics)
    return groups


# --- the report on a real sweep ------------------------------------------------------------------

def test_report_succeeds_and_prints_the_table(sweep):
    folder, report = sweep
    assert report.returncode == 0, report.stderr
    markdown = (folder / "summary.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_rows(markdown)) == 2  # two groups in the group table
    assert "## Calibration" in markdown and "| settings | seeds | raw | temperature" in markdown
    for line in table:
        assert line in report.stdout
    assert "summary.csv" in report.stdout


def test_summary_csv_has_one_row_per_job(sweep):
    folder, _ = sweep
    with (folder / "summary.csv").open() as file:
        rows = {row["job"]: row for row in csv.DictReader(file)}
    assert sorted(rows) == sorted([*SWEEP_JOBS, "4", "5"])
    assert (rows["4"]["status"], rows["4"]["seed"], rows["4"]["regularizer"]) == ("diverged", "2",
                                                                               "label_smoothing")
    assert rows["4"]["detail"] == DIVERGED_ERROR
    assert rows["4"]["train/nll"] == ""  # null in metrics.json
    assert (rows["5"]["status"], rows["5"]["seed"], rows["5"]["regularizer"]) == ("unfinished", "3", "none")
    assert rows["5"]["test/acc"] == ""
    for name in SWEEP_JOBS:
        metrics = read_metrics(folder / name)
        row = rows[name]
        assert row["status"] == "completed"
        assert int(row["seed"]) == metrics["seed"]
        assert row["regularizer"] == "+".join(metrics["regularizer"])
        numeric = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"}
        assert {"test/acc", "test/ece@temperature", "gap/acc", "epochs", "seconds"} <= numeric.keys()
        for key, value in numeric.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12), key
    # The only setting that varies besides the seed: the regularizer (and label smoothing's epsilon,
    # present in half the jobs); ignored keys such as trainer.num_threads are not columns.
    assert "trainer.num_threads" not in rows[SWEEP_JOBS[0]] and "dataset.root" not in rows[SWEEP_JOBS[0]]
    assert rows["5"]["overrides"].split()[0] == "seed=3"


def test_summary_md_groups_seeds_with_mean_and_std(sweep):
    folder, _ = sweep
    rows = table_rows((folder / "summary.md").read_text())
    expected = completed_metrics(folder)
    assert set(rows) == set(expected) == {"none", "label_smoothing"}
    for label, runs in expected.items():
        cells = rows[label]
        assert cells[0] == "2"  # completed seeds: the diverged and unfinished jobs are not counted
        for cell, key in zip(cells[1:], TABLE_METRICS):
            values = [run[key] for run in runs]
            assert cell == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}", key
        assert cells[7] == "1.0 ± 0.0"  # epochs


def test_summary_md_lists_failed_and_unfinished_runs(sweep):
    folder, report = sweep
    markdown = (folder / "summary.md").read_text()
    problems = markdown.split("## Runs that did not complete")[1]
    lines = [line for line in problems.splitlines() if line.startswith("- ")]
    assert len(lines) == 2
    assert lines[0].startswith("- `4` **diverged**: " + DIVERGED_ERROR)
    assert lines[1].startswith("- `5` **unfinished**: no metrics.json")
    assert "seed=3" in lines[1]
    assert lines[0] in report.stdout


@pytest.mark.parametrize("name", ["accuracy_vs_ece.png", "reliability.png", "confidence_hist.png"])
def test_plots_are_written(sweep, name):
    folder, _ = sweep
    image = imread(folder / name)
    height, width = image.shape[:2]
    assert height >= 250 and width >= 400
    # Not a blank canvas: a real plot has many distinct colors and dark (text, axes) pixels.
    pixels = image[..., :3].reshape(-1, 3)
    assert len({tuple(p) for p in pixels[::7].tolist()}) > 50
    assert (pixels.mean(axis=1) < 0.3).mean() > 0.005


def test_report_on_an_unfinished_sweep_with_no_completed_run(tmp_path, sweep):
    folder, _ = sweep
    copy_job(folder / SWEEP_JOBS[0], tmp_path / "0", seed=0)
    main([str(tmp_path)])
    assert "**unfinished**" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "reliability.png").stat().st_size > 1000


# --- errors --------------------------------------------------------------------------------------

def test_missing_folder_is_one_line_error(tmp_path):
    result = run_cli([str(tmp_path / "nowhere")], cwd=tmp_path, module="regbench.report", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"regbench-report: error: {tmp_path / 'nowhere'} does not exist or is not a folder"]


def test_folder_without_jobs_is_one_line_error(tmp_path, capsys):
    (tmp_path / "notajob").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no job folders" in error


# --- the report on a real digits sweep ------------------------------------------------------------

# --- the report on a real digits sweep ------------------------------------------------------------

@pytest.mark.slow
def test_confidence_penalty_lowers_mean_confidence_on_digits(tmp_path):
    folder = tmp_path / "sweep"
    result = run_cli(["-m", "regularizer=none,confidence_penalty", "seed=0,1,2", "trainer.epochs=3",
                      "trainer.num_threads=1", "trainer.progress=false", "evaluation.figures=false",
                      f"hydra.sweep.dir={folder}"],
                     cwd=tmp_path, env={"REGBENCH_DATA": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    report = run_cli([str(folder)], cwd=tmp_path, module="regbench.report", timeout=120)
    assert report.returncode == 0, report.stderr
    row = row_for(read_comparisons(folder), "confidence_penalty", "test/mean_confidence")
    assert (row["baseline"], row["n_pairs"], row["verdict"]) == ("none", "3", "lower")
    assert float(row["p_holm"]) < 0.01 and float(row["prob_improvement"]) == 0.0
    assert "confidence_penalty vs none: mean confidence -" in report.stdout
