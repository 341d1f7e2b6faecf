"""Commands regbench prints for the user to paste (cli/command_line.py: shell_override): quoted for
Hydra and for the shell, whatever the folder is called."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from regbench.cli.command_line import shell_override
from regbench.train import resume_hint

FOLDERS = ["outputs/runs/2026-12-03/10-00-00-123456", "my runs/a b", "x $(touch pwned) y", "it's",
           'say "hi"', "a,b=c", "back\\slash", "ends\\", "semi;colon && rm -rf nothing"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_pasted_override_gives_hydra_the_folder_exactly(folder):
    (argument,) = shlex.split(shell_override("hydra.run.dir", folder))
    (override,) = OverridesParser.create().parse_overrides([argument])
    assert override.key_or_group == "hydra.run.dir" and override.value() == folder


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_pasted_override_runs_nothing_in_the_shell(tmp_path, folder):
    printed = shell_override("hydra.run.dir", folder)
    result = subprocess.run(["bash", "-c", f"printf %s {printed}"], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    assert result.stdout == shlex.split(printed)[0]
    assert list(tmp_path.iterdir()) == []  # no "pwned" file


def test_the_resume_hint_of_a_run_in_an_odd_folder_can_be_pasted(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    folder = Path("/tmp/my runs/x $(touch pwned)")
    hint = resume_hint(OmegaConf.create({"trainer": {"checkpoint": True, "resume": False}}), folder)
    printed = hint.removeprefix("run the same command with ").split(" to resume")[0]
    (argument,) = shlex.split(printed)
    (override,) = OverridesParser.create().parse_overrides([argument])
    assert override.value() == str(folder)
