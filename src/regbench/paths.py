"""Where the Hydra configs are, for an editable checkout and for an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


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
