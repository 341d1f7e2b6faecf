"""The one training entrypoint: ``python -m regbench`` / ``regbench``."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from regbench.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from regbench.config import Config, ConfigError, register_configs
from regbench.datasets import build_data
from regbench.engine import DivergedError, InterruptedRun, Run, Trainer, resolve_device
from regbench.models import ModelOptions, build_model
from regbench.optim import build_optimizer, build_scheduler, param_groups
from regbench.paths import config_dir
from regbench.recording import RunRecorder, read_json
from regbench.regularizers import RunContext, build_regularizers
from regbench.validate import exit_on_bad_command_line

log = logging.getLogger("regbench")
register_configs()

CHECKPOINT = "last.pt"
# Dataset keys that say where and how the files are read, not what is trained on.
DATA_LOCATION_KEYS = ("root", "download", "num_workers")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


def run_identity(settings: Config) -> dict[str, Any]:
    """What a checkpoint must share with the run that loads it: everything that shapes the
    training, but not where the data lives or how it is loaded."""
    def as_yaml(node: Any) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(node))

    dataset = OmegaConf.to_container(OmegaConf.structured(settings.dataset))
    dataset = {key: value for key, value in dataset.items() if key not in DATA_LOCATION_KEYS}
    return {
        "dataset": OmegaConf.to_yaml(dataset),
        "model": as_yaml(settings.model),
        "regularizer": as_yaml(settings.regularizer),
        "optimizer": as_yaml(settings.optimizer),
        "batch_size": settings.trainer.batch_size,
        "seed": settings.seed,
    }


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The flattened settings a sweep compares, for TensorBoard's HParams tab."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {
        "regularizer": ",".join(sorted(container.get("regularizer") or {})) or "none",
        "seed": container["seed"],
    }
    sections = {key: container[key] for key in ("dataset", "model", "optimizer", "regularizer")}
    sections["trainer"] = {k: container["trainer"][k] for k in ("epochs", "batch_size")}
    for section, values in sections.items():
        for key, value in (values or {}).items():
            if section == "dataset" and key in DATA_LOCATION_KEYS:
                continue  # where the data is does not change the experiment
            if isinstance(value, dict):  # one regularizer's parameters
                flat.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                flat[f"{section}.{key}"] = value
    # The HParams plugin takes numbers, strings and booleans only.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def show_progress(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and HydraConfig.get().mode != RunMode.MULTIRUN


def build_run(settings: Config, device: torch.device) -> Run:
    trainer_cfg = settings.trainer
    data = build_data(settings.dataset, trainer_cfg.batch_size, device, settings.seed)
    context = RunContext(
        dataset=settings.dataset.name, model=settings.model.name, num_classes=data.num_classes,
        epochs=trainer_cfg.epochs, optimizer=settings.optimizer.name.value,
        regularizers=list(settings.regularizer), val_size=settings.dataset.val_size,
    )
    regularizers = build_regularizers(settings.regularizer, context)
    options = ModelOptions()
    for regularizer in regularizers:
        regularizer.configure_model(options)
    model = build_model(settings.model, data.input_shape, data.num_classes, options).to(device)
    for regularizer in regularizers:
        regularizer.on_model_built(model)
    optimizer = build_optimizer(settings.optimizer, param_groups(model, regularizers))
    scheduler = build_scheduler(settings.optimizer, optimizer, trainer_cfg.epochs, len(data.train))
    return Run(data, regularizers, model, optimizer, scheduler)


def checkpoint_state(run: Run, scaler: torch.amp.GradScaler, history: list[dict[str, Any]],
                     identity: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": history[-1]["epoch"], "identity": identity, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "regularizers": {r.name: r.state_dict() for r in run.regularizers},
        "data_order": run.data.train.generator.get_state(),
        "rng": rng_state(), "history": history,
    }


def restore(run: Run, state: dict[str, Any]) -> None:
    """Put every piece of state back as it was at the end of the checkpointed epoch."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    for regularizer in run.regularizers:
        regularizer.load_state_dict(state["regularizers"].get(regularizer.name, {}))
    run.data.train.generator.set_state(state["data_order"])
    set_rng_state(state["rng"])


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT and SIGTERM (Ctrl-C, a scheduler's pre-emption) let the current step finish, then the
    run stops with its last completed epoch checkpointed; a second signal stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if trainer.stop_signal is not None:
            raise KeyboardInterrupt
        trainer.stop_signal = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and test one configuration; everything lands in ``run_dir``. Returns metrics.json.

    A run folder that already holds a checkpoint is resumed from its last completed epoch; one whose
    metrics.json says completed is not trained again."""
    started = time.perf_counter()
    settings: Config = OmegaConf.to_object(cfg)  # runs the schema's range checks
    identity = run_identity(settings)
    checkpoint_path = run_dir / CHECKPOINT
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and read_json(metrics_path).get("status") == "completed":
        if checkpoint_path.exists():
            load_checkpoint(checkpoint_path, identity)  # refuses a folder of another configuration
        log.info("%s is already completed; not training again", run_dir)
        return read_json(metrics_path)
    trainer_cfg = settings.trainer
    torch.set_num_threads(trainer_cfg.num_threads or os.cpu_count() or 1)
    seed_everything(settings.seed, trainer_cfg.deterministic)
    device = resolve_device(trainer_cfg.device)
    run = build_run(settings, device)

    history: list[dict[str, Any]] = []
    state = load_checkpoint(checkpoint_path, identity) if checkpoint_path.exists() else None
    if state is not None:
        restore(run, state)
        history = list(state["history"])
        log.info("resuming from %s after epoch %d", checkpoint_path, state["epoch"])
    start_epoch = len(history)
    # Events of epochs after the checkpoint (logged before an interruption) are dropped.
    recorder = RunRecorder(run_dir, purge_step=start_epoch + 1 if state else None)
    recorder.rewrite_history(history)
    trainer = Trainer(run, trainer_cfg, device, show_progress(trainer_cfg.progress), recorder)
    if state is not None:
        trainer.scaler.load_state_dict(state["scaler"])

    def on_epoch(record: dict[str, Any]) -> None:
        history.append(record)
        if trainer_cfg.checkpoint:
            save_checkpoint(checkpoint_path, checkpoint_state(run, trainer.scaler, history, identity))

    summary: dict[str, Any] = {
        "dataset": settings.dataset.name, "model": settings.model.name,
        "regularizer": sorted(settings.regularizer) or ["none"], "seed": settings.seed,
    }
    try:
        with stop_on_signals(trainer):
            stopped = bool(history) and history[-1].get("stopped_early", False)
            epochs = len(history) if stopped else trainer.fit(start_epoch, on_epoch)
    except (DivergedError, InterruptedRun) as error:
        status = "diverged" if isinstance(error, DivergedError) else "interrupted"
        recorder.write_metrics({
            "status": status, "error": str(error), f"{status}_epoch": error.epoch,
            f"{status}_step": error.step, **summary, **(history[-1] if history else {}),
            "epochs": len(history), "seconds": time.perf_counter() - started,
        })
        recorder.close()
        raise
    metrics = {"status": "completed", **trainer.test(step=epochs), "epochs": epochs,
               "seconds": sum(r["seconds"] for r in history), **summary}
    final = {k: v for k, v in metrics.items() if k.startswith(("test/", "gap/")) or k == "temperature"}
    recorder.log_hparams(hparams(cfg), final, step=epochs)
    recorder.write_metrics(metrics)
    recorder.close()
    return metrics


def tensorboard_logdir(run_dir: Path) -> Path:
    """The output root holding this run (``outputs`` by default), so TensorBoard shows all runs."""
    for folder in run_dir.parents:
        if folder.name == "outputs":
            return folder
    return run_dir


def relative_to_cwd(path: Path) -> Path:
    """Paths under the working directory are shown as the user typed them: outputs/..."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    print(
        f"\ntest accuracy {metrics['test/acc']:.4f} (loss {metrics['test/loss']:.4f}, "
        f"mean confidence {metrics['test/mean_confidence']:.3f}) after {metrics['epochs']} epochs "
        f"in {metrics['seconds']:.1f} s\n"
        f"run folder:   {relative_to_cwd(run_dir)}\n"
        f"see curves:   tensorboard --logdir {relative_to_cwd(tensorboard_logdir(run_dir))}"
    )


class JobFailed(RuntimeError):
    """A multirun job that failed; raised so the launcher goes on with the other jobs."""


def fail(message: str, exit_code: int, stop_sweep: bool = False) -> None:
    """Report a failed run: one line on stderr; a single run exits, a multirun job raises so the
    other jobs go on, unless the whole sweep must stop (an interruption)."""
    print(message, file=sys.stderr)
    if HydraConfig.get().mode == RunMode.MULTIRUN and not stop_sweep:
        log.error(message)
        raise JobFailed(message) from None
    sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the objective (``objective``, a validation metric) for sweepers such as Optuna."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except ConfigError as error:
        message = str(error)
        # DataLoader re-raises a worker's error with the traceback as its message; its last line
        # is the error itself (e.g. a corrupt image, named).
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        RunRecorder.write_failure(run_dir, {"status": "failed", "error": message})
        fail(f"regbench: error: {message}", exit_code=2)
    except DivergedError as error:
        fail(f"regbench: diverged: {error}; see {relative_to_cwd(run_dir / 'metrics.json')}",
             exit_code=1)
    except InterruptedRun as error:
        fail(f"regbench: {error}; run the same command with hydra.run.dir={relative_to_cwd(run_dir)} "
             f"to resume from the last completed epoch",
             exit_code=128 + signal.Signals[error.signal_name].value, stop_sweep=True)
    except Exception as error:
        # An unexpected fault: record it for the report, keep the traceback for the bug report.
        RunRecorder.write_failure(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        raise
    print_summary(metrics, run_dir)
    objective = cfg.objective
    if objective not in metrics:
        fail(f"regbench: error: objective={objective!r} is not a metric of this run; choose one of: "
             f"{', '.join(k for k, v in metrics.items() if isinstance(v, float))}", exit_code=2)
    return float(metrics[objective])


def main() -> None:
    """``python -m regbench`` and the ``regbench`` script: check the command line, then run Hydra."""
    exit_on_bad_command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
