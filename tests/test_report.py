"""The sweep report on a real (tiny) sweep with a failed and an unfinished job added, plus the
grouping, pooling and statistics it relies on, against hand calculations."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from conftest import read_metrics, run_cli
from regbench.report import (
    Job,
    format_mean_std,
    group_jobs,
    main,
    pool_reliability,
)
from regbench.spec import experiment_settings as comparable_settings

TABLE_METRICS = ("test/acc", "test/nll", "test/ece", "test/ece@temperature", "test/mean_confidence",
                 "gap/acc")
DIVERGED_ERROR = "loss is not finite at epoch 1, step 3 ({'ce': nan, 'label_smoothing': nan})"


def copy_job_config(source: Path, target: Path, seed: int) -> None:
    """A new job folder holding ``source``'s Hydra files, with another seed."""
    shutil.copytree(source / ".hydra", target / ".hydra")
    config = OmegaConf.load(target / ".hydra" / "config.yaml")
    config.seed = seed
    OmegaConf.save(config, target / ".hydra" / "config.yaml")
    overrides = [o for o in OmegaConf.load(target / ".hydra" / "overrides.yaml")
                 if not o.startswith("seed=")]
    OmegaConf.save(OmegaConf.create([f"seed={seed}", *overrides]), target / ".hydra" / "overrides.yaml")


def job_with(folder: Path, regularizer: str) -> Path:
    return next(job for job in sorted(folder.iterdir())
                if (job / "metrics.json").is_file() and read_metrics(job)["regularizer"] == [regularizer]
                and read_metrics(job)["status"] == "completed")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2x2 sweep (seed x regularizer), one epoch each; then a diverged job (label_smoothing,
    seed 2) and an unfinished one (none, seed 3, only .hydra/) are added, and the report runs."""
    cwd = tmp_path_factory.mktemp("report")
    folder = cwd / "sweep"
    env = {"REGBENCH_DATA": str(cwd / "data")}
    result = run_cli(["-m", "seed=0,1", "regularizer=none,label_smoothing", "trainer.epochs=1",
                      "trainer.num_threads=1", "trainer.progress=false",
                      f"hydra.sweep.dir={folder}"], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]

    copy_job_config(job_with(folder, "label_smoothing"), folder / "4", seed=2)
    (folder / "4" / "metrics.json").write_text(json.dumps({
        "status": "diverged", "error": DIVERGED_ERROR, "diverged_epoch": 1, "diverged_step": 3,
        "dataset": "digits", "model": "mlp", "regularizer": ["label_smoothing"], "seed": 2,
        "train/loss": None, "epochs": 0, "seconds": 0.25}))
    copy_job_config(job_with(folder, "none"), folder / "5", seed=3)

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


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| settings"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


# --- the report on a real sweep ------------------------------------------------------------------

def test_report_succeeds_and_prints_the_table(sweep):
    folder, report = sweep
    assert report.returncode == 0, report.stderr
    markdown = (folder / "summary.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 4  # header, alignment, two groups
    for line in table:
        assert line in report.stdout
    assert "summary.csv" in report.stdout


def test_summary_csv_has_one_row_per_job(sweep):
    folder, _ = sweep
    with (folder / "summary.csv").open() as file:
        rows = {row["job"]: row for row in csv.DictReader(file)}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "5"]
    assert (rows["4"]["status"], rows["4"]["seed"], rows["4"]["regularizer"]) == ("diverged", "2",
                                                                               "label_smoothing")
    assert rows["4"]["detail"] == DIVERGED_ERROR
    assert rows["4"]["train/nll"] == ""  # null in metrics.json
    assert (rows["5"]["status"], rows["5"]["seed"], rows["5"]["regularizer"]) == ("unfinished", "3", "none")
    assert rows["5"]["test/acc"] == ""
    for name in "0123":
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
    assert "trainer.num_threads" not in rows["0"] and "dataset.root" not in rows["0"]
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
    copy_job_config(folder / "0", tmp_path / "0", seed=0)
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


# --- grouping, pooling, statistics ---------------------------------------------------------------

def config(seed: int = 0, lr: float = 0.1, regularizer: dict | None = None, **trainer) -> dict:
    return {
        "seed": seed,
        "dataset": {"name": "digits", "root": "data", "download": True, "num_workers": 2},
        "optimizer": {"name": "sgd", "lr": lr, "betas": [0.9, 0.999]},
        "trainer": {"epochs": 3, "num_threads": 0, "device": "auto", "progress": None, **trainer},
        "regularizer": {"none": {}} if regularizer is None else regularizer,
    }


def job(name: str, cfg: dict) -> Job:
    return Job(name, Path(name), "completed", comparable_settings(cfg), cfg["seed"])


def test_seed_never_splits_a_group():
    jobs = [job(str(i), config(seed=i)) for i in range(4)]
    grouping = group_jobs(jobs)
    assert len(grouping.groups) == 1
    assert grouping.groups[0].label == "none"
    assert [j.name for j in grouping.groups[0].jobs] == ["0", "1", "2", "3"]


def test_ignored_keys_do_not_split_groups():
    other = config(seed=1, num_threads=4, device="cuda", progress=True)
    other["dataset"].update(root="/elsewhere", download=False, num_workers=0)
    grouping = group_jobs([job("0", config(seed=0, num_threads=1, device="cpu")), job("1", other)])
    assert grouping.varying == []
    assert len(grouping.groups) == 1


def test_results_changing_keys_split_groups_and_name_them():
    jobs = [job(str(i), config(seed=seed, lr=lr, regularizer=reg))
            for i, (seed, lr, reg) in enumerate([
                (0, 0.1, None), (1, 0.1, None), (0, 0.05, None),
                (0, 0.1, {"label_smoothing": {"epsilon": 0.1}, "dropout": {"p": 0.5}}),
                (1, 0.1, {"label_smoothing": {"epsilon": 0.1}, "dropout": {"p": 0.5}}),
                (0, 0.1, {"label_smoothing": {"epsilon": 0.2}, "dropout": {"p": 0.5}}),
            ])]
    grouping = group_jobs(jobs)
    labels = {group.label: [j.name for j in group.jobs] for group in grouping.groups}
    # epsilon takes two values, so it is named; dropout.p is only present or absent, so it is not.
    assert labels == {
        "none, optimizer.lr=0.1": ["0", "1"],
        "none, optimizer.lr=0.05": ["2"],
        "dropout+label_smoothing, optimizer.lr=0.1, regularizer.label_smoothing.epsilon=0.1": ["3", "4"],
        "dropout+label_smoothing, optimizer.lr=0.1, regularizer.label_smoothing.epsilon=0.2": ["5"],
    }
    assert grouping.varying[0] == "regularizer"
    assert "regularizer.dropout.p" in grouping.varying  # still a summary.csv column


def test_regularizer_list_is_a_sorted_name():
    assert comparable_settings(config(regularizer={"l2": {"weight_decay": 1e-4},
                                                   "dropout": {"p": 0.1}}))["regularizer"] == "dropout+l2"
    assert comparable_settings(config(regularizer={}))["regularizer"] == "none"


def test_reliability_bins_pool_by_counts():
    edges = [0, 0.5, 1]
    first = {"bin_edges": edges, "bin_count": [2, 0], "bin_confidence": [0.4, None],
             "bin_accuracy": [0.5, None]}
    second = {"bin_edges": edges, "bin_count": [6, 4], "bin_confidence": [0.2, 0.9],
              "bin_accuracy": [0.0, 0.75]}
    confidence, accuracy, counts = pool_reliability([first, second])
    assert counts == [8, 4]
    # Bin 0: (2 * 0.4 + 6 * 0.2) / 8 = 0.25 mean confidence; (1 + 0) correct / 8 = 0.125 accuracy.
    assert confidence == pytest.approx([0.25, 0.9])
    assert accuracy == pytest.approx([0.125, 0.75])
    confidence, accuracy, counts = pool_reliability([first])
    assert counts == [2, 0] and math.isnan(confidence[1]) and math.isnan(accuracy[1])


def test_mean_and_sample_std_formatting():
    # mean 0.5, sample std sqrt(((0.4-0.5)^2 + (0.6-0.5)^2) / 1) = 0.1414.
    assert format_mean_std([0.4, 0.6], ".4f", runs=2) == "0.5000 ± 0.1414"
    assert format_mean_std([0.4], ".4f", runs=1) == "0.4000"
    assert format_mean_std([0.4, 0.6], ".2f", runs=3) == "0.50 ± 0.14 (n=2)"
    assert format_mean_std([], ".4f", runs=0) == "–"
