"""scripts/bench.py runs end to end on tiny settings and writes its JSON. No timing assertions:
speed is measured by running the benchmark, not by timed tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def test_bench_writes_medians_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    # From an empty working directory: the benchmark must leave nothing behind (Lightning included).
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--samples", "512", "--repeats", "1", "--models", "lenet",
         "--threads", "1", "--imagefolder-images", "256", "--out", str(out)],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]
    report = json.loads(out.read_text())

    lenet = report["models"]["lenet"]
    expected = {"A", "B", "C"} | ({"D"} if importlib.util.find_spec("lightning") else set())
    assert set(lenet["pipelines"]) == expected
    # 512 samples in full batches of 128: every pipeline sees the same 4 batches.
    assert (lenet["batches_per_epoch"], lenet["samples_per_epoch"]) == (4, 512)
    assert lenet["dataloader_workers"] in (0, 2)
    medians = {name: row["median_seconds"] for name, row in lenet["pipelines"].items()}
    for name, row in lenet["pipelines"].items():
        assert row["median_seconds"] > 0 and len(row["seconds"]) == 1
        assert row["samples_per_second"] == pytest.approx(512 / row["median_seconds"])
    assert report["speedup_vs_dataloader"] == pytest.approx(medians["B"] / medians["A"])
    assert report["overhead_vs_compute"] == pytest.approx(medians["A"] / medians["C"])
    assert report["machine"]["threads"] == 1 and report["machine"]["torch"]
    assert report["batch_size"] == 128 and report["samples"] == 512
    for name in expected:
        assert f"lenet   {name} " in result.stdout  # one table row per pipeline

    # The image-folder case: 256 JPEGs in full batches of 128, native 32x32, A B C (no Lightning).
    folder = report["imagefolder"]
    assert set(folder["pipelines"]) == {"A", "B", "C"}
    assert (folder["batches_per_epoch"], folder["samples_per_epoch"], folder["images"]) == (2, 256, 256)
    assert folder["input_shape"] == [3, 32, 32]
    medians = {name: row["median_seconds"] for name, row in folder["pipelines"].items()}
    assert report["imagefolder_speedup_vs_dataloader"] == pytest.approx(medians["B"] / medians["A"])
    assert report["imagefolder_overhead_vs_compute"] == pytest.approx(medians["A"] / medians["C"])
    assert report["imagefolder_cache_build_seconds"] == folder["cache_build_seconds"] > 0
    assert folder["cached_build_seconds"] > 0
    assert "imgfold A regbench Run" in result.stdout and "cache build" in result.stdout


@pytest.mark.slow
def test_bench_startup_compares_wall_time_with_the_jobs_training(tmp_path: Path) -> None:
    script = SCRIPT.parent / "bench_startup.py"
    out = tmp_path / "startup.json"
    result = subprocess.run(
        [sys.executable, str(script), "--repeats", "1", "--cases", "default", "--overrides",
         "trainer.epochs=2", "evaluation.figures=false", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["startup.json"]
    case = json.loads(out.read_text())["cases"]["default"]
    assert case["jobs"] == 1 and case["command"][-2:] == ["trainer.epochs=2", "evaluation.figures=false"]
    assert 0 < case["train_eval_seconds"] < case["wall_seconds"]
    assert case["ratio"] == pytest.approx(case["wall_seconds"] / case["train_eval_seconds"])
    assert "default" in result.stdout and "ratio" in result.stdout



@pytest.mark.slow
def test_bench_sweep_times_the_default_launcher_against_basic_and_compares_their_results(
        tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "bench_sweep.py"), "--rounds", "1", "--grid",
         "seed=0,1 trainer.epochs=1 evaluation.figures=false evaluation.calibrators=[]",
         "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]  # sweeps in a temp folder
    report = json.loads(out.read_text())
    rows = {row["launcher"]: row for row in report["rows"]}
    assert report["jobs"] == 2 and report["default_launcher"].startswith("2 jobs, ")
    assert rows["basic"]["speedup_over_basic"] == 1.0
    assert rows["parallel"]["speedup_over_basic"] == pytest.approx(
        rows["basic"]["median_seconds"] / rows["parallel"]["median_seconds"])
    assert rows["parallel"]["jobs_per_hour"] == pytest.approx(
        2 * 3600 / rows["parallel"]["median_seconds"])
    assert set(report["largest_differences"]) == {"test/acc", "test/nll", "test/ece"}
    assert report["largest_differences"]["test/acc"] < 0.01  # the same jobs, whatever the threads
    assert "| parallel |" in result.stdout and "| basic |" in result.stdout
