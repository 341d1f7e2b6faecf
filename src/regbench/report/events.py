"""The report in TensorBoard: ``<sweep>/report/``, one event file with the sweep's HParams
experiment (every job's settings, as its run logged them), and after a full report its markdown
(Text tab) and figures (Images tab). The sweep writes the HParams part at its end
(``sweep.write_hparams``), before any report is made.

torch's SummaryWriter and the HParams protocol are imported inside the functions that use them, and
matplotlib only for type checking: the sweep imports this module without the report's plots."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from regbench.files import TEMPORARY_PREFIX
from regbench.report.jobs import Job
from regbench.report.outputs import REPORT_EVENTS_DIR
from regbench.run.folder import RunFolder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVENTS_GLOB = "events.out.tfevents.*"


def hparams_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Each job's HParams row exactly as its run logged it (regbench.run.tensorboard.hparams_values)."""
    from regbench.run.tensorboard import hparams_values

    rows = []
    for job in jobs:
        if job.settings is None:
            continue
        name = job.metrics.get("name")
        if not isinstance(name, str):
            try:
                name = RunFolder(job.folder).spec_json().get("name", job.name)
            except (OSError, ValueError):
                name = job.name
        rows.append(hparams_values(job.settings, job.seed, name))
    return rows


def write_sweep_hparams(sweep: Path, jobs: Sequence[Job]) -> Path:
    """The sweep's one HParams experiment summary (regbench.run.tensorboard.hparams_experiment):
    its columns, every job's settings, varying ones marked. Replaces the event files of an earlier
    call."""
    return write_report_events(sweep, jobs, texts={}, figures={})


def write_report_events(sweep: Path, jobs: Sequence[Job], texts: Mapping[str, str],
                        figures: Mapping[str, Figure]) -> Path:
    """``<sweep>/report/``: one TensorBoard event file with the HParams experiment of the sweep,
    the report's markdown (Text tab: TensorBoard renders the tables) and its figures (Images
    tab). Older event files there are removed once the new one is in place: TensorBoard would
    show both, and uses only the first HParams experiment it finds."""
    folder = sweep / REPORT_EVENTS_DIR
    folder.mkdir(exist_ok=True)
    old = list(folder.glob(EVENTS_GLOB))
    # Written aside and moved in whole, so an interrupted report leaves the previous file.
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".events.{TEMPORARY_PREFIX}",
                                     suffix=".tmp") as aside:
        write_events(Path(aside), jobs, texts, figures)
        for new in Path(aside).glob(EVENTS_GLOB):
            os.replace(new, folder / new.name)
    for path in old:
        path.unlink(missing_ok=True)
    return folder


def write_events(folder: Path, jobs: Sequence[Job], texts: Mapping[str, str],
                 figures: Mapping[str, Figure]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from regbench.run.tensorboard import hparams_experiment

    writer = SummaryWriter(log_dir=str(folder))
    try:
        writer._get_file_writer().add_summary(hparams_experiment(hparams_rows(jobs)))
        for tag, text in texts.items():
            writer.add_text(tag, text, 0)
        for name, figure in figures.items():
            writer.add_figure(f"report/{Path(name).stem}", figure, 0, close=False)
    finally:
        writer.close()
