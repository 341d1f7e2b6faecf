"""The one training entrypoint: ``python -m regbench`` / ``regbench``."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from regbench.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from regbench.config import Config, ConfigError, register_configs
from regbench.datasets import build_data
from regbench.engine import DivergedError, Trainer, resolve_device
from regbench.models import ModelOptions, build_model
from regbench.optim import build_optimizer, build_scheduler, param_groups
from regbench.paths import config_dir
from regbench.recording import RunRecorder, read_json
from regbench.regularizers import RunContext, build_regularizers

log = logging.getLogger("regbench")
register_configs()

CHECKPOINT = "last.pt"


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
    """What a checkpoint must share with the run that loads it."""
    return {
        "dataset": OmegaConf.to_yaml(OmegaConf.structured(settings.dataset)),
        "model": OmegaConf.to_yaml(OmegaConf.structured(settings.model)),
        "regularizer": sorted(settings.regularizer),
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
            if section == "dataset" and key in ("root", "download", "num_workers"):
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


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and test one configuration; everything lands in ``run_dir``. Returns metrics.json."""
    started = time.perf_counter()
    settings: Config = OmegaConf.to_object(cfg)  # runs the schema's range checks
    trainer_cfg = settings.trainer
    torch.set_num_threads(trainer_cfg.num_threads or os.cpu_count() or 1)
    seed_everything(settings.seed, trainer_cfg.deterministic)
    device = resolve_device(trainer_cfg.device)

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
    recorder = RunRecorder(run_dir)
    trainer = Trainer(model, data, regularizers, optimizer, scheduler, trainer_cfg, device,
                      show_progress(trainer_cfg.progress), recorder)

    summary: dict[str, Any] = {
        "dataset": settings.dataset.name, "model": settings.model.name,
        "regularizer": sorted(settings.regularizer) or ["none"], "seed": settings.seed,
    }
    identity = run_identity(settings)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        for regularizer in regularizers:
            regularizer.load_state_dict(state["regularizers"].get(regularizer.name, {}))
        if hasattr(data.train, "generator"):
            data.train.generator.set_state(state["data_order"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        recorder.rewrite_history(history)
        start_epoch = state["epoch"]
        log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)

    def on_epoch(record: dict[str, Any]) -> None:
        history.append(record)
        if trainer_cfg.checkpoint:
            save_checkpoint(checkpoint_path, {
                "epoch": record["epoch"], "identity": identity, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(),
                "regularizers": {r.name: r.state_dict() for r in regularizers},
                "data_order": getattr(data.train, "generator", torch.Generator()).get_state(),
                "rng": rng_state(), "history": history,
            })

    try:
        epochs = trainer.fit(start_epoch, on_epoch)
    except DivergedError as error:
        last = history[-1] if history else {}
        metrics = {"status": "diverged", "error": str(error), "diverged_epoch": error.epoch,
                   "diverged_step": error.step, **summary, **last,
                   "epochs": len(history), "seconds": time.perf_counter() - started}
        recorder.write_metrics(metrics)
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


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except ConfigError as error:
        print(f"regbench: error: {error}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as error:
        print(f"regbench: diverged: {error}; see {run_dir / 'metrics.json'}", file=sys.stderr)
        sys.exit(1)
    print_summary(metrics, run_dir)
    return float(metrics.get("val/acc", metrics["test/acc"]))


if __name__ == "__main__":
    main()
