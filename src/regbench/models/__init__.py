"""Models by name. Each module registers its builder and the schema of its config with
``register_model`` (models/base.py); importing this package imports them all."""

from __future__ import annotations

from regbench.models.base import (
    MODELS,
    Classifier,
    DropoutPlacement,
    ModelBuilder,
    ModelOptions,
    build_model,
    register_model,
)
from regbench.registry import import_submodules

__all__ = ["MODELS", "Classifier", "DropoutPlacement", "ModelBuilder", "ModelOptions",
           "build_model", "register_model"]

# blocks.py is imported by the builders that use it (it needs torchvision); layers.py registers
# nothing (the dropout regularizer and the probes import it).
import_submodules(__name__, __path__, skip=("base", "blocks", "layers"))
