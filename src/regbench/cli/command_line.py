"""Refuse a bad command line in one line, before Hydra starts a run or a sweep.

Hydra reports an unknown option, a misspelled key or a value of the wrong type in several lines
(and, in a sweep, only when it reaches the job). This check composes the configuration once per
distinct value on the command line, with Hydra's own parser and compose API, and turns the first
failure into one line: what was given and what is allowed. Range checks of the schema
(``__post_init__``) run here too, so ``trainer.epochs=0`` is refused before the first job of a sweep.

Only public Hydra API is used: the compose API, and ``OverridesParser``, the override parser that
Hydra's plugin documentation has sweepers use to read ``key=a,b`` sweeps.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from regbench.cli.compose import composer, config_dir
from regbench.config import ConfigError

MULTIRUN_FLAGS = {"-m", "--multirun"}
# Flags after which Hydra composes no regbench config of its own files (it prints its version or
# help, completes a shell word, reruns a pickle, or reads another config folder): hands off.
# Where configs/config.yaml puts every run and sweep folder (hydra.run.dir, hydra.sweep.dir).
DEFAULT_OUTPUT_ROOT = "outputs"
UNCHECKED_FLAGS = {"--version", "--hydra-help", "--shell-completion", "-sc", "--experimental-rerun",
                   "--config-path", "-cp", "--config-dir", "-cd"}


# A value Hydra's override parser and every shell read as written; anything else is quoted.
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:+@-]+")


def hydra_value(value: Any) -> str:
    """``value`` as Hydra's override parser reads it back unchanged: plain, or double-quoted, where
    a backslash is escaped only before a quote or at the end (Hydra's rule for quoted values)."""
    text = str(value)
    if PLAIN_VALUE.fullmatch(text):
        return text
    escaped = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""),
                     text)
    return f'"{escaped}"'


def shell_override(key: str, value: Any) -> str:
    """``key=value`` to paste into a shell: quoted for Hydra, then for the shell, so a folder with
    spaces, quotes or ``$(...)`` in its name neither breaks the command nor runs anything."""
    return shlex.quote(f"{key}={hydra_value(value)}")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def config_groups() -> set[str]:
    return {path.name for path in config_dir().iterdir() if path.is_dir() and path.name != "hydra"}


def chosen_options(value: str) -> list[str]:
    """``label_smoothing`` or ``[dropout,label_smoothing]`` -> option names."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        return [name.strip() for name in value[1:-1].split(",") if name.strip()]
    return [value]


def override_values(override: Override) -> list[str]:
    """Each value an override takes (one, or each choice of a sweep)."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    return list(override.sweep_string_iterator())  # glob/interval sweeps raise: not enumerable


def check_group_choice(group: str, value: str) -> None:
    options = group_options(group)
    chosen = chosen_options(value)
    for name in chosen:
        if name not in options and name not in ("null", ""):
            raise ConfigError(f"unknown {group} {name!r}; choose one of: {', '.join(options)}")
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        raise ConfigError(f"{group}={value} names {', '.join(repeated)} twice; each option can be "
                          f"selected once")


def unselected_regularizer(command_line: Sequence[str]) -> str | None:
    """A regularizer whose parameters the command line sets without selecting it."""
    selected = ["none"]
    for line in command_line:
        key, _, value = line.partition("=")
        if key.lstrip("+~") == "regularizer":
            selected = chosen_options(value)
    for line in command_line:
        parts = line.partition("=")[0].lstrip("+~").split(".")
        if len(parts) > 2 and parts[0] == "regularizer" and parts[1] not in selected:
            return parts[1]
    return None


def candidate_command_lines(overrides: Sequence[Override]) -> Iterator[list[str]]:
    """The command line with every sweep at its first value, then each other value of each sweep."""
    values = [override_values(override) for override in overrides]
    first = [f"{o.get_key_element()}={v[0]}" for o, v in zip(overrides, values)]
    yield first
    for index, (override, choices) in enumerate(zip(overrides, values)):
        for value in choices[1:]:
            yield first[:index] + [f"{override.get_key_element()}={value}"] + first[index + 1:]


def first_lines(error: BaseException) -> str:
    """Hydra's and OmegaConf's messages, first lines only (they add full_key/object_type lines)."""
    lines = [str(error).strip().splitlines()[0]]
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(dict.fromkeys(line.strip() for line in lines))


@dataclass(frozen=True)
class CommandLine:
    """A command line split into Hydra's flags (each with its value) and the overrides."""

    flags: list[str]
    overrides: list[str]

    @property
    def multirun(self) -> bool:
        return any(flag in MULTIRUN_FLAGS for flag in self.flags)

    def flag_value(self, *names: str) -> str | None:
        for index, flag in enumerate(self.flags[:-1]):
            if flag in names:
                return self.flags[index + 1]
        return None

    def for_hydra(self) -> list[str]:
        """Overrides first, then the flags: Hydra's argparse takes the overrides only as one block,
        and ``--info`` before an override would take it for its value."""
        return [*self.overrides, *self.flags]


def split_command_line(args: Sequence[str]) -> CommandLine:
    """Hydra's flags (with the values they take, from Hydra's own argument parser) and the
    overrides, wherever each is placed."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main uses

    takes_value = {option: action for action in get_args_parser()._actions
                   for option in action.option_strings if action.nargs != 0}
    flags: list[str] = []
    overrides: list[str] = []
    arguments = iter(args)
    for arg in arguments:
        if not arg.startswith("-") or arg == "-":
            overrides.append(arg)
            continue
        flags.append(arg)
        action = takes_value.get(arg)
        if action is None:
            continue
        if action.nargs == "?":  # --info [what]: a value only when it is one of its choices
            following = next(arguments, None)
            if following is not None and following in (action.choices or ()):
                flags.append(following)
            elif following is not None:
                (flags if following.startswith("-") else overrides).append(following)
        else:
            value = next(arguments, None)
            if value is not None:
                flags.append(value)
    return CommandLine(flags, overrides)


def parse_overrides(arguments: Sequence[str]) -> list[Override]:
    try:
        overrides = OverridesParser.create().parse_overrides(list(arguments))
    except HydraException as error:
        message = first_lines(error)
        if any(not arg.isascii() for arg in arguments):
            message += " (a value with non-ASCII characters, such as a path, must be quoted: " \
                       "key='value', inside the shell's quotes: \"key='value'\")"
        raise ConfigError(message) from None
    return overrides


def check_sweeps_have_multirun(overrides: Sequence[Override], first: list[str], compose: Any) -> None:
    """A sweep (``key=a,b``) without -m is refused, unless a preset sets hydra.mode=MULTIRUN (an
    Optuna search); so is a sweep over Hydra's own settings, which Hydra cannot do."""
    sweeps = [o for o in overrides if o.is_sweep_override()]
    for override in sweeps:
        if override.key_or_group.startswith("hydra."):
            raise ConfigError(f"{override.input_line}: Hydra cannot sweep its own settings; to search "
                              f"a setting with Optuna, give its own key, e.g. optimizer.lr=choice(...) "
                              f"or interval(...)")
    if sweeps and compose(first, hydra=True).hydra.mode != RunMode.MULTIRUN:
        raise ConfigError(sweep_without_multirun(sweeps[0]))


def sweep_without_multirun(override: Override) -> str:
    """Hydra's five-line "Ambiguous value" message, in one line with the form the user meant."""
    key, line = override.get_key_element(), override.input_line
    try:
        values = override_values(override)
    except HydraException:
        values = []
    if key in config_groups() and values:
        return (f"{line} is a sweep (one run per value), which needs -m; to use them together in "
                f"one run, write {key}=[{','.join(values)}]; to sweep, add -m")
    return (f"{line} is a sweep (one run per value), which needs -m; to sweep, add -m; for a list "
            f"write {key}=[...]; for text with a comma, quote it: {key}='...'")


def checked_overrides(overrides: Sequence[Override]) -> list[Override]:
    """The overrides regbench checks by composing (Hydra's own settings and glob/interval sweeps
    are left to Hydra and the sweeper), after checking every group choice by name."""
    groups = config_groups()
    checked: list[Override] = []
    for override in overrides:
        if override.key_or_group.startswith("hydra"):
            continue  # Hydra's own settings: Hydra checks them
        try:
            values = override_values(override)
        except HydraException:
            continue  # glob(...), interval(...): only a sweeper can expand these
        if override.key_or_group in groups:
            for value in values:
                check_group_choice(override.key_or_group, value)
        checked.append(override)
    return checked


def check_config_name(name: str | None) -> str:
    names = sorted(path.stem for path in config_dir().glob("*.yaml"))
    if name is not None and name.removesuffix(".yaml") not in names:
        raise ConfigError(f"--config-name {name}: no such config in regbench's configs; choose one "
                          f"of: {', '.join(names)} (or give your own folder with --config-dir)")
    return (name or "config").removesuffix(".yaml")


def output_folder(overrides: Sequence[Override], multirun: bool) -> Path:
    """The run's (or sweep's) folder as given on the command line, else the output root that
    configs/config.yaml puts every run under."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [o.get_value_element_as_str() for o in overrides if o.key_or_group == key]
    return Path(given[-1]) if given and "${" not in given[-1] else Path(DEFAULT_OUTPUT_ROOT)


def check_output_folder(folder: Path, key: str) -> None:
    """Hydra creates the folder and opens its log file before regbench runs: a folder that cannot
    be made (a file of that name, a read-only filesystem) is refused here, in one line."""
    existing = next(path for path in (folder, *folder.parents) if path.exists() or path == Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{key}={folder} cannot be a folder: {existing} is a file; choose another "
                          f"{key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "a read-only file system" if is_read_only_mount(existing) else "permission denied"
        raise ConfigError(f"{key}={folder} cannot be written ({existing}: {reason}); choose a "
                          f"writable {key}")


def is_read_only_mount(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_launcher(overrides: Sequence[Override], first: list[str], compose: Any) -> None:
    """The default launcher's ``n_jobs``: null or a positive number (joblib's own launcher reads
    -1 as every core; this one chooses by itself when it is null). Other Hydra settings are
    Hydra's to check."""
    from regbench.sweep_plan import LAUNCHER_TARGET, check_n_jobs

    hydra_settings = [o.input_line for o in overrides
                      if o.key_or_group.startswith("hydra") and not o.is_sweep_override()]
    try:
        launcher = compose([*first, *hydra_settings], hydra=True).hydra.launcher
    except (HydraException, OmegaConfBaseException, ValueError):
        return
    if str(launcher.get("_target_", "")) == LAUNCHER_TARGET:
        check_n_jobs(launcher.get("n_jobs"))


def check_command_line(args: Sequence[str]) -> None:
    """Raise ConfigError for the first bad override of a command line."""
    command_line = split_command_line(args)
    if any(flag in UNCHECKED_FLAGS for flag in command_line.flags):
        return
    config_name = check_config_name(command_line.flag_value("--config-name", "-cn"))
    overrides = parse_overrides(command_line.overrides)
    if not set(command_line.flags) - MULTIRUN_FLAGS:  # a run or a sweep, not --help, --cfg, ...
        check_output_folder(output_folder(overrides, command_line.multirun),
                            "hydra.sweep.dir" if command_line.multirun else "hydra.run.dir")
    with composer(config_name) as compose:
        candidates = list(candidate_command_lines(checked_overrides(overrides)))
        if not command_line.multirun:
            check_sweeps_have_multirun(overrides, candidates[0], compose)
        elif not set(command_line.flags) - MULTIRUN_FLAGS:
            check_launcher(overrides, candidates[0], compose)
        for candidate in candidates:
            try:
                OmegaConf.to_object(compose(candidate))
            except ConfigError:
                raise
            except (HydraException, OmegaConfBaseException, ValueError) as error:
                raise ConfigError(explained(error, candidate, compose)) from None


def explained(error: BaseException, command_line: list[str], compose: Any) -> str:
    """Hydra's message in one line, with what the user probably meant."""
    message = first_lines(error)
    name = unselected_regularizer(command_line)
    if name is not None:
        return message + f" (select it too: regularizer={name} or regularizer=[...,{name}])"
    suggestion = closest_key(command_line, compose)
    return message + (f" (did you mean {suggestion}?)" if suggestion else "")


def closest_key(command_line: list[str], compose: Any) -> str | None:
    """The existing key closest to the first override whose key does not exist (``trainer.epoch``
    -> ``trainer.epochs``), found in the config composed with the command line's group choices."""
    groups = config_groups()
    choices = [line for line in command_line if line.partition("=")[0].lstrip("+~") in groups]
    try:
        config = compose(choices)
    except (HydraException, OmegaConfBaseException, ValueError):
        return None
    for line in command_line:
        key = line.partition("=")[0]
        if key.startswith(("+", "~")) or key in groups or "." not in key:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(config, parent_key)
        if OmegaConf.is_dict(parent) and leaf not in parent:
            close = difflib.get_close_matches(leaf, [str(k) for k in parent.keys()], n=1)
            return f"{parent_key}.{close[0]}" if close else None
    return None


def exit_on_bad_command_line(args: Sequence[str]) -> list[str]:
    """The command line as Hydra should get it (overrides first), or one line and exit 2."""
    try:
        check_command_line(args)
    except ConfigError as error:
        print(f"regbench: error: {error}", file=sys.stderr)
        sys.exit(2)
    return split_command_line(args).for_hydra()
