"""The real configs composed in-process (tests, benchmarks, scripts): the same files and schema
as the command line, without starting a Hydra run."""

from __future__ import annotations

from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from regbench.config import Config
from regbench.paths import config_dir
from regbench.schemas import register_schemas


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_settings(overrides: Sequence[str] = ()) -> Config:
    """The composed config as dataclasses, range checks run (what ``Run.build`` takes)."""
    return OmegaConf.to_object(compose_config(overrides))
