"""A checkpoint is resumed from only when it is what regbench wrote for this run (issue #22: a
corrupted last.pt, a stale last.pt, a hand-made history): run/checkpoint.py's checksum, its check
of the saved progress against the run, and what a completed run keeps."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import read_history, read_metrics, run_cli, train_in_process
from regbench.config import ConfigError
from regbench.files import state_digest
from regbench.run.checkpoint import CHECKSUM_KEY, read_checkpoint, save_checkpoint
from regbench.run.engine import InterruptedRun
from regbench.run.spec import BEST_CHECKPOINT_FILE, CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE
from test_run_lifecycle import interrupt_during_epoch

# The job of every test here: 3 epochs of a small MLP; a CLI command with these overrides (and
# conftest.FAST's result-neutral ones) is the same run as train_in_process with them.
JOB = ["trainer.epochs=3", "model.hidden_sizes=[32]", "trainer.checkpoint_interval_s=0"]
CLI = [*JOB, "trainer.progress=false", "trainer.num_threads=1", "evaluation.figures=false"]
KEPT = (CHECKPOINT_FILE, METRICS_FILE, HISTORY_FILE)


def interrupted_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch, overrides: tuple = ()) -> Path:
    """A run folder of JOB stopped by SIGTERM in epoch 3: last.pt holds epoch 2."""
    interrupt_during_epoch(monkeypatch, epoch=3)
    with pytest.raises(InterruptedRun):
        train_in_process(run_dir, [*JOB, *overrides])
    monkeypatch.undo()
    assert read_metrics(run_dir)["status"] == "interrupted"
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in KEPT}


def flip_signs(path: Path) -> None:
    """1,000 weights negated, saved as they are: the stored checksum is the original one."""
    state = torch.load(path, weights_only=True)
    weight = next(value for key, value in state["model"].items() if key.endswith("weight"))
    weight.view(-1)[:1000].neg_()
    torch.save(state, path)


def overwrite_stored_bytes(path: Path) -> None:
    """Bytes in the middle of the largest tensor's record of the zip changed in place, as a bad
    disk or copy would: the zip stays readable (torch.load does not check its CRCs)."""
    with zipfile.ZipFile(path) as archive:
        record = max((info for info in archive.infolist() if "/data/" in info.filename),
                     key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    header = record.header_offset  # local header: 30 bytes, then the name and the extra field
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_length + extra_length + record.file_size // 2
    data[start:start + 64] = bytes(64 * [0x7F])
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [flip_signs, overwrite_stored_bytes])
def test_a_corrupted_checkpoint_is_refused_in_one_line_and_the_folder_is_untouched(
        tmp_path, monkeypatch, corrupt: Callable[[Path], None]):
    run_dir = interrupted_run(tmp_path / "run", monkeypatch)
    corrupt(run_dir / CHECKPOINT_FILE)
    before = snapshot(run_dir)
    result = run_cli([*CLI, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"checkpoint {run_dir / CHECKPOINT_FILE} does not match its checksum" in result.stderr
    assert snapshot(run_dir) == before


def test_every_checkpoint_regbench_writes_carries_a_checksum_that_verifies(tmp_path, monkeypatch):
    run_dir = interrupted_run(tmp_path / "run", monkeypatch, ("trainer.keep_checkpoint=best",))
    for name in (CHECKPOINT_FILE, BEST_CHECKPOINT_FILE):
        saved = torch.load(run_dir / name, weights_only=True)
        checksum = saved.pop(CHECKSUM_KEY)
        assert checksum == state_digest(saved)
        assert CHECKSUM_KEY not in read_checkpoint(run_dir / name, saved["identity"])


def test_a_corrupted_best_checkpoint_is_refused_by_its_reader(tmp_path):
    path, identity = tmp_path / BEST_CHECKPOINT_FILE, {"seed": 0}
    save_checkpoint(path, {"model": {"weight": torch.ones(4)}, "epoch": 1}, identity)
    flip_signs(path)
    with pytest.raises(ConfigError, match=f"checkpoint {path} does not match its checksum") as error:
        read_checkpoint(path, identity)
    assert "\n" not in str(error.value)


def test_a_checkpoint_without_a_checksum_resumes_with_one_warning(tmp_path, monkeypatch, caplog):
    """Written by a regbench from before checksums: still resumed, and the log says it could not
    be verified."""
    run_dir = interrupted_run(tmp_path / "run", monkeypatch)
    path = run_dir / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    del state[CHECKSUM_KEY]
    torch.save(state, path)
    with caplog.at_level(logging.WARNING):
        assert train_in_process(run_dir, JOB)["status"] == "completed"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [message for message in warnings if "checksum" in message] == [
        f"checkpoint {path} has no checksum (written by a regbench from before checksums): "
        f"it is loaded unverified"]


def with_history(path: Path, history: list[dict], epoch: int) -> None:
    """A hand-made checkpoint: its progress replaced, its checksum computed again (valid)."""
    state = torch.load(path, weights_only=True)
    del state[CHECKSUM_KEY]
    state.update(history=history, epoch=epoch)
    torch.save({**state, CHECKSUM_KEY: state_digest(state)}, path)


@pytest.mark.slow
def test_a_hand_made_history_longer_than_the_run_is_refused_in_one_line(tmp_path, monkeypatch):
    run_dir = interrupted_run(tmp_path / "run", monkeypatch)
    record = read_history(run_dir)[-1]
    with_history(run_dir / CHECKPOINT_FILE, [{**record, "epoch": n} for n in range(1, 21)], epoch=20)
    before = snapshot(run_dir)
    result = run_cli([*CLI, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (f"checkpoint {run_dir / CHECKPOINT_FILE} does not fit this run: it holds epoch 20 and "
            f"a history of 20 epochs, but trainer.epochs=3") in result.stderr
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("epochs, epoch", [
    ([1, 2, 3, 4], 4),  # more epochs than the run has
    ([1, 2], 1),  # a history that does not end at the saved epoch
    ([1, 1], 2),  # records not numbered 1, 2, ...
    ([], 0),  # no finished epoch: regbench writes none
])
def test_saved_progress_that_does_not_fit_the_run_is_refused(tmp_path, monkeypatch, epochs, epoch):
    run_dir = interrupted_run(tmp_path / "run", monkeypatch)
    record = read_history(run_dir)[-1]
    with_history(run_dir / CHECKPOINT_FILE, [{**record, "epoch": n} for n in epochs], epoch=epoch)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="does not fit this run"):
        train_in_process(run_dir, JOB)
    assert snapshot(run_dir) == before


def test_a_model_state_the_run_cannot_take_is_refused_in_one_line(tmp_path, monkeypatch):
    """Renamed layers, as a checkpoint of a regbench whose model had other names would hold."""
    run_dir = interrupted_run(tmp_path / "run", monkeypatch)
    path = run_dir / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    del state[CHECKSUM_KEY]
    state["model"] = {f"old.{key}": value for key, value in state["model"].items()}
    torch.save({**state, CHECKSUM_KEY: state_digest(state)}, path)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=f"checkpoint {path} does not fit this run's model") as error:
        train_in_process(run_dir, JOB)
    assert "\n" not in str(error.value) and "Missing key(s)" in str(error.value)
    assert snapshot(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["last", "best"])
def test_a_rerun_without_checkpoints_leaves_no_checkpoint_of_an_earlier_epoch(tmp_path, monkeypatch, keep):
    """Interrupted with checkpoints on (last.pt and best.pt of epoch 2), completed by a rerun with
    trainer.checkpoint=false, which writes none: nothing of epoch 2 stays for regbench.fold or a
    user to load as the trained model."""
    run_dir = interrupted_run(tmp_path / "run", monkeypatch, (f"trainer.keep_checkpoint={keep}",))
    result = run_cli([*CLI, f"trainer.keep_checkpoint={keep}", "trainer.checkpoint=false",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "after epoch 2" in result.stdout + result.stderr
    assert read_metrics(run_dir)["status"] == "completed" and len(read_history(run_dir)) == 3
    assert not list(run_dir.glob("*.pt"))


@pytest.mark.slow
def test_regbench_fold_refuses_a_corrupted_last_pt_and_its_reader_a_corrupted_folded_pt(tmp_path):
    from regbench.fold import load_folded
    from regbench.run.spec import FOLDED_FILE

    run_dir = tmp_path / "run"
    trained = run_cli([*CLI, "regularizer=batchnorm", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    fold = ["--repeats", "1", str(run_dir)]
    assert run_cli(fold, cwd=tmp_path, module="regbench.fold").returncode == 0
    load_folded(run_dir)  # as written: verified
    flip_signs(run_dir / FOLDED_FILE)
    with pytest.raises(ConfigError, match=f"checkpoint {run_dir / FOLDED_FILE} does not match its "
                                          f"checksum.*run python -m regbench.fold again"):
        load_folded(run_dir)
    flip_signs(run_dir / CHECKPOINT_FILE)
    folded = (run_dir / FOLDED_FILE).read_bytes()
    refused = run_cli(fold, cwd=tmp_path, module="regbench.fold")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"checkpoint {run_dir / CHECKPOINT_FILE} does not match its checksum" in refused.stderr
    assert (run_dir / FOLDED_FILE).read_bytes() == folded
