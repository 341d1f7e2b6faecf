"""The report in TensorBoard: ``<sweep>/report/``, one event file with the sweep's HParams
experiment (every job's settings, as its run logged them) and the Custom Scalars charts of the
groups, and after a full report its markdown (Text tab) and figures (Images tab); and one run per
group, ``<sweep>/report/groups/<group>/``, whose curves are the mean over the group's completed
seeds of every per-epoch scalar, with the lowest and highest seed beside it
(``regbench.run.tensorboard.mean_tag``, ``bound_tags``), so Custom Scalars and Time Series show one
line per group while the seed runs stay for drill-down. The sweep writes all but the markdown and
figures at its end (``sweep.write_hparams``), before any report is made.

torch's SummaryWriter and the HParams protocol are imported inside the functions that use them, and
matplotlib only for type checking: the sweep imports this module without the report's plots."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from regbench.files import TEMPORARY_PREFIX
from regbench.report.groups import ABSENT, Group, group_jobs, label_keys
from regbench.report.jobs import Job
from regbench.report.outputs import REPORT_EVENTS_DIR
from regbench.run.folder import RunFolder
from regbench.run.spec import REGULARIZER_KEY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVENTS_GLOB = "events.out.tfevents.*"
# <sweep>/report/groups/<group>/: one TensorBoard run per group.
GROUPS_DIR = "groups"
# A group run's folder name at most (TensorBoard's run selector shows about 60 characters, and
# each name follows "report/groups/"); a longer one keeps its start and ends in a hash of the whole.
MAX_GROUP_NAME = 48
HASH_CHARS = 8
# Per-epoch scalars a group run leaves out: the learning rate is a setting's schedule, the same for
# every seed (the seed runs keep it), and would be the first chart Time Series shows.
NOT_AVERAGED = frozenset({"lr"})

# {group run name: {tag: {epoch: [one value per seed]}}}
Curves = dict[str, dict[str, dict[int, list[float]]]]


def hparams_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Each job's HParams row exactly as its run logged it
    (regbench.run.tensorboard.hparams_values)."""
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
    the groups' Custom Scalars charts, the report's markdown (Text tab: TensorBoard renders the
    tables) and its figures (Images tab), and ``groups/``, one run per group. Older event files
    and group runs there are replaced once the new ones are in place: TensorBoard would show both,
    and uses only the first HParams experiment it finds."""
    folder = sweep / REPORT_EVENTS_DIR
    folder.mkdir(exist_ok=True)
    old = list(folder.glob(EVENTS_GLOB))
    curves = group_curves(group_runs(jobs))
    # Written aside and moved in whole, so an interrupted report leaves the previous files.
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".events.{TEMPORARY_PREFIX}",
                                     suffix=".tmp") as aside:
        write_events(Path(aside), jobs, texts, figures, with_groups=bool(curves))
        write_group_runs(Path(aside) / GROUPS_DIR, curves)
        for new in Path(aside).glob(EVENTS_GLOB):
            os.replace(new, folder / new.name)
        if (folder / GROUPS_DIR).exists():
            os.replace(folder / GROUPS_DIR, Path(aside) / "replaced")  # deleted with the folder
        if curves:
            os.replace(Path(aside) / GROUPS_DIR, folder / GROUPS_DIR)
    for path in old:
        path.unlink(missing_ok=True)
    return folder


def write_events(folder: Path, jobs: Sequence[Job], texts: Mapping[str, str],
                 figures: Mapping[str, Figure], with_groups: bool = False) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from regbench.run.tensorboard import groups_layout, hparams_experiment

    writer = SummaryWriter(log_dir=str(folder))
    try:
        writer._get_file_writer().add_summary(hparams_experiment(hparams_rows(jobs)))
        if with_groups:
            writer._get_file_writer().add_summary(groups_layout())
        for tag, text in texts.items():
            writer.add_text(tag, text, 0)
        for name, figure in figures.items():
            writer.add_figure(f"report/{Path(name).stem}", figure, 0, close=False)
    finally:
        writer.close()


# --- one run per group ----------------------------------------------------------------------------

def group_runs(jobs: Sequence[Job]) -> dict[str, Group]:
    """The report's groups (report.groups.group_jobs) by their run's folder name
    (``group_run_name``), made unique with ``-2``, ``-3``... where two names coincide."""
    grouping = group_jobs(jobs)
    shown = label_keys([job.settings for job in jobs if job.settings is not None], grouping.varying)
    named: dict[str, Group] = {}
    for group in grouping.groups:
        name = base = group_run_name(group, shown)
        number = 1
        while name in named:
            number += 1
            name = f"{base[:MAX_GROUP_NAME - len(str(number)) - 1]}-{number}"
        named[name] = group
    return named


def group_run_name(group: Group, shown: Sequence[str]) -> str:
    """What the group varies, short and filesystem-safe: ``label_smoothing``, ``dropout.p=0.3``
    (the regularizer's name is left out when its own settings name it),
    ``none,optimizer.lr=0.05``; at most MAX_GROUP_NAME characters."""
    from regbench.cli.hydra_hooks import portable_overrides
    from regbench.run.tensorboard import short_setting

    settings = group.jobs[0].settings or {}
    regularizer = str(settings.get(REGULARIZER_KEY, ""))
    present = [key for key in shown if key != REGULARIZER_KEY
               and group.settings.get(key, settings.get(key, ABSENT)) is not ABSENT]
    parts = [short_setting(key, setting_text(settings.get(key))) for key in present]
    named = all(any(key.startswith(f"{REGULARIZER_KEY}.{name}.") for key in present)
                for name in regularizer.split("+"))
    if not named:
        parts.insert(0, regularizer)
    text = ",".join(part for part in parts if part)
    name = portable_overrides(text) or "all"
    if len(name) <= MAX_GROUP_NAME:
        return name
    digest = hashlib.sha1(text.encode()).hexdigest()[:HASH_CHARS]
    return f"{name[:MAX_GROUP_NAME - HASH_CHARS - 1]}-{digest}"


def setting_text(value: Any) -> str:
    """A setting as typed on the command line, lists without spaces (``[64,64]``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def group_curves(groups: Mapping[str, Group]) -> Curves:
    """Every per-epoch scalar (``regbench.run.tensorboard.epoch_scalars``, but NOT_AVERAGED) of
    each group's completed seeds, from their history.jsonl; a seed whose history cannot be read,
    and a line without an integer epoch, are left out."""
    from regbench.run.tensorboard import epoch_scalars

    curves: Curves = {}
    for name, group in groups.items():
        by_tag: dict[str, dict[int, list[float]]] = {}
        for job in group.completed:
            try:
                history = RunFolder(job.folder).history()
            except (OSError, ValueError):
                continue
            for record in history:
                epoch = record.get("epoch") if isinstance(record, dict) else None
                if not isinstance(epoch, int) or isinstance(epoch, bool):
                    continue  # a hand-edited line: its numbers have no step
                for tag, value in epoch_scalars(record).items():
                    if math.isfinite(value) and tag not in NOT_AVERAGED:
                        by_tag.setdefault(tag, {}).setdefault(epoch, []).append(value)
        if by_tag:
            curves[name] = by_tag
    return curves


def write_group_runs(folder: Path, curves: Curves) -> None:
    """``folder/<group>/``: per tag and epoch, the mean over the seeds that recorded it
    (``mean_tag``) and its lowest and highest seed (``bound_tags``)."""
    from torch.utils.tensorboard import SummaryWriter

    from regbench.run.tensorboard import bound_tags, mean_tag

    for name, by_tag in curves.items():
        writer = SummaryWriter(log_dir=str(folder / name))
        try:
            for tag, by_epoch in by_tag.items():
                low, high = bound_tags(tag)
                for epoch, values in sorted(by_epoch.items()):
                    writer.add_scalar(mean_tag(tag), statistics.fmean(values), epoch)
                    writer.add_scalar(low, min(values), epoch)
                    writer.add_scalar(high, max(values), epoch)
        finally:
            writer.close()
