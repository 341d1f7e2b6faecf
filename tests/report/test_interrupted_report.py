"""Ctrl-C during ``python -m regbench.report``: one line, exit 130, and every file the report
writes is whole: the previous version or the new one, never a torn one, and no temporaries left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.image import imread

from regbench.files import TEMPORARY_GLOB
from regbench.report import INTERRUPTED_EXIT
from regbench.report.command import make_report
from regbench.report.plots import save_figure
from sweep_folders import fake_sweep

INTERRUPTED_LINE = ("regbench-report: interrupted; the files written are whole and the others keep "
                    "their previous version: run the same command again to write them all")
# What a two-group sweep's report writes (no ranks.png: one block, nothing to rank).
OUTPUTS = ["summary.csv", "summary.md", "comparisons.csv", "accuracy_vs_ece.png", "reliability.png",
           "confidence_hist.png", "comparisons.png", "report.html"]

# Runs the report as `python -m regbench.report` does, with savefig replaced by one that writes
# part of its file and is then stopped by SIGINT: Ctrl-C in the middle of writing a figure.
INTERRUPT_DURING_SAVEFIG = """
import os, runpy, signal, sys, time
from matplotlib.figure import Figure

def torn_savefig(self, target, *args, **kwargs):
    if isinstance(target, (str, os.PathLike)):
        target = open(target, "wb")
    target.write(b"half a PNG")
    target.flush()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)

Figure.savefig = torn_savefig
sys.argv = ["regbench-report", *sys.argv[1:]]
runpy.run_module("regbench.report", run_name="__main__", alter_sys=True)
"""


def two_group_sweep(folder: Path) -> Path:
    return fake_sweep(folder, [(regularizer, seed, {"test/acc": 0.9 + seed / 100, "test/ece": 0.05})
                               for regularizer in ("none", "dropout") for seed in range(3)])


def temporaries(folder: Path) -> list[Path]:
    """regbench's temporary files and the event file's temporary folder, anywhere in ``folder``."""
    return list(folder.rglob(TEMPORARY_GLOB))


class TornFigure:
    """A figure whose drawing is interrupted after part of the file is written."""

    def savefig(self, file, **options) -> None:
        file.write(b"half a PNG")
        raise KeyboardInterrupt


def test_a_figure_interrupted_while_saved_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "reliability.png"
    path.write_bytes(b"the previous figure")
    with pytest.raises(KeyboardInterrupt):
        save_figure(TornFigure(), path)
    assert path.read_bytes() == b"the previous figure"
    assert list(tmp_path.iterdir()) == [path]


def test_ctrl_c_while_a_figure_is_written_is_one_line_and_keeps_the_previous_figure(tmp_path):
    folder = two_group_sweep(tmp_path / "sweep")
    make_report(folder)
    before = {name: (folder / name).read_bytes() for name in OUTPUTS}
    result = subprocess.run([sys.executable, "-c", INTERRUPT_DURING_SAVEFIG, str(folder)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == INTERRUPTED_EXIT
    assert result.stderr.strip().splitlines() == [INTERRUPTED_LINE]
    assert {name: (folder / name).read_bytes() for name in OUTPUTS} == before  # none torn
    assert temporaries(folder) == []


def test_ctrl_c_during_a_real_report_is_one_line_and_leaves_only_whole_files(tmp_path):
    folder = two_group_sweep(tmp_path / "sweep")
    make_report(folder)
    (folder / "summary.csv").unlink()
    report = subprocess.Popen([sys.executable, "-m", "regbench.report", str(folder)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (folder / "summary.csv").exists() and report.poll() is None:
        time.sleep(0.02)  # the tables are written first, the figures after them
    report.send_signal(signal.SIGINT)
    _, stderr = report.communicate(timeout=120)
    assert report.returncode == INTERRUPTED_EXIT, stderr
    assert stderr.strip().splitlines() == [INTERRUPTED_LINE]
    for name in OUTPUTS:
        if name.endswith(".png"):
            assert imread(folder / name).shape[0] > 100, name  # a whole PNG, old or new
    assert temporaries(folder) == []
