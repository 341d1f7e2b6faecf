"""What configs/config.yaml asks of regbench (cli/hydra_hooks.py): job folder names and --help."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from regbench.cli.hydra_hooks import MAX_JOB_DIR, job_dir, option_groups_text
from regbench.run.folder import natural_key


def test_job_folder_name_is_number_then_portable_overrides():
    assert job_dir(3, "regularizer=label_smoothing,seed=1") == "3_regularizer=label_smoothing,seed=1"
    assert job_dir(0, "model.hidden_sizes=[64,64],dataset.root=/a b") == \
        "0_model.hidden_sizes=64+64,dataset.root=_a_b"
    assert job_dir(7, "") == "7"
    long_a, long_b = job_dir(12, "x=" + "a" * 200), job_dir(12, "x=" + "a" * 199 + "b")
    assert len(long_a) == MAX_JOB_DIR and long_a != long_b and long_a.startswith("12_x=aaa")
    assert job_dir(12, "x=" + "a" * 200) == long_a  # a rerun finds the same folder


def test_job_folders_sort_by_job_number():
    names = ["10_seed=1", "2_seed=0", "report", "1_regularizer=none"]
    assert sorted(names, key=natural_key) == ["1_regularizer=none", "2_seed=0", "10_seed=1", "report"]


def test_help_lists_every_option_with_a_description_and_no_schema_group(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "schema/" not in result.stdout
    for path in (Path(__file__).parents[1] / "configs").glob("*/*.yaml"):
        if path.parent.name in ("dataset", "model", "optimizer", "regularizer", "experiment"):
            line = next(l for l in result.stdout.splitlines() if f"{path.parent.name}={path.stem} " in l)
            assert len(line.split(maxsplit=1)[1]) > 8, line  # a description follows
    assert "regularizer=label_smoothing      Label smoothing (Szegedy et al. 2016, §7)" in option_groups_text()
