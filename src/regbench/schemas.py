"""Every structured-config schema registered in Hydra's ConfigStore, in one call.

Models and regularizers register their schemas when their modules are imported; the primary
schema and the optimizers' come from config.py. Whatever composes the configs calls this first.
"""

from __future__ import annotations

import regbench.models  # noqa: F401  (importing registers every model's schema)
import regbench.regularizers  # noqa: F401  (and every regularizer's)
from regbench.config import register_configs


def register_schemas() -> None:
    register_configs()
