"""One run, one state: the resume rules, folder ownership, and signals in every phase.

Each test here reproduces a defect of the split run lifecycle (issue "One run, one state") and
fails on the code before it."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import (
    interrupt_during_epoch,
    read_history,
    read_metrics,
    run_cli,
    train_in_process,
    without_timings,
)
from regbench.cli.compose import compose_config, compose_settings
from regbench.config import ConfigError
from regbench.report.jobs import load_job
from regbench.run import checkpoint as checkpoint_module
from regbench.run import engine
from regbench.run.checkpoint import IntervalCheckpoint
from regbench.run.engine import InterruptedRun, Run
from regbench.run.folder import RunFolder
from regbench.run.spec import experiment_settings, identity

SMALL = ["model.hidden_sizes=[32]"]
# Files a refusal must leave exactly as they were (the lock and the log are not results).
UNTOUCHABLE = ("metrics.json", "history.jsonl", "last.pt", "spec.json", "test_calibration.json")



def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in UNTOUCHABLE if (folder / name).exists()}



# --- resume rules ---------------------------------------------------------------------------------

def test_a_cut_off_test_phase_is_finished_without_retraining_and_counts_its_epochs(tmp_path):
    run_dir = tmp_path / "run"
    reference = train_in_process(run_dir, SMALL)
    history = read_history(run_dir)
    (run_dir / "metrics.json").unlink()  # the process died after the last checkpoint
    finished = train_in_process(run_dir, SMALL)
    assert finished["epochs"] == 3 and len(read_history(run_dir)) == 3
    assert read_history(run_dir) == history  # no epoch trained again
    assert without_timings(finished) == without_timings(reference)


def test_sigterm_during_the_test_phase_records_interrupted_and_the_rerun_completes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = Run.test
    signals = iter([2, 0])  # first run: two SIGTERMs in its test phase; the rerun: none

    def test(self: Run, recorder=None):
        for _ in range(next(signals)):
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, recorder)

    monkeypatch.setattr(Run, "test", test)
    with pytest.raises(InterruptedRun, match="SIGTERM during the test phase after epoch 3"):
        train_in_process(run_dir, SMALL)
    interrupted = read_metrics(run_dir)
    assert interrupted["status"] == "interrupted" and interrupted["epochs"] == 3
    assert len(read_history(run_dir)) == 3
    completed = train_in_process(run_dir, SMALL)
    assert completed["status"] == "completed" and completed["epochs"] == 3
    assert len(read_history(run_dir)) == 3


def test_changed_epochs_on_a_completed_folder_is_refused_and_the_folder_unchanged(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, [*SMALL, "trainer.epochs=2"])
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"trainer\.epochs was 2 there, now 3\).*new hydra\.run\.dir"):
        train_in_process(run_dir, [*SMALL, "trainer.epochs=3"])
    assert snapshot(run_dir) == before


def test_changed_epochs_on_an_interrupted_folder_is_refused_and_the_folder_unchanged(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    interrupt_during_epoch(monkeypatch, epoch=2)
    with pytest.raises(InterruptedRun):
        train_in_process(run_dir, [*SMALL, "trainer.epochs=4"])
    monkeypatch.undo()
    assert read_metrics(run_dir)["status"] == "interrupted"
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"trainer\.epochs was 4 there, now 6"):
        train_in_process(run_dir, [*SMALL, "trainer.epochs=6"])
    assert snapshot(run_dir) == before
    resumed = train_in_process(run_dir, [*SMALL, "trainer.epochs=4"])
    assert resumed["status"] == "completed" and resumed["epochs"] == 4


@pytest.mark.parametrize("checkpoint", ["true", "false"])
def test_a_completed_folder_asked_for_another_seed_is_refused_untouched(tmp_path, checkpoint):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, [*SMALL, "seed=1", f"trainer.checkpoint={checkpoint}"])
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="seed was 1 there, now 2"):
        train_in_process(run_dir, [*SMALL, "seed=2", f"trainer.checkpoint={checkpoint}"])
    with pytest.raises(ConfigError, match="regularizer was 'none' there, now 'dropout'"):
        train_in_process(run_dir, [*SMALL, "seed=1", "regularizer=dropout"])
    assert snapshot(run_dir) == before


def test_a_completed_folder_with_a_corrupt_checkpoint_is_reported_untouched(tmp_path):
    run_dir = tmp_path / "run"
    completed = train_in_process(run_dir, SMALL)
    (run_dir / "last.pt").write_bytes(b"garbage")
    before = snapshot(run_dir)
    assert train_in_process(run_dir, SMALL) == completed  # its spec.json says it is this run
    assert snapshot(run_dir) == before


def test_a_corrupt_metrics_json_is_refused_in_one_line_untouched(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, SMALL)
    (run_dir / "metrics.json").write_text("{not json")
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"metrics\.json cannot be read") as error:
        train_in_process(run_dir, SMALL)
    assert "\n" not in str(error.value)
    assert snapshot(run_dir) == before


def test_settings_that_cannot_change_results_do_not_change_the_identity(tmp_path):
    run_dir = tmp_path / "run"
    first = train_in_process(run_dir, SMALL)
    (run_dir / "metrics.json").unlink()
    # Another thread count and progress setting: the same run, tested again from its checkpoint.
    again = train_in_process(run_dir, [*SMALL, "trainer.num_threads=2", "trainer.progress=true"])
    assert without_timings(again) == without_timings(first)


def test_the_report_groups_by_the_identity_the_checkpoint_checks(tmp_path):
    """One function decides both: what a folder may be resumed by, and what the report groups."""
    base = [*SMALL, "trainer.epochs=1"]
    cases = {"a": [*base, "seed=0"], "b": [*base, "seed=1", "trainer.num_threads=2"],
             "c": [*base, "seed=0", "trainer.batch_size=32"]}
    for name, overrides in cases.items():
        train_in_process(tmp_path / name, overrides)
        config = compose_config(["trainer.progress=false", *overrides])
        container = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
        job = load_job(tmp_path, tmp_path / name)
        assert job.settings == experiment_settings(container)
        assert {**job.settings, "seed": job.seed} == identity(container)
        assert RunFolder(tmp_path / name).spec_json()["identity"] == identity(container)
    groups = {name: json.dumps(load_job(tmp_path, tmp_path / name).settings, sort_keys=True)
              for name in cases}
    assert groups["a"] == groups["b"] != groups["c"]


# --- the folder is held by one process --------------------------------------------------------

def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunFolder(run_dir).lock():
        with pytest.raises(ConfigError, match="in use by another regbench process"):
            train_in_process(run_dir, SMALL)
    assert not (run_dir / "history.jsonl").exists()
    assert train_in_process(run_dir, SMALL)["status"] == "completed"


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = run_dir / ".last.pt.regbench-abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    train_in_process(run_dir, SMALL)
    assert not stale.exists()


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    saves = []
    original = checkpoint_module.save_checkpoint

    def save(path, state, run_identity):
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        original(path, state, run_identity)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save)
    with pytest.raises(OSError, match="No space left on device"):
        train_in_process(run_dir, [*SMALL, "trainer.checkpoint_interval_s=0"])
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1
    assert not (run_dir / "metrics.json").exists()  # no failure file on a full disk


def test_a_checkpoint_that_is_not_a_dict_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save([1, 2, 3], run_dir / "last.pt")
    with pytest.raises(ConfigError, match="is not a regbench checkpoint"):
        train_in_process(run_dir, SMALL)


# --- state ------------------------------------------------------------------------------------

def test_run_state_dict_round_trips_every_piece_of_state():
    settings = compose_settings(["trainer.epochs=2", "trainer.num_threads=1", "trainer.progress=false",
                                 *SMALL, "regularizer=early_stopping"])
    run = Run.build(settings)
    run.fit()
    state = run.state_dict()
    fresh = Run.build(settings)
    fresh.load_state_dict(state)
    assert fresh.epochs_done == 2 and fresh.training_finished
    assert fresh.history == run.history
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, fresh.model.state_dict()[key])
    assert fresh.scheduler.state_dict() == run.scheduler.state_dict()
    assert fresh.regularizers[0].state_dict()["best_epoch"] == run.regularizers[0].state_dict()["best_epoch"]
    assert torch.equal(fresh.data.train.generator.get_state(), run.data.train.generator.get_state())


def test_divergence_steps_count_from_one_like_interruption_steps(tmp_path):
    # The first step's loss is finite; its update with lr 1e30 makes the second batch's NaN.
    with pytest.raises(engine.DivergedError, match="epoch 1, step 2 "):
        train_in_process(tmp_path / "run", [*SMALL, "optimizer.lr=1e30"])
    assert read_metrics(tmp_path / "run")["diverged_step"] == 2


def test_an_early_stop_on_the_last_epoch_is_not_an_early_stop(tmp_path, caplog):
    overrides = [*SMALL, "regularizer=early_stopping", "regularizer.early_stopping.patience=1",
                 "trainer.epochs=2", "optimizer.lr=1e-9"]  # no improvement after epoch 1
    with caplog.at_level("INFO"):
        train_in_process(tmp_path / "run", overrides)
    assert "stopping early" not in caplog.text
    assert read_history(tmp_path / "run")[-1]["stopped_early"] is False


# --- checkpoints on a time interval ---------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def saved_epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


def test_interval_checkpoint_writes_on_the_interval_at_the_last_epoch_and_on_flush(tmp_path):
    path, clock = tmp_path / "last.pt", FakeClock()
    checkpoints = IntervalCheckpoint(path, {"seed": 0}, interval_s=60, clock=clock)
    weights = torch.zeros(3)
    checkpoints.after_epoch({"epoch": 1, "weights": weights}, last=False)
    assert not path.exists()  # 0 s since the start
    weights += 1  # the next epoch trains the same tensors in place
    clock.now = 59.9
    checkpoints.after_epoch({"epoch": 2, "weights": weights}, last=False)
    assert not path.exists()
    weights += 1
    checkpoints.flush()  # a signal during epoch 3: epoch 2 as it was, not the live tensors
    assert saved_epoch(path) == 2 and torch.load(path)["weights"].tolist() == [1.0] * 3
    checkpoints.flush()  # nothing new since: nothing written
    clock.now = 119.9 + 0.1
    checkpoints.after_epoch({"epoch": 3, "weights": weights}, last=False)
    assert saved_epoch(path) == 3  # 60 s after the flush's write
    checkpoints.after_epoch({"epoch": 4, "weights": weights}, last=True)
    assert saved_epoch(path) == 4  # the last epoch is written at once


def test_interval_zero_writes_after_every_epoch(tmp_path):
    path = tmp_path / "last.pt"
    checkpoints = IntervalCheckpoint(path, {}, interval_s=0, clock=FakeClock())
    for epoch in (1, 2):
        checkpoints.after_epoch({"epoch": epoch}, last=False)
        assert saved_epoch(path) == epoch


def test_a_signal_between_interval_writes_resumes_from_the_last_finished_epoch(tmp_path, monkeypatch):
    """The default 60 s interval writes nothing during this short run before the signal: the
    checkpoint of epoch 2 comes from the in-memory copy, and the resumed run ends where an
    uninterrupted one does."""
    run_dir, reference_dir = tmp_path / "run", tmp_path / "reference"
    job = [*SMALL, "trainer.epochs=4"]
    reference = train_in_process(reference_dir, job)
    interrupt_during_epoch(monkeypatch, epoch=3)
    with pytest.raises(InterruptedRun):
        train_in_process(run_dir, job)
    monkeypatch.undo()
    assert saved_epoch(run_dir / "last.pt") == 2
    resumed = train_in_process(run_dir, job)
    assert without_timings(resumed) == without_timings(reference)


# --- messages on the command line ---------------------------------------------------------------

@pytest.mark.slow
def test_interrupted_without_checkpoints_does_not_promise_a_resume(tmp_path):
    from test_resume import start_and_terminate  # one helper for SIGTERM mid-run
    interrupted = start_and_terminate(tmp_path / "run", tmp_path, after_epochs=1,
                                      extra=["trainer.checkpoint=false"])
    assert "cannot be resumed (trainer.checkpoint=false)" in interrupted.stderr
    assert "to resume from" not in interrupted.stderr


@pytest.mark.slow
def test_a_sweep_rerun_with_other_values_never_touches_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["trainer.epochs=1", "trainer.progress=false", "trainer.num_threads=1", *SMALL,
              "evaluation.figures=false", f"hydra.sweep.dir={sweep}"]
    first = run_cli(["-m", "optimizer.lr=0.05,1e9", *common], cwd=tmp_path)
    assert first.returncode == 1, first.stderr  # one job diverged: the sweep says so
    assert "Traceback" not in first.stderr
    assert "sweep finished: 2 jobs (1 completed, 1 diverged)" in first.stdout
    assert f"python -m regbench.report {sweep}" in first.stdout
    job0 = snapshot(sweep / "0_optimizer.lr=0.05")
    config0 = (sweep / "0_optimizer.lr=0.05" / ".hydra" / "config.yaml").read_bytes()
    # Job folders are named after their values: the swapped order finds the same folders.
    swapped = run_cli(["-m", "optimizer.lr=1e9,0.05", *common], cwd=tmp_path)
    assert swapped.returncode == 1 and "Traceback" not in swapped.stderr
    assert sorted(path.name for path in sweep.glob("*_optimizer.lr=*")) == [
        "0_optimizer.lr=0.05", "1_optimizer.lr=1000000000.0"]
    longer = run_cli(["-m", "optimizer.lr=0.05,1e9", *common[1:], "trainer.epochs=2"], cwd=tmp_path)
    assert "trainer.epochs was 1 there, now 2" in longer.stderr
    assert snapshot(sweep / "0_optimizer.lr=0.05") == job0
    assert (sweep / "0_optimizer.lr=0.05" / ".hydra" / "config.yaml").read_bytes() == config0
