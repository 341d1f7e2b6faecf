"""An Optuna search (hparams_search=...) in which trials diverge: each failed trial is recorded as
failed and the search goes on; a search in which none completed ends in one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="the Optuna sweeper is not installed: pip install -e '.[tune]' -c constraints.txt")]

SEARCH = ["hparams_search=label_smoothing", "trainer.epochs=1", "model.hidden_sizes=[32]",
          "evaluation.figures=false", "trainer.num_threads=1", "hydra.sweep.dir=search"]


def statuses(sweep: Path) -> list[str]:
    return sorted(json.loads(path.read_text())["status"] for path in sweep.glob("*/metrics.json"))


def test_a_diverged_trial_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    result = run_cli([*SEARCH, "hydra.sweeper.n_trials=4",
                      "optimizer.lr=choice(0.05,1e30)"], cwd=tmp_path)
    assert "Traceback" not in result.stderr
    found = statuses(tmp_path / "search")
    assert "diverged" in found and "completed" in found, found
    assert "Failed experiment: regbench: diverged" in result.stdout + result.stderr
    assert "Best value" in result.stdout + result.stderr


def test_a_search_in_which_no_trial_completed_ends_in_one_line(tmp_path):
    result = run_cli([*SEARCH, "hydra.sweeper.n_trials=2", "optimizer.lr=1e30"], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "regbench: no trial of the search completed" in result.stderr
    assert statuses(tmp_path / "search") == ["diverged", "diverged"]
