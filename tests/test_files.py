"""Writing files safely (files.py): whole or not at all, with the user's umask, and only regbench's
own temporaries are ever removed."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import train_in_process
from regbench.files import atomic_write_bytes, atomic_write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_gives_the_mode_the_users_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(previous)
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def fail(file):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    from regbench.files import atomic_write
    with pytest.raises(OSError, match="a.bin"):
        atomic_write(tmp_path / "a.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_a_users_own_dot_tmp_file_survives_the_claim_of_its_folder(tmp_path):
    """hydra.run.dir may point at a folder of the user's: only temporaries regbench names are stale."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    own = run_dir / ".notes.tmp"
    own.write_text("mine")
    stale = run_dir / ".last.pt.regbench-abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    train_in_process(run_dir, ["model.hidden_sizes=[16]", "trainer.epochs=1"])
    assert own.read_text() == "mine"
    assert not stale.exists()
