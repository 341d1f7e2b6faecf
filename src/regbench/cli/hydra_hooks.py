"""What configs/config.yaml asks of regbench by name: OmegaConf resolvers and a logging filter.

- ``${regbench_job_dir:${hydra.job.num},${hydra.job.override_dirname}}``: a sweep job's folder,
  ``3_regularizer=label_smoothing,seed=1``: the job number first (resume and numeric order), then
  the overrides the sweep varies, in portable characters, capped in length.
- ``${regbench_help:}``: the option groups and their options, each with the first sentence of its
  YAML's leading comment, for ``--help`` (internal ``schema/*`` groups are not listed).
- ``JobNameFilter``: adds ``%(job)s`` to log records, the job folder's name in a multirun, so lines
  of parallel (joblib, submitit) jobs say which job they belong to.

Registered on import; ``regbench.train`` imports this module, so the main process and every
launcher's worker (which unpickles the task function from ``regbench.train``) have them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from regbench.cli.compose import config_dir

# Characters every common filesystem and a shell accept unquoted; anything else becomes "_".
PORTABLE = re.compile(r"[^A-Za-z0-9._=,+-]")
# Folder name length cap (filesystems allow 255 bytes; TensorBoard's run selector shows ~60).
MAX_JOB_DIR = 80
HASH_CHARS = 8
# Option groups listed by --help, in this order (schema/* and hydra/* are internal).
HELP_GROUPS = ("dataset", "model", "optimizer", "regularizer", "logger", "suite", "experiment",
               "hparams_search")
HELP_DESCRIPTION_CHARS = 76
HELP_WIDTH = 100
# A sentence ends at ".", ":" or ";" before a space, except after abbreviations ("et al.", "e.g.").
SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\bcf)[.:;](?=\s|$)")


def portable_overrides(overrides: str) -> str:
    """``model.hidden_sizes=[64,64]`` -> ``model.hidden_sizes=64+64``; other odd characters -> _."""
    lists_joined = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).replace(",", "+"), overrides)
    return PORTABLE.sub("_", lists_joined)


def job_dir(number: object, overrides: str) -> str:
    """``<job number>_<overrides>``, at most MAX_JOB_DIR characters: a longer name keeps its
    start and ends in a hash of the whole, so two long names stay apart and a rerun of the same
    command gets the same folder."""
    prefix = str(number)
    name = portable_overrides(overrides)
    if not name:
        return prefix
    full = f"{prefix}_{name}"
    if len(full) <= MAX_JOB_DIR:
        return full
    digest = hashlib.sha1(name.encode()).hexdigest()[:HASH_CHARS]
    return f"{full[:MAX_JOB_DIR - HASH_CHARS - 1]}-{digest}"


def swept_keys(hydra_cfg: Any) -> Optional[set[str]]:
    """The keys the sweep varies: its sweep overrides on the command line (saved by Hydra's basic
    sweeper in ``<sweep dir>/multirun.yaml``) and the keys of ``hydra.sweeper.params`` (sweeps
    defined in a preset, Optuna's search space). None when neither source exists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(hydra_cfg, "sweeper.params")
    saved = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
    if not params and not saved.is_file():
        return None
    keys = {str(key) for key in (params or {})}
    if saved.is_file():
        lines = OmegaConf.load(saved).hydra.overrides.task
        overrides = OverridesParser.create().parse_overrides([str(line) for line in lines])
        keys |= {o.key_or_group for o in overrides if o.is_sweep_override()}
    return keys


def sweep_job_dir(number: object, overrides_dirname: str, *, _root_: Any) -> str:
    """``job_dir`` of the job's overrides that the sweep varies (constant ones such as
    ``trainer.epochs=2`` on the command line would only repeat in every name), joined as
    ``hydra.job.override_dirname`` is (``hydra.job.config.override_dirname``: kv_sep, item_sep,
    exclude_keys); just the number when nothing is swept (``-m`` over single values);
    ``overrides_dirname`` itself when the swept keys cannot be known."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = _root_.hydra
    keys = swept_keys(hydra_cfg)
    if keys is None:
        return job_dir(number, overrides_dirname)
    options = hydra_cfg.job.config.override_dirname
    overrides = OverridesParser.create().parse_overrides([str(o) for o in hydra_cfg.overrides.task])
    lines = sorted(o.input_line for o in overrides
                   if o.key_or_group in keys and o.key_or_group not in options.exclude_keys)
    joined = str(options.item_sep).join(line.replace("=", str(options.kv_sep), 1) for line in lines)
    return chosen_job_dir(Path(str(hydra_cfg.sweep.dir)), number, joined)


# (sweep folder, job number, overrides) -> the folder chosen: every read of hydra.sweep.subdir in a
# process gives the same folder, even once another job made a folder of the same name after it.
CHOSEN: dict[tuple[str, str, str], str] = {}


def chosen_job_dir(sweep_dir: Path, number: object, overrides: str) -> str:
    key = (str(sweep_dir), str(number), overrides)
    if key not in CHOSEN:
        CHOSEN[key] = existing_job_dir(sweep_dir, overrides) or job_dir(number, overrides)
    return CHOSEN[key]


def existing_job_dir(sweep_dir: Path, overrides: str) -> Optional[str]:
    """The folder of ``sweep_dir`` that already holds the job of these overrides under any job
    number (a sweep relaunched with its values in another order, or with values added): the one
    with the lowest number when there are several. None when there is none, or when nothing is
    swept (a folder named by its number alone says nothing about the job)."""
    if not portable_overrides(overrides) or not sweep_dir.is_dir():
        return None
    numbered = (re.match(r"(\d+)_", entry.name) for entry in os.scandir(sweep_dir) if entry.is_dir())
    same_job = [(int(match[1]), match.string) for match in numbered
                if match and job_dir(match[1], overrides) == match.string]
    return min(same_job)[1] if same_job else None


def first_sentence(path: Path) -> str:
    """The YAML's leading comment up to its first sentence end, on one line (``@package`` and
    blank comment lines skipped), shortened to HELP_DESCRIPTION_CHARS."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            lines.append(text)
    text = " ".join(lines)
    end = next((match.start() for match in SENTENCE_END.finditer(text)
                if text.count("(", 0, match.start()) <= text.count(")", 0, match.start())), None)
    sentence = text[:end].rstrip(".:;")  # a sentence ends outside parentheses: "(Lin et al. 2017; ...)"
    if len(sentence) > HELP_DESCRIPTION_CHARS:
        sentence = sentence[:HELP_DESCRIPTION_CHARS - 3].rstrip() + "..."
    return sentence


def option_groups_text(root: Path | None = None) -> str:
    """One block per option group: ``group=option  description`` lines."""
    root = root or config_dir()
    blocks = []
    for group in HELP_GROUPS:
        options = sorted((root / group).glob("*.yaml"))
        if not options:
            continue
        width = max(len(f"{group}={path.stem}") for path in options)
        lines = []
        for path in options:
            lines.append(f"  {f'{group}={path.stem}':<{width}}  {first_sentence(path)}")
            lines += textwrap.wrap(option_parameters(group, path), HELP_WIDTH,
                                   initial_indent=" " * (width + 4), subsequent_indent=" " * (width + 4))
        blocks.append(f"{group}:\n" + "\n".join(lines))
    # string.Template (Hydra's help) reads "$": double it so descriptions print as written.
    return "\n\n".join(blocks).replace("$", "$$")


def option_parameters(group: str, path: Path) -> str:
    """``key=default ...`` of an option with a schema (a regularizer, a model, an optimizer): the
    schema's defaults as the option's YAML sets them; empty for an option without parameters."""
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException

    try:
        schema = ConfigStore.instance().load(f"schema/{group}/{path.name}").node
    except HydraException:  # ConfigLoadError: an option without a schema (a dataset)
        return ""
    own = {key: value for key, value in OmegaConf.load(path).items() if key != "defaults"}
    merged = OmegaConf.to_container(OmegaConf.merge(schema, own), enum_to_str=True)
    return " ".join(f"{key}={override_text(value)}" for key, value in merged.items() if key != "name")


def override_text(value: Any) -> str:
    """A default as it is typed on the command line: null, false, [1024,1024], plain text."""
    if isinstance(value, str) and " " not in value:
        return value
    return json.dumps(value, separators=(",", ":"))


class JobNameFilter(logging.Filter):
    """``record.job``: `` [<job folder>]`` inside a multirun job, empty in a single run."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job_label()
        return True


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def current_job_label() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return ""
    # None in a sweep's own process between jobs (a launcher's or sweeper's lines after a job ran
    # in-process, as the parallel launcher runs them when one at a time fits the machine).
    folder = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None,
                              throw_on_missing=False)
    return f" [{Path(folder).name}]" if folder else ""


def register_resolvers() -> None:
    from regbench.cli.resume import register_resolver

    register_resolver()
    OmegaConf.register_new_resolver("regbench_job_dir", sweep_job_dir, replace=True)
    OmegaConf.register_new_resolver("regbench_help", lambda: option_groups_text(), replace=True)


register_resolvers()
