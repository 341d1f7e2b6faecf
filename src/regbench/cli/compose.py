"""The one way regbench composes its configs: where they are (an editable checkout or an installed
wheel), every schema registered, then Hydra's compose API. Used by the command-line check, by
``regbench.fold`` and by tests, benchmarks and scripts, which get the same files and schema as the
command line without starting a Hydra run.

Models, regularizers and optimizers register their schemas when their modules are imported
(``register_schema``); the primary schema comes from config/schema.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import regbench.models  # noqa: F401  (importing registers every model's schema)
import regbench.optim  # noqa: F401  (and every optimizer's)
import regbench.regularizers  # noqa: F401  (and every regularizer's)
import regbench.run.loggers  # noqa: F401  (and every logger's)
from regbench.config import Config, register_configs

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The wheel ships ``configs/`` inside the package; a source checkout has it at the top."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parents[1] / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"regbench's configs/ folder was not found next to {_PACKAGE_DIR}")


def dip_config_dir() -> Path:
    """``configs_dip/``, python -m regbench.dip's own config folder (kept out of ``configs/``,
    whose every folder is a group of the main config), found the same two ways."""
    for candidate in (_PACKAGE_DIR / "configs_dip", _PACKAGE_DIR.parents[1] / "configs_dip"):
        if (candidate / "dip.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"regbench's configs_dip/ folder was not found next to {_PACKAGE_DIR}")


def register_schemas() -> None:
    """Every structured-config schema in Hydra's ConfigStore; whatever composes calls this first."""
    register_configs()


@contextlib.contextmanager
def composer(config_name: str = "config") -> Iterator[Callable[..., DictConfig]]:
    """A ``compose(overrides)`` function over regbench's configs, for several compositions in one
    initialization (the command-line check composes once per swept value); ``hydra=True`` keeps
    Hydra's own node (hydra.mode, hydra.run.dir...) in the result."""
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield lambda overrides, hydra=False: compose(config_name=config_name, overrides=list(overrides),
                                                     return_hydra_config=hydra)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    with composer() as compose_overrides:
        return compose_overrides(overrides)


def compose_settings(overrides: Sequence[str] = ()) -> Config:
    """The composed config as dataclasses, range checks run (what ``Run.build`` takes)."""
    return OmegaConf.to_object(compose_config(overrides))
