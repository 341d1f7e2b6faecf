"""Models by name. Each module registers a builder and the schema of its config."""

from __future__ import annotations

from typing import Callable

from torch import nn

from regbench.models.base import Classifier, ModelOptions
from regbench.registry import Registry, import_submodules

# builder(model config, input shape (C, H, W), number of classes, options) -> Classifier
ModelBuilder = Callable[[object, tuple, int, ModelOptions], Classifier]
MODELS: Registry[ModelBuilder] = Registry("model")

# blocks.py is imported by the builders that use it (it needs torchvision).
import_submodules(__name__, __path__, skip=("base", "blocks"))


def build_model(cfg, input_shape: tuple, num_classes: int, options: ModelOptions) -> Classifier:
    model = MODELS.get(cfg.name)(cfg, input_shape, num_classes, options)
    assert isinstance(model, nn.Module)
    return model
