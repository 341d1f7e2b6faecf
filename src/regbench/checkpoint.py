"""last.pt: everything needed to continue a run exactly where it stopped.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint file cannot run code; everything in
it is therefore tensors and plain Python values.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regbench.config import ConfigError
from regbench.recording import atomic_write_bytes


def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Load ``path``, refusing one written by a run with a different model, dataset or regularizers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, corrupt or foreign file (torch's message spans lines)
        raise ConfigError(f"checkpoint {path} cannot be read (truncated, corrupt or not a regbench "
                          f"checkpoint: {type(error).__name__}); delete it to start the run from "
                          f"scratch") from None
    saved = state.get("identity", {})
    if saved != identity:
        different = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise ConfigError(f"checkpoint {path} belongs to a different run ({', '.join(different)} "
                          f"differ); use another hydra.run.dir or delete the checkpoint")
    return state
