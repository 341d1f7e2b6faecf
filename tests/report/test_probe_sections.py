"""report/probes.py: each section appears only when the sweep has its data, with the right numbers."""

from __future__ import annotations

import json
from types import SimpleNamespace

from regbench.report.probes import probe_sections, write_probe_plots


def group(tmp_path, label, settings, runs):
    """runs: (metrics, history records) per completed job."""
    jobs = []
    for index, (metrics, history) in enumerate(runs):
        folder = tmp_path / f"{label}-{index}"
        folder.mkdir()
        (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        jobs.append(SimpleNamespace(folder=folder, metrics=metrics))
    return SimpleNamespace(label=label, settings=settings, completed=jobs)


def curve(key, values):
    return [{"epoch": i + 1, key: v, "train/loss": 1.0 / (i + 1)} for i, v in enumerate(values)]


def test_nothing_without_probe_data(tmp_path):
    plain = [group(tmp_path, "a", {"regularizer": "none"}, [({"test/acc": 0.9}, curve("x", [1]))])]
    assert probe_sections(plain) == []
    assert write_probe_plots(tmp_path, plain) == []


def test_randomization_table_and_overlay(tmp_path):
    groups = [
        group(tmp_path, "clean", {"dataset.corruption": "none"},
              [({"train/acc": 1.0, "test/acc": 0.97, "fit/epoch": 5}, curve("x", [1, 2])),
               ({"train/acc": 1.0, "test/acc": 0.95, "fit/epoch": 7}, curve("x", [1, 2]))]),
        group(tmp_path, "random", {"dataset.corruption": "random_labels"},
              [({"train/acc": 0.5, "test/acc": 0.1, "fit/epoch": None}, curve("x", [1, 2]))]),
    ]
    text = "\n".join(probe_sections(groups))
    assert "| clean | 2 | 1.0000 ± 0.0000 | 0.9600 ± 0.0141 | 6.0 ± 1.4 |" in text
    assert "| random | 1 |" in text and "— (1 of 1 never)" in text
    assert write_probe_plots(tmp_path, groups) == ["train_loss.png"]
    assert (tmp_path / "train_loss.png").stat().st_size > 5000


def test_variance_shift_and_effective_lr_sections(tmp_path):
    groups = [
        group(tmp_path, "slow", {"optimizer.lr": 0.01},
              [({"test/acc": 0.9, "test/variance_shift_max": 2.0, "test/variance_shift_mean": 1.5},
                curve("train/effective_lr", [1e-4, 3e-4]))]),
        group(tmp_path, "fast", {"optimizer.lr": 0.2},
              [({"test/acc": 0.8}, curve("train/effective_lr", [1e-2, 1e-2]))]),
    ]
    text = "\n".join(probe_sections(groups))
    assert "| slow | 1 | 0.9000 ± 0.0000 | 2.000 ± 0.000 | 1.500 ± 0.000 |" in text
    assert "| fast | 1 | 0.8000 ± 0.0000 | — | — |" in text
    # Sorted by mean effective lr over the epochs: slow (2e-4) before fast (1e-2).
    rows = [line for line in text.splitlines() if line.startswith(("| slow | 1 | 0.0002", "| fast | 1 | 0.01"))]
    assert [row.split(" | ")[0] for row in rows] == ["| slow", "| fast"]
    assert write_probe_plots(tmp_path, groups) == ["effective_lr.png"]
