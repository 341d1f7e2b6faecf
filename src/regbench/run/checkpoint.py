"""A run's checkpoints: last.pt, everything needed to continue a run exactly where it stopped, and
best.pt, the weights of its best epoch; ``CheckpointPolicy`` decides when each is written and what a
completed run keeps (``trainer.checkpoint``, ``checkpoint_interval_s``, ``keep_checkpoint``).

Loaded with ``torch.load(weights_only=True)``, so a checkpoint file cannot run code; everything in
it is therefore tensors and plain Python values. Every checkpoint (last.pt, best.pt, regbench.fold's
folded.pt) holds a SHA-256 of the rest of its content (``CHECKSUM_KEY``, ``files.state_digest``),
compared on load, because ``torch.load`` does not check the zip's CRCs: a flipped sign or an
overwritten byte would otherwise be resumed from as valid weights. A checkpoint from a regbench
without checksums is loaded unverified, with one warning; a resumed one must also fit the run
(``check_progress``). A refused checkpoint is a ``CheckpointError``: one line, nothing written.
"""

from __future__ import annotations

import io
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from regbench.config import Config, ConfigError, KeepCheckpoint, TrainerConfig, check, one_line
from regbench.files import atomic_write_bytes, state_digest
from regbench.run.spec import (
    BEST_CHECKPOINT_FILE,
    CHECKPOINT_FILE,
    different_run_message,
    first_difference,
    lower_is_better,
)

log = logging.getLogger(__name__)

# What Run.state_dict writes, plus the identity of the run it belongs to.
REQUIRED_KEYS = frozenset({"identity", "epoch", "model", "optimizer", "scheduler", "scaler",
                           "regularizers", "data_order", "rng", "history"})
IDENTITY = frozenset({"identity"})  # what every checkpoint holds besides its own content
# The SHA-256 (files.state_digest) of everything else a checkpoint file holds.
CHECKSUM_KEY = "checksum"
RESTART = "delete it to start the run from scratch"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used, refused in one line. The run folder is left as it was: no
    failure is recorded over the metrics.json of the run that wrote it (train.failure_record)."""


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
    """``state`` and the identity of its run, with their checksum, written atomically."""
    content = {**state, "identity": identity}
    content[CHECKSUM_KEY] = state_digest(content)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def host_copy(value: Any) -> Any:
    """A copy of a state dict in host memory that further training cannot change: tensors copied
    to the CPU (a GPU run's snapshot does not double its GPU memory; checkpoints load on the CPU
    anyway), dicts, lists and tuples rebuilt, everything else (numbers, strings: immutable) shared."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(host_copy(item) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item) for item in value)
    return value


class IntervalCheckpoint:
    """last.pt on a time interval instead of after every epoch (``trainer.checkpoint_interval_s``).

    After each epoch the run's state is copied to host memory (``host_copy``, far cheaper than
    serializing, writing and fsyncing it: README, Performance); the file is written when
    ``interval_s`` have passed since the last write, after the last epoch (so a test phase cut off
    resumes at the test, without training again), and by ``flush`` when the run stops at a signal,
    diverges or fails. Only a hard kill (SIGKILL, the OOM killer, a power cut) loses finished
    epochs: at most ``interval_s`` seconds of them. ``interval_s`` 0 writes after every epoch."""

    def __init__(self, path: Path, identity: dict[str, Any], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.identity, self.interval_s, self.clock = path, identity, interval_s, clock
        self.written_at = clock()
        self.pending: dict[str, Any] | None = None  # the last finished epoch's state, not yet on disk

    def after_epoch(self, state: dict[str, Any], last: bool) -> None:
        if last or self.clock() - self.written_at >= self.interval_s:
            self.pending = None
            self.write(state)
        else:
            self.pending = host_copy(state)

    def flush(self) -> None:
        """Write the last finished epoch's state if it is not on disk yet."""
        if self.pending is not None:
            state, self.pending = self.pending, None
            self.write(state)

    def write(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, state, self.identity)
        self.written_at = self.clock()


def resume(run: Any, path: Path, identity: dict[str, Any], epochs: int) -> None:
    """Put ``run`` (an engine.Run of ``epochs`` epochs) back where the checkpoint ``path`` left it
    (``load_checkpoint``). A state its model, optimizer or regularizers cannot take (a hand-made
    file, or one from a regbench whose model had other layers) is refused in one line."""
    state = load_checkpoint(path, identity, epochs)
    try:
        run.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        # Cut: torch lists every missing and unexpected key (hundreds for a ResNet).
        raise CheckpointError(f"checkpoint {path} does not fit this run's model, optimizer or "
                              f"regularizers ({type(error).__name__}: {one_line(error)[:300]}); "
                              f"{RESTART}") from None


def load_checkpoint(path: Path, identity: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The state to resume the run ``identity`` (of ``epochs`` epochs) from: ``path`` as regbench
    wrote it for this run (``read_checkpoint``), with a progress that fits the run."""
    state = read_checkpoint(path, identity, REQUIRED_KEYS)
    check_progress(path, state, epochs)
    return state


def read_checkpoint(path: Path, identity: dict[str, Any], required: frozenset[str] = IDENTITY,
                    remedy: str = RESTART) -> dict[str, Any]:
    """The content of the checkpoint ``path`` without its checksum, refusing (``CheckpointError``,
    one line ending in ``remedy``) a file that is not a regbench checkpoint holding ``required``,
    does not match its checksum, or belongs to another run."""
    state = torch_load(path, remedy)
    verified = isinstance(state, dict) and CHECKSUM_KEY in state
    if verified:
        verify_checksum(path, state, remedy)
    holds_required = isinstance(state, dict) and required <= state.keys()
    if not holds_required or not isinstance(state.get("identity"), dict):
        raise CheckpointError(f"checkpoint {path} is not a regbench checkpoint (expected a dict with "
                              f"{', '.join(sorted(required))}); {remedy}")
    if not verified:  # an older regbench's: it can be neither trusted nor told apart
        log.warning("checkpoint %s has no checksum (written by a regbench from before checksums): "
                    "it is loaded unverified", path)
    difference = first_difference(state["identity"], identity)
    if difference is not None:
        raise CheckpointError(different_run_message(path.parent, *difference))
    return state


def torch_load(path: Path, remedy: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, corrupt or foreign file (torch's message spans lines)
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated, corrupt or not a "
                              f"regbench checkpoint: {type(error).__name__}); {remedy}") from None


def verify_checksum(path: Path, state: dict[str, Any], remedy: str) -> None:
    """Take ``state``'s checksum out of it and compare it with the SHA-256 of the rest."""
    if state.pop(CHECKSUM_KEY) != state_digest(state):
        raise CheckpointError(f"checkpoint {path} does not match its checksum: its content changed "
                              f"after regbench wrote it (a disk or copy error, or an edit); {remedy}")


def check_progress(path: Path, state: dict[str, Any], epochs: int) -> None:
    """A resumable checkpoint holds 1 to ``epochs`` finished epochs and one history record per
    epoch, numbered 1, 2, ...; anything else (a hand-made or edited file) would be resumed from as
    a run of another length."""
    epoch, history = state["epoch"], state["history"]
    numbers = [record.get("epoch") if isinstance(record, dict) else None
               for record in history] if isinstance(history, list) else None
    if type(epoch) is int and 1 <= epoch <= epochs and numbers == list(range(1, epoch + 1)):
        return
    length = len(history) if isinstance(history, list) else type(history).__name__
    raise CheckpointError(f"checkpoint {path} does not fit this run: it holds epoch {epoch!r} and a "
                          f"history of {length} epochs, but trainer.epochs={epochs} (a checkpoint "
                          f"holds 1 to {epochs} finished epochs, one history record each, numbered "
                          f"from 1); {RESTART}")


def objective_improved(history: list[dict[str, Any]], objective: str) -> bool:
    """Whether the last epoch has the best ``objective`` so far (the report's rule for which
    metrics are lower-is-better); ties go to the earlier epoch."""
    values = [record[objective] for record in history if objective in record]
    if not values or objective not in history[-1]:
        return False
    best = min(values) if lower_is_better(objective) else max(values)
    return history[-1][objective] == best and values.index(best) == len(values) - 1


def check_keep_checkpoint(settings: Config) -> None:
    if settings.trainer.keep_checkpoint == KeepCheckpoint.best:
        check(settings.objective.startswith("val/") and settings.dataset.val_size != 0,
              "trainer.keep_checkpoint", "best",
              f"last or none when objective={settings.objective} is not a val/ metric of a run with "
              f"a validation split (best.pt is the epoch with the best objective)")


class CheckpointPolicy:
    """What a run writes of itself, and what a completed run keeps, in its folder ``folder``:

    - last.pt (``trainer.checkpoint``): the whole state after the last finished epoch, on an
      interval (``IntervalCheckpoint``), flushed when the run stops at a signal or an error;
    - best.pt (``keep_checkpoint=best``): the model weights of the epoch with the best
      ``objective`` so far;
    - once metrics.json says completed, ``finish`` drops what ``keep_checkpoint`` does not keep."""

    def __init__(self, folder: Path, identity: dict[str, Any], trainer: TrainerConfig,
                 objective: str) -> None:
        self.last_path, self.best_path = folder / CHECKPOINT_FILE, folder / BEST_CHECKPOINT_FILE
        self.identity, self.objective = identity, objective
        self.enabled, self.keep = trainer.checkpoint, trainer.keep_checkpoint
        self.last = IntervalCheckpoint(self.last_path, identity, trainer.checkpoint_interval_s)

    def after_epoch(self, state: dict[str, Any], last: bool) -> None:
        """``state``: the run's state dict after a finished epoch (``last``: training is over)."""
        self.last.after_epoch(state, last=last)
        if self.keep == KeepCheckpoint.best and objective_improved(state["history"], self.objective):
            record = state["history"][-1]
            save_checkpoint(self.best_path, {"model": state["model"], "epoch": record["epoch"],
                                             "objective": self.objective,
                                             "value": record[self.objective]}, self.identity)

    def flush(self) -> None:
        """Stopped by a signal, a divergence or an error: keep every finished epoch."""
        self.last.flush()

    def finish(self) -> None:
        """After metrics.json says completed (so nothing can need last.pt to resume): what
        ``keep_checkpoint`` does not keep is removed. With ``trainer.checkpoint=false`` the run
        wrote no checkpoint, so it keeps none: a last.pt (which it resumed from) or best.pt left by
        an earlier, interrupted attempt holds an earlier epoch, which regbench.fold or a user would
        take for the trained model."""
        if self.keep in (KeepCheckpoint.none, KeepCheckpoint.best) or not self.enabled:
            self.last_path.unlink(missing_ok=True)
        if not self.enabled and self.best_path.exists():
            self.remove_earlier_best()

    def remove_earlier_best(self) -> None:
        """best.pt of an earlier attempt, removed only when it is regbench's, of this run."""
        try:
            read_checkpoint(self.best_path, self.identity, remedy="left as it is")
        except CheckpointError as error:
            log.warning("%s", error)
            return
        self.best_path.unlink()
        log.info("removed %s of an earlier attempt: trainer.checkpoint=false keeps no checkpoint",
                 self.best_path)
