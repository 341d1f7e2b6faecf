"""What a run keeps of its weights (run/checkpoint.py, CheckpointPolicy): trainer.keep_checkpoint."""

from __future__ import annotations

import json

import pytest

from conftest import train_in_process
from regbench.cli.compose import compose_settings
from regbench.run.checkpoint import REQUIRED_KEYS
from regbench.run.engine import Run

SMALL = ["trainer.epochs=2", "model.hidden_sizes=[16]"]


@pytest.mark.parametrize("keep, files", [("last", {"last.pt"}), ("none", set()), ("best", {"best.pt"})])
def test_keep_checkpoint_decides_what_a_completed_run_keeps(tmp_path, keep, files):
    import torch
    run_dir = tmp_path / keep
    metrics = train_in_process(run_dir, [*SMALL, "trainer.epochs=3", f"trainer.keep_checkpoint={keep}"])
    assert {p.name for p in run_dir.glob("*.pt")} == files
    if keep == "best":
        best = torch.load(run_dir / "best.pt", weights_only=True)
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        accuracies = [record["val/acc"] for record in history]
        assert best["epoch"] == accuracies.index(max(accuracies)) + 1
        assert best["value"] == max(accuracies) and "model" in best
    # A completed folder is recognized from spec.json + metrics.json, whatever was kept.
    assert train_in_process(run_dir, [*SMALL, "trainer.epochs=3", f"trainer.keep_checkpoint={keep}"]) == metrics


def test_keep_best_needs_a_validation_objective(tmp_path):
    from regbench.config import ConfigError
    with pytest.raises(ConfigError, match="trainer.keep_checkpoint='best' is not allowed"):
        train_in_process(tmp_path / "run", [*SMALL, "trainer.keep_checkpoint=best", "objective=test/acc"])


def test_a_checkpoint_requires_exactly_what_a_run_saves_plus_its_identity():
    """load_checkpoint's REQUIRED_KEYS and Run.state_dict name the same state: a key the run adds
    but the check does not know goes unchecked; one the check wants but the run drops refuses
    every checkpoint."""
    run = Run.build(compose_settings([*SMALL, "trainer.progress=false", "trainer.num_threads=1"]))
    assert REQUIRED_KEYS == {*run.state_dict(), "identity"}
