"""User mistakes in the configuration, said in one line: the error type and its two helpers."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A user mistake in the configuration: reported as one line, without a traceback."""


def check(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Refuse ``key=value`` unless ``condition`` holds, naming what is allowed."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def one_line(error: BaseException | str) -> str:
    """A message on one line (torchvision's, Hydra's and OSError's messages may span several)."""
    return " ".join(str(error).split()) or type(error).__name__
