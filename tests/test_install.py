"""A regular (non-editable) install finds its configs from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import read_metrics, run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, check=True,
                   capture_output=True, text=True, timeout=600)


def test_wheel_ships_configs_and_runs_outside_the_checkout(tmp_path):
    # No build isolation: hatchling comes with the dev extra, so this works offline.
    pip("wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("regbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "regbench/configs/config.yaml" in names
    assert "regbench/configs/regularizer/none.yaml" in names

    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    env = {"PYTHONPATH": str(site)}  # ahead of the editable install's path entry
    where = subprocess.run(
        [sys.executable, "-c", "import regbench, regbench.cli.compose; "
         "print(regbench.__file__); print(regbench.cli.compose.config_dir())"],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    module_file, configs = where.stdout.split()
    assert Path(module_file).is_relative_to(site)
    assert Path(configs) == site / "regbench" / "configs"

    user_dir = tmp_path / "elsewhere"
    user_dir.mkdir()
    result = run_cli(["trainer.epochs=1"], cwd=user_dir, env=env)
    assert result.returncode == 0, result.stderr
    (metrics_file,) = (user_dir / "outputs" / "runs").rglob("metrics.json")
    assert read_metrics(metrics_file.parent)["status"] == "completed"
