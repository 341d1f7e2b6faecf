"""Regularizers by name: one module each, registered with ``register_regularizer``.

To add one: write ``regularizers/<name>.py`` (a config dataclass and a ``Regularizer`` subclass
overriding the hooks it needs), ``configs/regularizer/<name>.yaml`` and a test. Nothing else changes.
"""

from __future__ import annotations

from regbench.registry import import_submodules
from regbench.regularizers.base import (
    REGULARIZERS,
    Regularizer,
    RunContext,
    StepOutput,
    build_regularizers,
    register_regularizer,
)

__all__ = ["REGULARIZERS", "Regularizer", "RunContext", "StepOutput", "build_regularizers",
           "register_regularizer"]

import_submodules(__name__, __path__)
