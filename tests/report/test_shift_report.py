"""report/shift.py and the shift keys in the verdicts: the corruption error against a hand
calculation, shift.csv, the severity figure, the paired verdicts against scipy, and a sweep
without shift keys left as it was."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
from scipy import stats as scipy_stats

from conftest import FAST, read_metrics, run_cli
from regbench.report.command import make_report
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_jobs
from regbench.report.shift import corruption_errors, relative_corruption_errors, severity_curve
from regbench.run.spec import lower_is_better
from sweep_folders import fake_sweep, read_comparisons, row_for

# Accuracy per seed (seed 0, seed 1) of each corruption at severities 1 and 2.
BASELINE_ACC = {"gaussian_noise": {1: (0.90, 0.80), 2: (0.70, 0.60)},
                "contrast": {1: (0.95, 0.95), 2: (0.85, 0.75)},
                "brightness": {1: (1.0, 1.0), 2: (1.0, 1.0)},  # no error: CE undefined
                "pixelate": {1: (0.9, 0.9), 2: (0.8, 0.8)}}  # the other group lacks it
SMOOTH_ACC = {"gaussian_noise": {1: (0.92, 0.88), 2: (0.80, 0.70)},
              "contrast": {1: (0.90, 0.90), 2: (0.80, 0.80)},
              "brightness": {1: (0.9, 0.9), 2: (0.9, 0.9)}}


def corruption_metrics(accuracies: dict, seed: int) -> dict[str, float]:
    return {f"shift/{c}/s{s}/acc": values[seed] for c, by_severity in accuracies.items()
            for s, values in by_severity.items()}


def shift_sweep(folder):
    runs = [("none", seed, {"test/acc": 0.97, "test/ece": 0.02, **corruption_metrics(BASELINE_ACC, seed)})
            for seed in (0, 1)]
    runs += [("label_smoothing", seed, {"test/acc": 0.97, "test/ece": 0.05,
                                        **corruption_metrics(SMOOTH_ACC, seed)}) for seed in (0, 1)]
    return fake_sweep(folder, runs)


def read_csv(path) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row["settings"]: row for row in csv.DictReader(file)}


def test_the_corruption_error_equals_a_hand_calculation(tmp_path):
    folder = shift_sweep(tmp_path / "sweep")
    text = make_report(folder)
    # Errors averaged over seeds, summed over severities 1 and 2:
    # gaussian_noise: baseline (1 - 0.85) + (1 - 0.65) = 0.50; label_smoothing 0.10 + 0.25 = 0.35.
    # contrast: baseline 0.05 + 0.20 = 0.25; label_smoothing 0.10 + 0.20 = 0.30.
    # CE = 0.35 / 0.50 = 0.7 and 0.30 / 0.25 = 1.2; mCE = (0.7 + 1.2) / 2 = 0.95. brightness (the
    # baseline made no error) and pixelate (label_smoothing lacks it) are left out.
    rows = read_csv(folder / "shift.csv")
    smooth, base = rows["label_smoothing"], rows["none"]
    assert float(smooth["ce/gaussian_noise"]) == pytest.approx(0.7)
    assert float(smooth["ce/contrast"]) == pytest.approx(1.2)
    assert float(smooth["mce"]) == pytest.approx(0.95)
    assert smooth["ce/brightness"] == "" and smooth["ce/pixelate"] == ""
    assert (smooth["baseline"], smooth["seeds"]) == ("none", "2")
    # The baseline against itself: every defined CE is 1.
    assert float(base["mce"]) == pytest.approx(1.0) and float(base["ce/pixelate"]) == 1.0
    section = text.split("## Corruption shift")[1].split("\n## ")[0]
    assert "| label_smoothing | none | 2 | 2 | 95.0 |" in section
    assert "| none | none | 2 | 3 | 100.0 |" in section


def test_corruption_errors_sum_only_the_severities_both_groups_recorded():
    group = {"fog": {1: 0.2, 2: 0.4, 3: 0.6}}
    baseline = {"fog": {2: 0.2, 3: 0.3, 4: 0.9}}
    # Severities 2 and 3: (0.4 + 0.6) / (0.2 + 0.3) = 2.
    assert relative_corruption_errors(group, baseline) == pytest.approx({"fog": 2.0})
    assert math.isnan(relative_corruption_errors(group, {"fog": {1: 0.0}})["fog"])
    assert relative_corruption_errors(group, {"snow": {1: 0.5}}) == {}


def test_errors_average_the_completed_seeds_and_read_any_level(tmp_path):
    runs = [("none", 0, {"shift/fog/s0/acc": 0.6, "shift/fog/s1/acc": 0.9}),
            ("none", 1, {"shift/fog/s0/acc": 0.8}),
            ("none", 2, {"shift/fog/s0/acc": 0.0}, "failed")]
    grouping = group_jobs(load_jobs(fake_sweep(tmp_path / "sweep", runs)))
    # Level 0 (MNIST-C's one level): 1 - (0.6 + 0.8) / 2; level 1 from the one seed that has it.
    errors = corruption_errors(grouping.groups[0])
    assert list(errors) == ["fog"] and errors["fog"] == pytest.approx({0: 0.3, 1: 0.1})


SEVERITY = {0: ([0.80, 0.70, 0.60], [0.05, 0.10, 0.20]),
            1: ([0.82, 0.74, 0.61], [0.04, 0.08, 0.16]),
            2: ([0.81, 0.69, 0.59], [0.06, 0.13, 0.21])}


def severity_runs() -> list[tuple]:
    runs = []
    for regularizer, offset in (("none", 0.0), ("label_smoothing", 0.01)):
        for seed, (accuracies, eces) in SEVERITY.items():
            metrics = {"test/acc": 0.95 + offset, "test/ece": 0.02, "test/nll": 0.2,
                       "shift/acc": accuracies[1] + offset, "shift/nll": 1.0 - offset,
                       "shift/ece": eces[1] - offset, "shift/ece@temperature": eces[1] / 2,
                       "shift/gaussian_noise/s1/acc": accuracies[0] + offset}
            for level, (accuracy, ece) in enumerate(zip(accuracies, eces), 1):
                metrics[f"shift/acc@s{level}"] = accuracy + offset
                metrics[f"shift/ece@s{level}"] = ece - (offset * seed if level == 3 else offset)
            runs.append((regularizer, seed, metrics))
    return runs


def test_the_severity_curve_starts_at_the_clean_test_metric(tmp_path):
    grouping = group_jobs(load_jobs(fake_sweep(tmp_path / "sweep", severity_runs())))
    levels, means, spreads = severity_curve(grouping.groups[0], "acc", "test/acc", [1, 2, 3])
    assert levels == [0, 1, 2, 3]
    # Severity 2 over seeds 0, 1, 2: 0.70, 0.74, 0.69; mean 0.71, sample std 0.026458.
    assert means == pytest.approx([0.95, 0.81, 0.71, 0.60])
    assert spreads[0] == 0 and spreads[2] == pytest.approx(0.0264575, rel=1e-5)


def test_shift_keys_get_paired_verdicts_in_the_right_direction(tmp_path):
    # Six seeds, every pair differing by the same amount: the exact sign-flip p = 2 * 0.5^6 =
    # 0.031, one comparison per metric, so label_smoothing is significantly higher in accuracy
    # under corruption and lower in NLL and ECE; the direction rule says which is better.
    runs = []
    for regularizer, step in (("none", 0), ("label_smoothing", 1)):
        runs += [(regularizer, seed, {"test/acc": 0.9, "shift/acc": 0.6 + 0.01 * seed + 0.02 * step,
                                      "shift/nll": 1.0 + 0.1 * seed - 0.1 * step,
                                      "shift/ece@s5": 0.2 + 0.01 * seed - 0.03 * step})
                 for seed in range(6)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    rows = read_comparisons(folder)
    verdicts = {row["metric"]: (row["verdict"], float(row["mean_diff"]), float(row["p_holm"]))
                for row in rows if row["group"] == "label_smoothing"}
    assert verdicts["shift/acc"] == ("higher", pytest.approx(0.02), pytest.approx(2 * 0.5 ** 6))
    assert verdicts["shift/nll"][:2] == ("lower", pytest.approx(-0.1))
    assert verdicts["shift/ece@s5"][:2] == ("lower", pytest.approx(-0.03))
    assert not lower_is_better("shift/acc") and lower_is_better("shift/acc@s5") is False
    assert all(lower_is_better(key) for key in ("shift/nll", "shift/ece", "shift/ece@temperature",
                                                 "shift/ece@s5"))
    assert "- label_smoothing vs none: accuracy under corruption +2.00 pp [2.00, 2.00], p_holm = 0.031, higher" in text
    assert "- label_smoothing vs none: NLL under corruption -0.1000" in text


def test_a_varying_difference_gets_scipys_paired_t_test(tmp_path):
    runs = [("none", s, {"test/acc": 0.9, "shift/ece@s5": e})
            for s, e in enumerate([0.20, 0.25, 0.22, 0.30])]
    smooth = [0.15, 0.21, 0.20, 0.22]
    runs += [("label_smoothing", s, {"test/acc": 0.9, "shift/ece@s5": e}) for s, e in enumerate(smooth)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    row = row_for(read_comparisons(folder), "label_smoothing", "shift/ece@s5")
    expected = scipy_stats.ttest_rel(smooth, [0.20, 0.25, 0.22, 0.30])
    assert float(row["p_value"]) == pytest.approx(expected.pvalue, rel=1e-12)
    assert row["verdict"] == ("lower" if expected.pvalue < 0.05 else "indistinguishable")
    assert "label_smoothing vs none: ECE at corruption severity 5 -0.0475" in text


def test_the_severity_figure_is_written_and_embedded(tmp_path):
    folder = fake_sweep(tmp_path / "sweep", severity_runs())
    text = make_report(folder)
    assert (folder / "shift_severity.png").stat().st_size > 10_000
    assert "![accuracy and ECE against corruption severity](shift_severity.png)" in text


def test_a_sweep_without_shift_keys_has_no_shift_section_file_or_figure(tmp_path):
    runs = [(regularizer, seed, {"test/acc": 0.9 + 0.01 * seed, "test/nll": 0.3})
            for regularizer in ("none", "dropout") for seed in (0, 1, 2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    # No section, no verdict, no figure link.
    assert "## Corruption shift" not in text and "corruption" not in text
    assert "shift_severity.png" not in text and "shift.csv" not in text
    assert not (folder / "shift.csv").exists() and not (folder / "shift_severity.png").exists()
    assert {row["metric"] for row in read_comparisons(folder)} == {"test/acc", "test/nll"}


@pytest.mark.slow
def test_a_digits_sweep_with_shift_and_ood_is_reported_from_the_runs_own_files(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "regularizer=none,label_smoothing", "seed=0,1", *FAST, "trainer.epochs=1",
                      "evaluation.shift=standard", "evaluation.shift_corruptions=[gaussian_noise,contrast]",
                      "evaluation.ood=[gaussian]", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = run_cli([str(sweep)], cwd=tmp_path, module="regbench.report")
    assert report.returncode == 0, report.stderr
    runs = {}
    for folder in sorted(sweep.iterdir()):
        if (folder / "metrics.json").is_file():
            metrics = read_metrics(folder)
            runs[(metrics["regularizer"][0], metrics["seed"])] = metrics
    # mCE from the runs' metrics.json, by the definition.
    def error(regularizer, key):
        return 1 - statistics.fmean(runs[(regularizer, seed)][key] for seed in (0, 1))
    ratios = []
    for corruption in ("gaussian_noise", "contrast"):
        keys = [f"shift/{corruption}/s{level}/acc" for level in range(1, 6)]
        ratios.append(sum(error("label_smoothing", k) for k in keys) / sum(error("none", k) for k in keys))
    assert float(read_csv(sweep / "shift.csv")["label_smoothing"]["mce"]) == pytest.approx(statistics.fmean(ratios))
    # The verdicts' p against scipy on the same files.
    rows = read_comparisons(sweep)
    for key in ("shift/acc", "shift/ece@s5", "ood/auroc_energy", "ood/fpr95_msp"):
        ours = [runs[("label_smoothing", seed)][key] for seed in (0, 1)]
        theirs = [runs[("none", seed)][key] for seed in (0, 1)]
        row = row_for(rows, "label_smoothing", key)
        assert float(row["mean_diff"]) == pytest.approx(statistics.fmean(ours) - statistics.fmean(theirs))
        if row["test"] == "paired t-test":
            assert float(row["p_value"]) == pytest.approx(scipy_stats.ttest_rel(ours, theirs).pvalue, rel=1e-9)
    for name in ("shift_severity.png", "ood_histograms.png"):
        assert (sweep / name).stat().st_size > 10_000
    assert "## Corruption shift" in report.stdout and "## Out-of-distribution detection" in report.stdout
