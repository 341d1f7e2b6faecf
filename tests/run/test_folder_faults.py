"""Run folders that are not what they claim, folders that cannot be written, and commands refused or
stopped before training: one line each, nothing of a finished run touched, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, train_in_process
from regbench import train as train_module
from regbench.cli.command_line import check_output_folder
from regbench.config import ConfigError
from regbench.run.spec import LOCK_FILE

SMALL = ["model.hidden_sizes=[32]", "trainer.epochs=1"]


def completed_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    train_in_process(run_dir, SMALL)
    return run_dir


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_completed_metrics_json_without_results_is_refused_in_one_line(tmp_path):
    run_dir = completed_run(tmp_path)
    (run_dir / "metrics.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match=r"metrics\.json says completed but has no number for "
                                          r"test/acc, test/nll") as error:
        train_in_process(run_dir, SMALL)
    assert "\n" not in str(error.value)
    assert (run_dir / "metrics.json").read_text() == '{"status": "completed"}'


@pytest.mark.parametrize("identity", [[1, 2], {}, None, "x"])
def test_a_spec_json_without_an_identity_is_refused_in_one_line(tmp_path, identity):
    run_dir = completed_run(tmp_path)
    edit_json(run_dir / "spec.json", identity=identity)
    before = (run_dir / "spec.json").read_text()
    with pytest.raises(ConfigError, match=r"spec\.json holds no run identity") as error:
        train_in_process(run_dir, SMALL)
    assert "different run" not in str(error.value)
    assert (run_dir / "spec.json").read_text() == before


def test_a_finished_run_keeps_no_lock_file(tmp_path):
    assert not (completed_run(tmp_path) / LOCK_FILE).exists()


def test_a_run_folder_under_a_file_is_refused_before_hydra_makes_it(tmp_path):
    (tmp_path / "taken").write_text("a user's file")
    with pytest.raises(ConfigError, match="hydra.run.dir=.*taken/run cannot be a folder: .*taken is a file"):
        check_output_folder(tmp_path / "taken" / "run", "hydra.run.dir")
    with pytest.raises(ConfigError, match="cannot be a folder"):
        check_output_folder(tmp_path / "taken", "hydra.run.dir")


def read_only_mount(folder: Path) -> bool:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    return mounted.returncode == 0


def test_a_run_folder_on_a_read_only_file_system_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "readonly"
    if not read_only_mount(folder):
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        result = run_cli(["trainer.epochs=1", f"hydra.run.dir={folder / 'run'}"], cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"regbench: error: hydra.run.dir={folder / 'run'} cannot be written ({folder}: a read-only "
        f"file system); choose a writable hydra.run.dir"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    (["trainer.device=cuda:7"], "this machine has"),
    (["regularizer=[none,dropout]"], "regularizer=none cannot be combined with others"),
    (["dataset=imagefolder", "dataset.root=missing"], "missing"),
])
def test_a_command_refused_before_training_leaves_no_run_folder(tmp_path, overrides, message):
    result = run_cli([*overrides, "trainer.epochs=1"], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "outputs").glob("runs/*/*"))  # no run folder, failed or not


def test_ctrl_c_outside_training_prints_one_line(monkeypatch, capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "hydra_main", interrupted)
    monkeypatch.setattr(sys, "argv", ["regbench", "trainer.epochs=1"])
    with pytest.raises(SystemExit) as exit_status:
        train_module.main()
    assert exit_status.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "regbench: interrupted outside training; finished epochs and results on disk are kept; "
        "run the same command to continue"]


def test_ctrl_c_while_regbench_starts_prints_one_line(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "regbench", "trainer.epochs=1"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    time.sleep(0.3)  # inside the imports (torch alone takes longer)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
