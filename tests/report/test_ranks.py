"""Ranks across settings (blocks) on hand-built sweep folders: average ranks, Friedman, Nemenyi's CD."""

from __future__ import annotations

from matplotlib.image import imread
from scipy import stats as scipy_stats
from sweep_folders import fake_sweep, read_comparisons

from regbench.report.command import main, make_report


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
    assert "![ranks](ranks.png)" in text
    # Comparisons stay within a dataset: each regularizer against none on the same data.
    rows = read_comparisons(folders[0])
    assert {(r["group"], r["baseline"]) for r in rows} == {
        (f"{reg}, dataset.name={d}", f"none, dataset.name={d}")
        for d in accuracy for reg in ("dropout", "label_smoothing")}
    assert all(not (folder / "summary.md").exists() for folder in folders[1:])


def test_one_block_skips_the_ranks_with_a_line_and_no_picture(tmp_path):
    runs = [(reg, s, {"test/acc": 0.9}) for reg in ("none", "dropout", "label_smoothing") for s in range(2)]
    folder = fake_sweep(tmp_path / "sweep", runs)
    text = make_report(folder)
    assert "Ranks across settings: skipped, the sweep covers 1 block" in text
    # The issue: ranks.png was a picture of that sentence, and summary.md embedded it.
    assert not (folder / "ranks.png").exists()
    assert "![ranks](ranks.png)" not in text and "- No ranks.png drawn." in text
    assert "![comparisons](comparisons.png)" in text and (folder / "comparisons.png").is_file()
