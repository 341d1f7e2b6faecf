"""report/ood.py and the OOD keys in the verdicts: direction, the paired verdicts, the summary
table by hand, the histograms from the runs' test_ood.npz (pooled over seeds, a torn file named),
and a sweep without OOD keys left as it was."""

from __future__ import annotations

import numpy as np
import pytest

from regbench.evaluation.ood import SCORES
from regbench.report.command import make_report
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_jobs
from regbench.report.ood import pooled_scores
from regbench.report.ranks import build_ranking
from regbench.run.spec import TEST_OOD_FILE, lower_is_better
from sweep_folders import fake_sweep, read_comparisons, row_for

SETS = ("gaussian", "held_out_classes")


def ood_metrics(auroc: float, fpr95: float) -> dict[str, float]:
    """The keys a run with evaluation.ood=[gaussian, held_out_classes] records: per set, and the
    means over the two sets (gaussian 0.05 above the mean, held_out_classes 0.05 below)."""
    metrics = {}
    for score in SCORES:
        metrics[f"ood/auroc_{score}"], metrics[f"ood/fpr95_{score}"] = auroc, fpr95
        for name, shift in zip(SETS, (0.05, -0.05)):
            metrics.update({f"ood/{name}/auroc_{score}": auroc + shift,
                            f"ood/{name}/fpr95_{score}": fpr95 - shift,
                            f"ood/{name}/aupr_in_{score}": auroc, f"ood/{name}/aupr_out_{score}": auroc})
    return metrics


def write_scores(folder, seed: int, size: int = 50) -> dict[str, np.ndarray]:
    """A test_ood.npz in the agreed format: in_<score> and <set>_<score>, float32."""
    generator = np.random.default_rng(seed)
    arrays = {f"{name}_{score}": generator.uniform(0.1, 1.0, size if name == "in" else size // 2)
              .astype(np.float32) for name in ("in", *SETS) for score in SCORES}
    np.savez(folder / TEST_OOD_FILE, **arrays)
    return arrays


def ood_sweep(folder, seeds=range(6)):
    """none and label_smoothing, whose AUROC is 0.04 higher and FPR95 0.1 lower in every seed."""
    runs = [("none", seed, {"test/acc": 0.9, **ood_metrics(0.7 + 0.01 * seed, 0.6 - 0.01 * seed)})
            for seed in seeds]
    runs += [("label_smoothing", seed, {"test/acc": 0.9, **ood_metrics(0.74 + 0.01 * seed, 0.5 - 0.01 * seed)})
             for seed in seeds]
    fake_sweep(folder, runs)
    for number in range(len(runs)):
        write_scores(folder / str(number), seed=number)
    return folder


def test_auroc_is_higher_and_fpr95_lower_is_better_whatever_the_score():
    for score in SCORES:  # "entropy" is a lower-is-better word; its AUROC is not
        assert not lower_is_better(f"ood/auroc_{score}")
        assert not lower_is_better(f"ood/gaussian/aupr_in_{score}")
        assert lower_is_better(f"ood/fpr95_{score}")


def test_ood_keys_get_paired_verdicts_in_the_right_direction(tmp_path):
    folder = ood_sweep(tmp_path / "sweep")
    text = make_report(folder)
    rows = read_comparisons(folder)
    # Six seeds, every pair differing by the same amount: sign-flip p = 2 * 0.5^6 = 0.031.
    for score in SCORES:
        auroc = row_for(rows, "label_smoothing", f"ood/auroc_{score}")
        fpr = row_for(rows, "label_smoothing", f"ood/fpr95_{score}")
        assert (auroc["verdict"], float(auroc["mean_diff"])) == ("higher", pytest.approx(0.04))
        assert (fpr["verdict"], float(fpr["mean_diff"])) == ("lower", pytest.approx(-0.1))
        assert float(fpr["p_holm"]) == pytest.approx(2 * 0.5 ** 6)
    # Only the means over sets are key metrics; the per-set values stay in summary.csv.
    assert not any(row["metric"].startswith("ood/gaussian/") for row in rows)
    assert ("- label_smoothing vs none: OOD AUROC of entropy (higher is better) +0.0400 [0.0400, "
            "0.0400], p_holm = 0.031, higher") in text
    assert "- label_smoothing vs none: OOD FPR95 of msp (lower is better) -0.1000" in text


def test_ranking_on_an_auroc_ranks_the_highest_first(tmp_path):
    runs = [(regularizer, 0, {"test/acc": 0.9, "ood/auroc_entropy": value}, "completed", {"dataset": dataset})
            for dataset in ("digits", "mnist") for regularizer, value in (("none", 0.6), ("dropout", 0.8))]
    grouping = group_jobs(load_jobs(fake_sweep(tmp_path / "sweep", runs)))
    ranking, _ = build_ranking(grouping, "ood/auroc_entropy")
    assert ranking.higher_is_better
    assert dict(zip(ranking.methods, ranking.test.average_ranks)) == {"dropout": 1.0, "none": 2.0}


def test_the_ood_table_equals_a_hand_calculation(tmp_path):
    text = make_report(ood_sweep(tmp_path / "sweep", seeds=(0, 1)))
    section = text.split("## Out-of-distribution detection")[1].split("\n## ")[0]
    # none: AUROC 0.70 and 0.71 (mean 0.705, sample std 0.00707); FPR95 0.60 and 0.59.
    row = "| none | 2 | gaussian, held_out_classes | " + " | ".join(
        ["0.7050 ± 0.0071"] * 4 + ["0.5950 ± 0.0071"] * 4) + " |"
    assert row in section
    assert "| settings | seeds | OOD sets | AUROC msp | AUROC maxlogit | AUROC energy | AUROC entropy | FPR95 msp |" in section
    assert "![msp on the test split against each OOD set](ood_histograms.png)" in section


def test_histograms_pool_the_seeds_scores(tmp_path):
    folder = ood_sweep(tmp_path / "sweep", seeds=(0, 1))
    grouping = group_jobs(load_jobs(folder))
    pooled, problems = pooled_scores(grouping.groups, "energy")
    assert problems == [] and [p.group.label for p in pooled] == ["none", "label_smoothing"]
    none = pooled[0]
    first, second = (np.load(folder / str(n) / TEST_OOD_FILE) for n in (0, 1))
    assert none.runs == 2 and sorted(none.sets) == sorted(SETS)
    np.testing.assert_array_equal(np.concatenate(none.inside),
                                  np.concatenate([first["in_energy"], second["in_energy"]]))
    np.testing.assert_array_equal(np.concatenate(none.sets["held_out_classes"]),
                                  np.concatenate([first["held_out_classes_energy"],
                                                  second["held_out_classes_energy"]]))


def test_the_histograms_are_written_and_a_torn_file_is_named(tmp_path):
    folder = ood_sweep(tmp_path / "sweep", seeds=(0, 1))
    (folder / "1" / TEST_OOD_FILE).write_bytes(b"PK\x03\x04 torn")
    text = make_report(folder)
    assert (folder / "ood_histograms.png").stat().st_size > 10_000
    assert f"- ⚠ 1/{TEST_OOD_FILE}: " in text and "left out of the histograms" in text


def test_a_sweep_without_ood_keys_has_no_ood_section_or_figure(tmp_path):
    runs = [(regularizer, seed, {"test/acc": 0.9 + 0.01 * seed, "test/nll": 0.3})
            for regularizer in ("none", "dropout") for seed in (0, 1, 2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert "Out-of-distribution" not in text and "OOD" not in text and "ood_histograms" not in text
    assert not (folder / "ood_histograms.png").exists()
    assert {row["metric"] for row in read_comparisons(folder)} == {"test/acc", "test/nll"}
