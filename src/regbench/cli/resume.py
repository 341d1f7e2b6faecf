"""The same command resumes: ``${regbench_run_dir:outputs/runs,<date>/<time>}``, hydra.run.dir's
default, is the folder of the newest interrupted run of this experiment and seed under
``outputs/runs``, or a new ``outputs/runs/<date>/<time>_<overrides>``: the run's command-line
overrides (``hydra.job.override_dirname``, without the result-neutral keys) in portable characters,
capped in length as sweep job folders are (``hydra_hooks.job_dir``), so ``tensorboard --logdir
outputs`` names each single run by what it changed (``12-03-45_regularizer=dropout,seed=1``).

Interrupted means stopped by a signal (metrics.json says interrupted) or killed outright (no
metrics.json, a last.pt). A completed, failed or diverged run is never continued this way, a given
``hydra.run.dir`` is used as given, and ``trainer.resume=false`` always starts a new folder. Run
folders of either naming (``<time>`` of older regbench versions, ``<time>_<overrides>``) are found.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from regbench.run.folder import RunFolder
from regbench.run.spec import SPEC_FILE, RunSpec, Status, first_difference


def resumable(folder: RunFolder) -> bool:
    status = folder.status()
    return status == Status.interrupted.value or (
        status == Status.unfinished.value and folder.checkpoint.is_file())


def interrupted_run(root: Path, identity: dict[str, Any]) -> Optional[Path]:
    """The newest run folder ``root/<date>/<time>[_<overrides>]`` of ``identity`` that was
    interrupted. Newest by name: the date, then the time that starts every folder's name."""
    spec_files = sorted(root.glob(f"*/*/{SPEC_FILE}"),
                        key=lambda path: (path.parent.parent.name, path.parent.name), reverse=True)
    for spec_file in spec_files:
        folder = RunFolder(spec_file.parent)
        if not resumable(folder):
            continue
        try:
            saved = folder.spec_json().get("identity")
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and first_difference(saved, identity) is None:
            return folder.path
    return None


def task_identity(root_config: Any) -> dict[str, Any]:
    """The run's identity from the whole config Hydra resolves (its own ``hydra`` node left out,
    as in the config the run gets)."""
    task = OmegaConf.masked_copy(root_config, [key for key in root_config if key != "hydra"])
    return RunSpec.from_config(task).identity


def new_run_dir(root: str, new: str, overrides: str) -> str:
    """``root/<date>/<time>_<overrides>`` (just ``<time>`` without overrides). A folder of that
    name already there (two runs of the same command started within the clock's resolution)
    gets a ``-2``, ``-3``... suffix, so a new run never lands in another run's folder."""
    from regbench.cli.hydra_hooks import job_dir  # here: hydra_hooks imports this module

    date, _, time = new.rpartition("/")
    name = job_dir(time, overrides)
    parent = Path(root, date) if date else Path(root)
    candidate, number = name, 1
    while (parent / candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return str(parent / candidate)


# (root, new folder name) -> the folder chosen: Hydra reads hydra.run.dir more than once, and every
# read must give the same folder (``now`` is cached the same way; OmegaConf cannot cache a
# resolver that reads ``_root_``).
CHOSEN: dict[tuple[str, str], str] = {}


def run_dir(root: str, new: str, *, _root_: Any) -> str:
    if (root, new) not in CHOSEN:
        CHOSEN[root, new] = choose_run_dir(root, new, _root_)
    return CHOSEN[root, new]


def choose_run_dir(root: str, new: str, root_config: Any) -> str:
    if OmegaConf.select(root_config, "trainer.resume", default=False):
        found = interrupted_run(Path(root), task_identity(root_config))
        if found is not None:
            print(f"regbench: resuming the interrupted run in {found} (same experiment and seed; "
                  f"trainer.resume=false starts a new run)", file=sys.stderr, flush=True)
            return str(found)
    overrides = OmegaConf.select(root_config, "hydra.job.override_dirname", default="") or ""
    return new_run_dir(root, new, str(overrides))


def register_resolver() -> None:
    OmegaConf.register_new_resolver("regbench_run_dir", run_dir, replace=True)
