"""Shared helpers: compose the real configs, train in-process, run the CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from regbench.cli.compose import compose_config
from regbench.run.folder import RunFolder
from regbench.train import train

# A suite started in the background (`nohup pytest &`, some CI runners) inherits SIGINT ignored, and
# so would every command a test starts: the Ctrl-C tests need the default disposition there.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The files whose end-to-end runs (a SLURM cluster, Ray, sweeps, servers, interrupted commands)
# take longest, handed out first: the test processes take whole files in collection order
# (pyproject's addopts: --dist loadfile --no-loadscope-reorder), and one of these started last
# would keep the suite waiting on it while the other processes stand idle.
LONGEST_FIRST = ("tests/test_cluster.py", "tests/test_sweep_outcomes.py", "tests/test_sweeps.py",
                 "tests/test_fold.py", "tests/report/test_command.py", "tests/test_dip.py",
                 "tests/run/test_mlflow_logger.py", "tests/datasets/test_randomization.py",
                 "tests/cli/test_resume_command.py", "tests/run/test_checkpoint_integrity.py",
                 "tests/cli/test_cli.py", "tests/cli/test_errors.py", "tests/run/test_run_lifecycle.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {path: rank for rank, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))  # stable


# Small, fast settings for runs inside tests; tests add their own overrides after these. No test-phase
# figures (they cost more than 3 epochs of training): the tests of figures turn them on.
FAST = ["trainer.epochs=3", "trainer.progress=false", "trainer.num_threads=1", "evaluation.figures=false"]


def train_in_process(run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train through the same code path as the CLI, minus Hydra's process setup."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(compose_config([*FAST, *overrides]), run_dir)


def build_model_of(overrides: Sequence[str]):
    """The model a run with these overrides trains, built through ``Run.build`` as the CLI does."""
    from regbench.cli.compose import compose_settings
    from regbench.run.engine import Run
    return Run.build(compose_settings([*FAST, *overrides])).model


def regularizer_overrides(configs: dict[str, Any]) -> list[str]:
    """``regularizer=[a,b]`` plus one override per field of each regularizer's config dataclass."""
    import dataclasses
    import enum
    overrides = [f"regularizer=[{','.join(configs)}]"]
    for name, cfg in configs.items():
        for field in dataclasses.fields(cfg):
            value = getattr(cfg, field.name)
            value = value.value if isinstance(value, enum.Enum) else value
            overrides.append(f"regularizer.{name}.{field.name}={'null' if value is None else value}")
    return overrides


def run_cli(args: Sequence[str], cwd: Path, module: str = "regbench",
            env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> args`` in a subprocess, the way a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a run folder (the run must have written it)."""
    metrics = RunFolder(run_dir).metrics()
    if metrics is None:  # an OSError, as reading a missing file raises: pollers catch it and retry
        raise FileNotFoundError(f"{run_dir} has no metrics.json")
    return metrics


def train_with_cli(tmp_path: Path, overrides: Sequence[str],
                   epochs: int = 2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``python -m regbench <overrides>`` for a few epochs in a subprocess, as a user runs it;
    checks that it completed and returns (metrics.json, history.jsonl) of its run folder."""
    run_dir = tmp_path / "run"
    result = run_cli([*overrides, f"trainer.epochs={epochs}", "trainer.progress=false",
                      "trainer.num_threads=1", "evaluation.figures=false", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    history = read_history(run_dir)
    assert len(history) == epochs
    return metrics, history


def train_end_to_end(tmp_path: Path, overrides: Sequence[str],
                     epochs: int = 2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A few epochs of the run these overrides compose from configs/, trained and tested in this
    process (a preset's run minus the command line's start-up, which tests/cli runs for real);
    checks that it completed and returns (metrics.json, history.jsonl) of its run folder."""
    run_dir = tmp_path / "run"
    train_in_process(run_dir, [*overrides, f"trainer.epochs={epochs}"])
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    history = read_history(run_dir)
    assert len(history) == epochs
    return metrics, history


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """history.jsonl as a list of per-epoch records ([] before the first epoch)."""
    return RunFolder(run_dir).history()


# Four predictions of class 0 whose calibration errors are worked out by hand in the tests.
TINY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.62, 0.38], [0.3, 0.7]], dtype=torch.float64)
TINY_LABELS = torch.tensor([0, 0, 0, 0])


def calibrated_data(examples: int, classes: int = 5, seed: int = 0):
    """Random logits and labels drawn from their own softmax: calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(examples, classes, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.fixture(scope="module")
def splits():
    """A validation and a test split of calibrated logits (1,000 and 2,000 examples)."""
    return calibrated_data(1000, seed=1), calibrated_data(2000, seed=2)


def events(folder: Path):
    """The TensorBoard events of a folder, every tensor and image kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def plugin_tags(accumulator, plugin: str) -> dict:
    return accumulator.PluginTagToContent(plugin)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty dataset root, also exported as REGBENCH_DATA (the default of dataset.root)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("REGBENCH_DATA", str(root))
    return root


@pytest.fixture(autouse=True)
def image_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The decoded-image cache of every test (and of the CLI processes it starts) in a temporary
    folder, never the user's ~/.cache/regbench."""
    folder = tmp_path_factory.getbasetemp() / "image-cache"
    monkeypatch.setenv("REGBENCH_CACHE", str(folder))
    return folder


# Per-epoch timings differ between two runs of the same computation; everything else must not.
TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds"}


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def interrupt_during_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """SIGTERM to this process in the middle of the given (1-based) epoch's training: the run
    stops after that epoch's first step."""
    from regbench.run.engine import Run

    original = Run.train_epoch

    def train_epoch(self: Run, index: int) -> dict:
        if index + 1 == epoch:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, index)

    monkeypatch.setattr(Run, "train_epoch", train_epoch)


def assert_resumes_exactly_after_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         job: Sequence[str], epoch: int) -> None:
    """A run stopped by SIGTERM during ``epoch`` (1-based) keeps the epochs before it, and run
    again ends with the metrics and history of an uninterrupted run of the same job."""
    from regbench.run.engine import InterruptedRun

    reference = train_in_process(tmp_path / "reference", job)
    interrupt_during_epoch(monkeypatch, epoch=epoch)
    with pytest.raises(InterruptedRun):
        train_in_process(tmp_path / "run", job)
    monkeypatch.undo()
    assert len(read_history(tmp_path / "run")) == epoch - 1
    resumed = train_in_process(tmp_path / "run", job)
    assert without_timings(resumed) == without_timings(reference)
    assert [without_timings(r) for r in read_history(tmp_path / "run")] == \
        [without_timings(r) for r in read_history(tmp_path / "reference")]
