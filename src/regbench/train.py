"""The one training entrypoint, ``python -m regbench`` / ``regbench``: Hydra glue and error mapping.

A run is spec -> build -> fit -> test -> record: ``RunSpec`` (spec.py) says what the run is,
``RunFolder`` (run_folder.py) holds its folder for it, ``engine.Run`` builds, trains and tests it,
``RunRecorder`` (recording.py) writes what it produced. This module maps each outcome to what the
user sees: a summary, or one line and an exit status.
"""

from __future__ import annotations

import atexit
import errno
import gc
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import regbench.cli.hydra_hooks  # noqa: F401  resolvers and log filter named in configs/config.yaml
from regbench.cli.command_line import exit_on_bad_command_line
from regbench.cli.compose import config_dir, register_schemas
from regbench.config import Config, ConfigError, KeepCheckpoint, check, one_line
from regbench.run.checkpoint import IntervalCheckpoint, load_checkpoint, save_checkpoint
from regbench.run.engine import DivergedError, InterruptedRun, Run, stop_on_signals
from regbench.run.folder import RunFolder
from regbench.run.recorder import RunRecorder
from regbench.run.spec import (
    EPOCHS,
    HYDRA_SUBDIR,
    METRICS_FILE,
    SECONDS,
    SEED_KEY,
    STATUS,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
    TEST_NLL,
    RunSpec,
    Status,
    lower_is_better,
)
from regbench.run.tensorboard import hparams_values

log = logging.getLogger("regbench")
register_schemas()


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def show_progress(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not in_multirun()


def hparams(spec: RunSpec) -> dict[str, Any]:
    """The run's HParams row: its readable name (single runs' folders are timestamps), its
    experiment settings and seed (recording.hparams_values)."""
    return hparams_values(spec.experiment_settings, spec.identity[SEED_KEY], spec.name)


BEST_CHECKPOINT = "best.pt"


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
        check(settings.objective.startswith("val/") and settings.dataset.val_size > 0,
              "trainer.keep_checkpoint", "best",
              f"last or none when objective={settings.objective} is not a val/ metric of a run with "
              f"a validation split (best.pt is the epoch with the best objective)")


def save_best_weights(folder: RunFolder, run: Run, spec: RunSpec, objective: str) -> None:
    """best.pt: the model weights (weights_only-loadable) of the best epoch so far."""
    if objective_improved(run.history, objective):
        record = run.history[-1]
        save_checkpoint(folder.file(BEST_CHECKPOINT), {
            "model": run.model.state_dict(), "epoch": record["epoch"], "objective": objective,
            "value": record[objective]}, spec.identity)


def keep_checkpoints(folder: RunFolder, keep: KeepCheckpoint) -> None:
    """After metrics.json says completed (so nothing can need last.pt to resume): drop what
    trainer.keep_checkpoint does not keep."""
    if keep in (KeepCheckpoint.none, KeepCheckpoint.best):
        folder.checkpoint.unlink(missing_ok=True)


def save_hydra_configs(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/`` as Hydra writes it; regbench writes it itself (``hydra.output_subdir: null``)
    once the folder is claimed, so a refused rerun never overwrites a finished run's config."""
    if not HydraConfig.initialized():
        return  # composed in-process (tests, benchmarks): no Hydra run
    folder = run_dir / HYDRA_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")


def check_objective(settings: Config) -> None:
    """The sweeper's objective must be a metric this run will have."""
    objective = settings.objective
    check(not objective.startswith("val/") or settings.dataset.val_size > 0, "objective", objective,
          "a test/ or train/ metric when dataset.val_size=0 (there is no validation split)")


def error_message(error: BaseException) -> str:
    """One line for the user. DataLoader re-raises a worker's error with the traceback as its
    message; its last line is the error itself (e.g. a corrupt image, named)."""
    message = str(error)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return one_line(message)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and test one configuration; everything lands in ``run_dir``. Returns metrics.json.

    The folder is resumed from its checkpoint when it holds one of this same run; a folder whose
    training finished but whose test did not is tested without training again; a completed
    folder of this run is not trained again; a folder of another run is refused untouched."""
    settings: Config = OmegaConf.to_object(cfg)  # runs the schema's range checks
    spec = RunSpec(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    folder = RunFolder(run_dir)
    with folder.claim(spec):
        save_hydra_configs(run_dir, cfg)
        summary = {"dataset": settings.dataset.name, "model": settings.model.name,
                   "regularizer": spec.regularizers, SEED_KEY: settings.seed, "name": spec.name}
        try:
            if folder.completed is not None:
                log.info("%s is already completed; not training again", run_dir)
                return folder.completed
            return train_and_test(settings, spec, folder, summary)
        except ConfigError as error:
            folder.write_failure({STATUS: Status.failed.value, "error": error_message(error), **summary})
            raise
        except (DivergedError, InterruptedRun):
            raise  # train_and_test recorded them
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk takes no failure file
                folder.write_failure({STATUS: Status.failed.value, "error": one_line(error), **summary})
            raise
        except Exception as error:
            # An unexpected fault: record it for the report, keep the traceback for the bug report.
            folder.write_failure({STATUS: Status.failed.value,
                                  "error": f"{type(error).__name__}: {one_line(error)}", **summary})
            raise


def train_and_test(settings: Config, spec: RunSpec, folder: RunFolder,
                   summary: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    run = Run.build(settings, show_progress(settings.trainer.progress))
    check_objective(settings)  # after the regularizers' own checks, before any training
    check_keep_checkpoint(settings)
    if folder.checkpoint.exists():
        run.load_state_dict(load_checkpoint(folder.checkpoint, spec.identity))
        log.info("resuming from %s after epoch %d", folder.checkpoint, run.epochs_done)
    # Events of epochs after the checkpoint (logged before an interruption) are dropped.
    recorder = RunRecorder(folder.path, purge_step=run.epochs_done + 1)
    recorder.rewrite_history(run.history)

    checkpoints = IntervalCheckpoint(folder.checkpoint, spec.identity,
                                     settings.trainer.checkpoint_interval_s)

    def checkpoint(finished: Run) -> None:
        checkpoints.after_epoch(finished.state_dict(), last=finished.training_finished)
        if settings.trainer.keep_checkpoint == KeepCheckpoint.best:
            save_best_weights(folder, finished, spec, settings.objective)

    try:
        with stop_on_signals(run):
            try:
                run.fit(recorder, on_epoch=checkpoint if settings.trainer.checkpoint else None)
            finally:
                checkpoints.flush()  # stopped by a signal, a divergence or an error: keep every finished epoch
            metrics = run.test(recorder)
    except (DivergedError, InterruptedRun) as error:
        status = Status.diverged if isinstance(error, DivergedError) else Status.interrupted
        recorder.write_metrics({
            STATUS: status.value, "error": str(error), f"{status.value}_epoch": error.epoch,
            f"{status.value}_step": error.step, **summary,
            **(run.history[-1] if run.history else {}), EPOCHS: run.epochs_done,
            SECONDS: time.perf_counter() - started,
        })
        recorder.close()
        raise
    metrics = {STATUS: Status.completed.value, **metrics,
               SECONDS: sum(record["seconds"] for record in run.history), **summary}
    final = {k: v for k, v in metrics.items() if k.startswith(("test/", "gap/")) or k == "temperature"}
    recorder.log_hparams(hparams(spec), final, step=run.epochs_done)
    recorder.write_metrics(metrics)
    recorder.close()
    keep_checkpoints(folder, settings.trainer.keep_checkpoint)
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
    """The run's last lines: accuracy and calibration (test ECE raw and after temperature scaling,
    fractions as in the epoch lines and metrics.json), where the run is, how to look at it. In a
    sweep, TensorBoard is pointed at the sweep folder, where every job overlays."""
    calibrated = metrics.get(TEST_ECE_TEMPERATURE)
    after = f" ({calibrated:.4f} after temperature scaling)" if calibrated is not None else ""
    logdir = Path(HydraConfig.get().sweep.dir) if in_multirun() else tensorboard_logdir(run_dir)
    print(
        f"\ntest accuracy {metrics[TEST_ACC]:.4f}, test ECE {metrics[TEST_ECE]:.4f}{after}, "
        f"nll {metrics[TEST_NLL]:.4f}, mean confidence {metrics[TEST_MEAN_CONFIDENCE]:.3f} "
        f"after {metrics[EPOCHS]} epochs in {metrics[SECONDS]:.1f} s\n"
        f"run folder:   {relative_to_cwd(run_dir)}\n"
        f"see curves:   tensorboard --logdir {relative_to_cwd(logdir)}"
    )


def resume_hint(cfg: DictConfig, run_dir: Path) -> str:
    """How to continue an interrupted run, or why it cannot be continued."""
    if not cfg.trainer.checkpoint:
        return "it cannot be resumed (trainer.checkpoint=false): running it again starts over"
    if "SLURM_JOB_ID" in os.environ:
        return ("under SLURM a pre-empted or requeued job resumes on its own in the same folder; "
                "otherwise run the same sweep command with the same hydra.sweep.dir")
    if in_multirun():
        sweep_dir = relative_to_cwd(Path(HydraConfig.get().sweep.dir))
        return (f"run the same sweep command again with hydra.sweep.dir={sweep_dir} to resume: "
                f"completed jobs are skipped, this one continues after its last finished epoch")
    return (f"run the same command with hydra.run.dir={relative_to_cwd(run_dir)} to resume "
            f"from the last finished epoch")


def pass_on_time_limit(error: InterruptedRun, message: str) -> None:
    """SIGUSR2 is SLURM's warning before a job's time limit. Under submitit, its handler (back in
    place once the run stopped) checkpoints the job and requeues it; the requeued job resumes in
    the same folder. Without one, the run ends as interrupted like any other signal."""
    handler = signal.getsignal(signal.SIGUSR2)
    if error.signal_name == signal.SIGUSR2.name and callable(handler):
        print(f"{message}; handing over to the scheduler to requeue the job", file=sys.stderr)
        log.warning("%s; requeueing through the launcher", message)
        handler(signal.SIGUSR2, None)


def fail(message: str, exit_code: int, stop_sweep: bool = False) -> float:
    """Report a failed run in one line on stderr. A single run exits; a multirun job returns NaN so
    the other jobs go on (the sweep summary counts it), unless the whole sweep must stop."""
    print(message, file=sys.stderr)
    if in_multirun() and not stop_sweep:
        log.error(message)
        return float("nan")
    sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the objective (``objective``, a validation metric) for sweepers such as Optuna."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if in_multirun():
        freeze_long_lived_objects()
    try:
        metrics = train(cfg, run_dir)
    except ConfigError as error:
        return fail(f"regbench: error: {error_message(error)}", exit_code=2)
    except DivergedError as error:
        return fail(f"regbench: diverged: {error}; see {relative_to_cwd(run_dir / METRICS_FILE)}",
                    exit_code=1)
    except InterruptedRun as error:
        pass_on_time_limit(error, f"regbench: {error}")
        return fail(f"regbench: {error}; {resume_hint(cfg, run_dir)}",
                    exit_code=128 + signal.Signals[error.signal_name].value, stop_sweep=True)
    except OSError as error:  # a full disk, a read-only folder: the finished epochs' files stay
        where = f" {error.filename}" if error.filename else ""
        return fail(f"regbench: error: cannot write{where}: {error.strerror or error}", exit_code=1)
    print_summary(metrics, run_dir)
    return float(metrics[cfg.objective]) if cfg.objective in metrics else fail(
        f"regbench: error: objective={cfg.objective!r} is not a metric of this run; choose one "
        f"of: {', '.join(k for k, v in metrics.items() if isinstance(v, float))}", exit_code=2)


def freeze_long_lived_objects() -> None:
    """Before each job of a sweep: the previous job's garbage collected, then what is left (the
    modules the first job imported lazily, such as scikit-learn and torch._dynamo, and the caches
    it filled, such as matplotlib's fonts) frozen like the start-up imports in ``main``, so that
    the collector's full collections stop rescanning it (measured: 0.5 s of a 6-job sweep's
    1.4 s of full collections)."""
    gc.collect()
    gc.freeze()


def main() -> None:
    """``python -m regbench`` and the ``regbench`` script: check the command line, then run Hydra."""
    # The ~270,000 objects the imports made live as long as the process: out of the cyclic garbage
    # collector's way, so its full collections stop rescanning them (measured: the default job
    # 1.2 s faster, scripts/bench_startup.py).
    gc.freeze()
    exit_on_bad_command_line(sys.argv[1:])
    try:
        hydra_main()
    except SystemExit as error:
        if error.code not in (None, 0):
            raise  # a failure exits as Python does
    exit_without_teardown()


def exit_without_teardown() -> NoReturn:
    """Exit status 0 once everything is written, without the interpreter's teardown: freeing every
    object of torch, dynamo, scikit-learn and matplotlib one by one takes ~1 s per process here
    (measured with os._exit against a normal exit, default job). What a normal
    exit does that matters still happens: the atexit handlers run (logging's flush, Ray's shutdown,
    multiprocessing's child clean-up), then the standard streams are flushed. With another
    non-daemon thread alive, Python's own exit, which waits for it, is used instead."""
    others = [thread for thread in threading.enumerate()
              if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()]
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, run by a normal exit too
    if others or run_exit_handlers is None:
        sys.exit(0)
    run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
