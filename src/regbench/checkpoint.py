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
from regbench.spec import first_difference

# What Run.state_dict writes, plus the identity of the run it belongs to.
REQUIRED_KEYS = frozenset({"identity", "epoch", "model", "optimizer", "scheduler", "scaler",
                           "regularizers", "data_order", "rng", "history"})


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


def save_checkpoint(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({**state, "identity": identity}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Load ``path``, refusing a file that is not a regbench checkpoint or belongs to another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, corrupt or foreign file (torch's message spans lines)
        raise ConfigError(f"checkpoint {path} cannot be read (truncated, corrupt or not a regbench "
                          f"checkpoint: {type(error).__name__}); delete it to start the run from "
                          f"scratch") from None
    if not isinstance(state, dict) or not REQUIRED_KEYS <= state.keys():
        raise ConfigError(f"checkpoint {path} is not a regbench checkpoint (expected a dict with "
                          f"{', '.join(sorted(REQUIRED_KEYS))}); delete it to start the run from "
                          f"scratch")
    difference = first_difference(state["identity"], identity)
    if difference is not None:
        raise ConfigError(different_run_message(path.parent, *difference))
    return state


def different_run_message(folder: Path, key: str, old: Any, new: Any) -> str:
    """One line for a run folder that holds another experiment."""
    return (f"{folder} belongs to a different run ({key} was {old!r} there, now {new!r}); "
            f"use a new hydra.run.dir (or hydra.sweep.dir)")
