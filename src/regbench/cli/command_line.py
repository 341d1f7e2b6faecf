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

import re
import shlex
import sys
from typing import Any, Iterator, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from regbench.cli.compose import composer, config_dir
from regbench.config import ConfigError

# The one flag of a plain run or sweep; any other (--help, --cfg, --info, ...) asks Hydra for
# something else, and Hydra handles that command line itself.
MULTIRUN_FLAGS = {"-m", "--multirun"}


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


def check_command_line(args: Sequence[str]) -> None:
    """Raise ConfigError for the first bad override of a command line."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in args):
        return
    arguments = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except HydraException as error:
        message = first_lines(error)
        if any(not arg.isascii() for arg in arguments):
            message += " (a value with non-ASCII characters, such as a path, must be quoted: " \
                       "key='value', inside the shell's quotes: \"key='value'\")"
        raise ConfigError(message) from None
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
    with composer() as compose:
        for command_line in candidate_command_lines(checked):
            try:
                OmegaConf.to_object(compose(command_line))
            except ConfigError:
                raise
            except (HydraException, OmegaConfBaseException, ValueError) as error:
                message = first_lines(error)
                name = unselected_regularizer(command_line)
                if name is not None:
                    message += f" (select it too: regularizer={name} or regularizer=[...,{name}])"
                raise ConfigError(message) from None


def exit_on_bad_command_line(args: Sequence[str]) -> None:
    try:
        check_command_line(args)
    except ConfigError as error:
        print(f"regbench: error: {error}", file=sys.stderr)
        sys.exit(2)
