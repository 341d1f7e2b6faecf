"""Datasets by name. Each module registers a loader that returns the official train/test splits
with ``register_dataset`` (datasets/base.py); importing this package imports them all."""

from __future__ import annotations

from regbench.datasets.base import (
    DATASETS,
    DataBundle,
    RawSplits,
    build_data,
    register_dataset,
)
from regbench.registry import import_submodules

__all__ = ["DATASETS", "DataBundle", "RawSplits", "build_data", "register_dataset"]

import_submodules(__name__, __path__)
