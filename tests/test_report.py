"""The sweep report on a real (tiny) sweep with a failed and an unfinished job added, plus the
grouping, pooling and statistics it relies on, against hand calculations."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from conftest import read_metrics, run_cli
from regbench.report import Job, format_mean_std, group_jobs, main, pool_reliability
from regbench.run.spec import experiment_settings as comparable_settings

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


# The fixture's job folders: job number, then the overrides the sweep varies.
SWEEP_JOBS = ["0_regularizer=none,seed=0", "1_regularizer=label_smoothing,seed=0",
              "2_regularizer=none,seed=1", "3_regularizer=label_smoothing,seed=1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2x2 sweep (seed x regularizer), one epoch each; then a diverged job (label_smoothing,
    seed 2) and an unfinished one (none, seed 3, only .hydra/) are added, and the report runs."""
    cwd = tmp_path_factory.mktemp("report")
    folder = cwd / "sweep"
    env = {"REGBENCH_DATA": str(cwd / "data")}
    result = run_cli(["-m", "seed=0,1", "regularizer=none,label_smoothing", "trainer.epochs=1",
                      "trainer.num_threads=1", "trainer.progress=false", "evaluation.figures=false",
                      f"hydra.sweep.dir={folder}"], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [*SWEEP_JOBS, "report"]

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
    """The rows of the group table (the first table; the calibration tables follow it)."""
    rows = {}
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| settings"))
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


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
    copy_job_config(folder / SWEEP_JOBS[0], tmp_path / "0", seed=0)
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


# --- comparisons against a baseline, ranks (hand-built sweep folders) ----------------------------

from scipy import stats as scipy_stats  # noqa: E402

from regbench.report import COMPARISON_COLUMNS, make_report  # noqa: E402

REGULARIZER_PARAMETERS = {"none": {}, "dropout": {"p": 0.5}, "label_smoothing": {"epsilon": 0.1},
                          "confidence_penalty": {"beta": 1.0}}


def write_job(folder: Path, regularizer: str, seed: int, metrics: dict | None,
              status: str = "completed", **settings) -> None:
    """A job folder as a sweep leaves it: .hydra/config.yaml (+ overrides) and metrics.json
    (None: unfinished, no metrics.json). ``settings``: e.g. dataset="mnist", lr=0.1."""
    cfg = config(seed=seed, lr=settings.get("lr", 0.1),
                 regularizer={regularizer: REGULARIZER_PARAMETERS[regularizer]})
    cfg["dataset"]["name"] = settings.get("dataset", "digits")
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"seed={seed}", f"regularizer={regularizer}"]),
                   folder / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(
            {"status": status, "seed": seed, "regularizer": [regularizer], **metrics}))


def fake_sweep(folder: Path, runs: list[tuple]) -> Path:
    """runs: (regularizer, seed, metrics or None, status="completed", settings={})."""
    for number, run in enumerate(runs):
        regularizer, seed, metrics, *rest = run
        status = rest[0] if rest else "completed"
        settings = rest[1] if len(rest) > 1 else {}
        write_job(folder / str(number), regularizer, seed, metrics, status, **settings)
    return folder


def read_comparisons(folder: Path) -> list[dict[str, str]]:
    with (folder / "comparisons.csv").open() as file:
        return list(csv.DictReader(file))


def row_for(rows: list[dict[str, str]], group: str, metric: str) -> dict[str, str]:
    return next(row for row in rows if row["group"] == group and row["metric"] == metric)


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


def test_no_baseline_group_is_a_line(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9 + s / 100 + (reg == "dropout") / 50})
            for reg in ("dropout", "label_smoothing") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert "No baseline group (regularizer=none) in this sweep" in text
    assert read_comparisons(folder) == []
    assert (folder / "comparisons.png").is_file()


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


def test_ranks_across_datasets_from_several_sweep_folders(tmp_path):
    # Three datasets (blocks) in three sweep folders, three regularizers: label_smoothing best
    # everywhere, dropout second on two of them.
    accuracy = {"digits": {"none": 0.95, "dropout": 0.96, "label_smoothing": 0.97},
                "mnist": {"none": 0.97, "dropout": 0.98, "label_smoothing": 0.99},
                "fashion_mnist": {"none": 0.89, "dropout": 0.88, "label_smoothing": 0.90}}
    folders = []
    for dataset, by_regularizer in accuracy.items():
        folders.append(fake_sweep(tmp_path / dataset, [
            (reg, s, {"test/acc": acc + s / 1000}, "completed", {"dataset": dataset})
            for reg, acc in by_regularizer.items() for s in range(2)]))
    main([str(folder) for folder in folders])
    text = (folders[0] / "summary.md").read_text()
    ranks = text.split("## Ranks across settings")[1].split("##")[0]
    # Average ranks: label_smoothing 1, dropout (2 + 2 + 3) / 3 = 2.333, none 2.667.
    assert "Average ranks: label_smoothing 1.000, dropout 2.333, none 2.667." in ranks
    chi2 = scipy_stats.friedmanchisquare([0.95, 0.97, 0.89], [0.96, 0.98, 0.88], [0.97, 0.99, 0.90]).statistic
    assert f"χ²_F = {chi2:.3f}" in ranks
    assert "CD = q_α · sqrt(k(k+1)/(6N)) = 1.914" in ranks  # 2.3437 · sqrt(3·4 / (6·3))
    assert imread(folders[0] / "ranks.png").shape[1] >= 800
    # Comparisons stay within a dataset: each regularizer against none on the same data.
    rows = read_comparisons(folders[0])
    assert {(r["group"], r["baseline"]) for r in rows} == {
        (f"{reg}, dataset.name={d}", f"none, dataset.name={d}")
        for d in accuracy for reg in ("dropout", "label_smoothing")}
    assert all(not (folder / "summary.md").exists() for folder in folders[1:])


def test_one_block_skips_the_ranks_with_a_line(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9}) for reg in ("none", "dropout", "label_smoothing") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert "Ranks across settings: skipped, the sweep covers 1 block" in text


def test_bootstrap_interval_widths_next_to_the_seed_spread(tmp_path):
    runs = [("none", s, {"test/acc": 0.9, "test/acc_ci_low": 0.88 - s / 100, "test/acc_ci_high": 0.92,
                         "test/ece_ci_low": 0.01, "test/ece_ci_high": 0.05}) for s in range(2)]
    runs.append(("dropout", 0, {"test/acc": 0.91}))
    folder = fake_sweep(tmp_path / "sweep", runs)
    rows = table_rows(make_report(folder))
    assert rows["none"][-2:] == ["0.0450", "0.0400"]  # mean of widths 0.04 and 0.05; 0.04
    assert rows["dropout"][-2:] == ["–", "–"]


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
