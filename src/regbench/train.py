"""The one training entrypoint, ``python -m regbench`` / ``regbench``: the run's lifecycle and what
the user sees of its outcome.

A run is spec -> claim -> build -> fit -> test -> record (``train`` and ``train_and_test``):
``RunSpec`` (run/spec.py) says what the run is, ``RunFolder`` (run/folder.py) holds its folder for
it, ``Run`` (run/engine.py) builds, trains and tests it, ``CheckpointPolicy`` (run/checkpoint.py)
keeps its checkpoints, ``RunRecorder`` (run/recorder.py) writes what it produced. ``OUTCOMES`` maps
each way a run can stop to its status, its exit code and its one line.
"""

from __future__ import annotations

import atexit
import errno
import gc
import logging
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from regbench.cli.command_line import exit_on_bad_command_line, shell_override
from regbench.cli.compose import config_dir, register_schemas
from regbench.cli.hydra_hooks import (  # also registers what configs/config.yaml names
    current_job_label,
    in_multirun,
)
from regbench.config import Config, ConfigError, check, one_line
from regbench.machine import PRECISION_KEY, precision_name
from regbench.run.checkpoint import CheckpointError, CheckpointPolicy, check_keep_checkpoint, resume
from regbench.run.engine import DivergedError, InterruptedRun, Run, stop_on_signals
from regbench.run.folder import RunFolder
from regbench.run.loggers import MLFLOW, TENSORBOARD
from regbench.run.recorder import RunRecorder
from regbench.run.spec import (
    DID_NOT_LEARN,
    EPOCHS,
    METRICS_FILE,
    SECONDS,
    SEED_KEY,
    STATUS,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
    TEST_NLL,
    TRAIN_ACC,
    RunSpec,
    Status,
)
from regbench.run.tensorboard import hparams_values

if TYPE_CHECKING:  # mlflow is imported only with logger=mlflow
    from regbench.run.mlflow_logger import MlflowRun

log = logging.getLogger("regbench")
register_schemas()


def show_progress(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not in_multirun()


def check_objective(settings: Config) -> None:
    """The sweeper's objective must be a metric this run will have."""
    objective = settings.objective
    check(not objective.startswith("val/") or settings.dataset.val_size != 0, "objective", objective,
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
    spec = RunSpec.from_config(cfg)
    folder = RunFolder(run_dir)
    new_folder = folder.holds_only_a_new_log()
    try:
        return train_in(folder, cfg, settings, spec)
    except (ConfigError, KeyboardInterrupt):
        # Refused (or stopped) before any training: a single run leaves no failed folder behind;
        # a sweep's job keeps its record for the summary and the report.
        if new_folder and not in_multirun() and not folder.checkpoint.exists():
            folder.discard()
        raise


def train_in(folder: RunFolder, cfg: DictConfig, settings: Config, spec: RunSpec) -> dict[str, Any]:
    run_dir = folder.path
    with folder.claim(spec):
        if HydraConfig.initialized():  # not when composed in-process (tests, benchmarks)
            folder.save_hydra_configs(cfg, HydraConfig.get())
        summary = {"dataset": settings.dataset.name, "model": settings.model.name,
                   "regularizer": spec.regularizers, SEED_KEY: settings.seed, "name": spec.name}
        if folder.completed is not None:
            log.info("%s is already completed; not training again", run_dir)
            return folder.completed
        try:
            return train_and_test(settings, spec, folder, summary)
        except Exception as error:
            record = failure_record(error)
            if record is not None:
                folder.write_failure({**record, **summary})
            raise


def train_and_test(settings: Config, spec: RunSpec, folder: RunFolder,
                   summary: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    run = Run.build(settings, show_progress(settings.trainer.progress))
    # The precision it trains in, not the one asked for: trainer.amp=true on a CPU without bf16 is fp32.
    summary = {**summary, PRECISION_KEY: precision_name(run.amp_dtype)}
    check_objective(settings)  # after the regularizers' own checks, before any training
    check_keep_checkpoint(settings)
    if folder.checkpoint.exists():
        resume(run, folder.checkpoint, spec.identity, settings.trainer.epochs)
        log.info("resuming from %s after epoch %d", folder.checkpoint, run.epochs_done)
    tracker = start_mlflow(settings, spec, folder.path)  # None unless logger=mlflow
    # Events of epochs after the checkpoint (logged before an interruption) are dropped.
    recorder = RunRecorder(folder.path, purge_step=run.epochs_done + 1,
                           tensorboard=TENSORBOARD in settings.logger)
    recorder.rewrite_history(run.history)
    checkpoints = CheckpointPolicy(folder.path, spec.identity, settings.trainer, settings.objective)

    def after_epoch(finished: Run) -> None:
        if checkpoints.enabled:
            checkpoints.after_epoch(finished.state_dict(), last=finished.training_finished)
        if tracker is not None:
            tracker.log_epoch(finished.history[-1])

    try:
        with stop_on_signals(run):
            try:
                run.fit(recorder, on_epoch=after_epoch)
            finally:
                checkpoints.flush()
            metrics = run.test(recorder)
    except (DivergedError, InterruptedRun) as error:
        stopped = {**stopped_record(error), **summary, **(run.history[-1] if run.history else {}),
                   EPOCHS: run.epochs_done, SECONDS: time.perf_counter() - started}
        recorder.write_metrics(stopped)
        recorder.close()
        if tracker is not None:
            tracker.finish(stopped, stopped[STATUS], run.epochs_done)
        raise
    except Exception:
        if tracker is not None:
            tracker.finish({}, Status.failed.value, run.epochs_done)
        raise
    metrics = {STATUS: Status.completed.value, **metrics,
               SECONDS: sum(record["seconds"] for record in run.history), **summary}
    final = {k: v for k, v in metrics.items() if k.startswith(("test/", "gap/")) or k == "temperature"}
    recorder.log_hparams(hparams_values(spec.experiment_settings, settings.seed, spec.name), final,
                         step=run.epochs_done)
    recorder.write_metrics(metrics)
    recorder.close()
    checkpoints.finish()
    if tracker is not None:
        tracker.finish(metrics, Status.completed.value, run.epochs_done)
    return metrics


def start_mlflow(settings: Config, spec: RunSpec, folder: Path) -> Optional["MlflowRun"]:
    """The run's MLflow run when logger=mlflow is selected (run/mlflow_logger.py), else None;
    mlflow is imported only then."""
    if MLFLOW not in settings.logger:
        return None
    from regbench.run.mlflow_logger import MlflowRun

    return MlflowRun.start(settings.logger[MLFLOW], folder, spec.identity, spec.name)


# --- outcomes: how a run that stops ends, in metrics.json and for the user ------------------------

@dataclass(frozen=True)
class Outcome:
    """How a run stopped by an error of ``kind`` ends: its status in metrics.json, its exit code,
    its one line on stderr, and whether it stops a whole sweep (otherwise a sweep's other jobs go on)."""

    kind: type[BaseException]
    status: Status
    exit_code: Callable[[Any], int]
    line: Callable[[Any, DictConfig, Path], str]
    stops_sweep: bool = False


OUTCOMES = (
    Outcome(ConfigError, Status.failed, lambda error: 2,
            lambda error, cfg, run_dir: f"regbench: error: {error_message(error)}"),
    Outcome(DivergedError, Status.diverged, lambda error: 1,
            lambda error, cfg, run_dir: f"regbench: diverged: {error}; see "
                                        f"{relative_to_cwd(run_dir / METRICS_FILE)}"),
    Outcome(InterruptedRun, Status.interrupted,
            lambda error: 128 + signal.Signals[error.signal_name].value,
            lambda error, cfg, run_dir: f"regbench: {error}; {resume_hint(cfg, run_dir)}",
            stops_sweep=True),
    # A full disk, a read-only folder: the finished epochs' files stay.
    Outcome(OSError, Status.failed, lambda error: 1,
            lambda error, cfg, run_dir: f"regbench: error: cannot write"
                                        f"{f' {error.filename}' if error.filename else ''}: "
                                        f"{error.strerror or error}"),
)


def outcome_of(error: BaseException) -> Optional[Outcome]:
    """The outcome of an expected way to stop; None for a bug (its traceback is kept)."""
    return next((outcome for outcome in OUTCOMES if isinstance(error, outcome.kind)), None)


def stopped_record(error: DivergedError | InterruptedRun) -> dict[str, Any]:
    """metrics.json's status part for a run stopped in training or test: where it stopped."""
    status = outcome_of(error).status.value
    return {STATUS: status, "error": str(error), f"{status}_epoch": error.epoch,
            f"{status}_step": error.step}


def failure_record(error: Exception) -> Optional[dict[str, Any]]:
    """metrics.json's status part for a run that failed outside training, or None: a divergence
    or an interruption was recorded with the run's state (``stopped_record``), a refused
    checkpoint leaves the folder as it was, and a full disk takes no file."""
    if isinstance(error, (DivergedError, InterruptedRun, CheckpointError)):
        return None
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return None
    # An unexpected fault is recorded for the report; its traceback stays for the bug report.
    text = error_message(error) if outcome_of(error) else f"{type(error).__name__}: {one_line(error)}"
    return {STATUS: Status.failed.value, "error": text}


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
    fractions as in the epoch lines and metrics.json), a warning when it did not learn, where the
    run is, how to look at it. In a sweep, TensorBoard is pointed at the sweep folder, where every
    job overlays."""
    calibrated = metrics.get(TEST_ECE_TEMPERATURE)
    after = f" ({number(calibrated)} after temperature scaling)" if calibrated is not None else ""
    logdir = Path(HydraConfig.get().sweep.dir) if in_multirun() else tensorboard_logdir(run_dir)
    warning = (f"\nwarning: this run did not learn: its final training accuracy "
               f"{number(metrics.get(TRAIN_ACC))} stayed near chance (metrics.json: {DID_NOT_LEARN})"
               if metrics.get(DID_NOT_LEARN) else "")
    text = (
        f"\ntest accuracy {number(metrics[TEST_ACC])}, test ECE {number(metrics[TEST_ECE])}{after}, "
        f"nll {number(metrics[TEST_NLL])}, mean confidence {number(metrics[TEST_MEAN_CONFIDENCE], 3)} "
        f"after {metrics[EPOCHS]} epochs in {number(metrics[SECONDS], 1)} s{warning}\n"
        f"run folder:   {relative_to_cwd(run_dir)}\n"
        f"see curves:   tensorboard --logdir {shlex.quote(str(relative_to_cwd(logdir)))}"
    )
    if in_multirun():  # parallel jobs' lines interleave: each names its job, written at once
        label = current_job_label().strip()
        text = "\n".join(f"{label} {line}" for line in text.strip().splitlines())
    print(text, flush=True)


def number(value: Any, digits: int = 4) -> str:
    """A metric for the summary; metrics.json's null (a NaN or infinite value) as nan."""
    return "nan" if value is None else f"{value:.{digits}f}"


def resume_hint(cfg: DictConfig, run_dir: Path) -> str:
    """How to continue an interrupted run, or why it cannot be continued."""
    if not cfg.trainer.checkpoint:
        return "it cannot be resumed (trainer.checkpoint=false): running it again starts over"
    if "SLURM_JOB_ID" in os.environ:
        return ("under SLURM a pre-empted or requeued job resumes on its own in the same folder; "
                "otherwise run the same sweep command with the same hydra.sweep.dir")
    if in_multirun():
        sweep_dir = relative_to_cwd(Path(HydraConfig.get().sweep.dir))
        return (f"run the same sweep command again with {shell_override('hydra.sweep.dir', sweep_dir)} "
                f"to resume: completed jobs are skipped, this one continues after its last finished "
                f"epoch")
    given = HydraConfig.get().overrides.hydra if HydraConfig.initialized() else []
    if cfg.trainer.resume or any(override.startswith("hydra.run.dir=") for override in given):
        return "run the same command again to resume from the last finished epoch"
    return (f"run the same command with {shell_override('hydra.run.dir', relative_to_cwd(run_dir))} "
            f"to resume from the last finished epoch")


def pass_on_time_limit(error: InterruptedRun, message: str) -> None:
    """SIGUSR2 is SLURM's warning before a job's time limit. Under submitit, its handler (back in
    place once the run stopped) checkpoints the job and requeues it; the requeued job resumes in
    the same folder. Without one, the run ends as interrupted like any other signal."""
    handler = signal.getsignal(signal.SIGUSR2)
    if error.signal_name == signal.SIGUSR2.name and callable(handler):
        print(f"{message}; handing over to the scheduler to requeue the job", file=sys.stderr)
        log.warning("%s; requeueing through the launcher", message)
        handler(signal.SIGUSR2, None)


def fail(message: str, exit_code: int, stop_sweep: bool = False,
         outcome: str = Status.failed.value) -> float:
    """Report a run that did not complete in one line on stderr. A single run exits. A sweep's job
    records ``outcome`` for the sweep's summary (sweep.py) and returns NaN so the other jobs go on,
    unless it stops the sweep (``stop_sweep``, an interruption, in a process that ends with it:
    ``SweepJob.exits_when_interrupted``); a job interrupted in another process only logs its line:
    the sweep's parent prints the one line of the interruption."""
    from regbench.sweep import current_job

    job = current_job()
    if job is not None:
        job.record(outcome)
    exits = not in_multirun() or (stop_sweep and (job is None or job.exits_when_interrupted()))
    if exits or not stop_sweep:
        print(message, file=sys.stderr)
    if exits:
        sys.exit(exit_code)
    log.error(message)
    if sweeper_optimizes():
        raise FailedTrial(message)
    return float("nan")


class FailedTrial(RuntimeError):
    """A sweep job that did not complete, raised to a sweeper that optimizes the objective (Optuna),
    which records it as a failed trial and goes on: a NaN objective instead makes
    hydra-optuna-sweeper 1.2 tell Optuna a value for a trial it has marked failed, and the search
    ends in a traceback."""


def sweeper_optimizes() -> bool:
    target = OmegaConf.select(HydraConfig.get(), "sweeper._target_", default="") or ""
    return "optuna" in str(target).lower()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the objective (``objective``, a validation metric) for sweepers such as Optuna. A
    sweep's job records what it did for the sweep's summary (sweep.py)."""
    from regbench import sweep

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    job = sweep.current_job()  # None in a single run
    if in_multirun():
        freeze_long_lived_objects()
    if job is not None and not job.begin():
        return float("nan")  # the sweep was interrupted before this job began
    already_completed = job is not None and sweep.finished_before(run_dir)
    try:
        with sweep.signals_stop(job):
            metrics = train(cfg, run_dir)
    except tuple(outcome.kind for outcome in OUTCOMES) as error:
        outcome = outcome_of(error)
        if isinstance(error, InterruptedRun):
            pass_on_time_limit(error, f"regbench: {error}")
        return fail(outcome.line(error, cfg, run_dir), outcome.exit_code(error),
                    stop_sweep=outcome.stops_sweep, outcome=sweep.outcome_of_error(error, outcome.status))
    except KeyboardInterrupt as error:  # a sweep's job, outside the run's own handler
        if job is None:
            raise  # main's one line
        name = getattr(error, "signal_name", signal.SIGINT.name)
        return fail(f"regbench: interrupted by {name} outside training; {resume_hint(cfg, run_dir)}",
                    128 + signal.Signals[name].value, stop_sweep=True, outcome=Status.interrupted.value)
    if job is not None:
        job.record(sweep.ALREADY_COMPLETED if already_completed else Status.completed.value)
    print_summary(metrics, run_dir)
    return float(metrics[cfg.objective]) if cfg.objective in metrics else fail(
        f"regbench: error: objective={cfg.objective!r} is not a metric of this run; choose one "
        f"of: {', '.join(k for k, v in metrics.items() if isinstance(v, float))}", exit_code=2)


def freeze_long_lived_objects() -> None:
    """Before each job of a sweep: the previous job's garbage collected, then what is left (the
    modules the first job imported lazily, such as scikit-learn and torch._dynamo, and the caches
    it filled, such as matplotlib's fonts) frozen like the start-up imports in ``main``, so that
    the collector's full collections stop rescanning it (scripts/bench_startup.py measures it)."""
    gc.collect()
    gc.freeze()


def main() -> None:
    """``python -m regbench`` and the ``regbench`` script: check the command line, then run Hydra."""
    # The objects the imports made live as long as the process: out of the cyclic garbage
    # collector's way, so its full collections stop rescanning them (scripts/bench_startup.py).
    gc.freeze()
    try:
        sys.argv[1:] = exit_on_bad_command_line(sys.argv[1:])
        hydra_main()
    except SystemExit as error:
        if error.code not in (None, 0):
            raise  # a failure exits as Python does
    except KeyboardInterrupt as error:
        # Before training started or after it ended (a run in training stops through
        # stop_on_signals and keeps its finished epochs); a sweep stopped without waiting says so.
        print(getattr(error, "line", "") or "regbench: interrupted outside training; finished epochs "
              "and results on disk are kept; run the same command to continue", file=sys.stderr)
        sys.exit(128 + signal.Signals[getattr(error, "signal_name", signal.SIGINT.name)].value)
    exit_without_teardown()


def exit_without_teardown() -> NoReturn:
    """Exit status 0 once everything is written, without the interpreter's teardown: freeing every
    object of torch, dynamo, scikit-learn and matplotlib one by one is a large share of a short
    job's wall time (README, Performance). What a normal exit does that matters still happens: the
    atexit handlers run (logging's flush, Ray's shutdown, multiprocessing's child clean-up), then
    the standard streams are flushed. With another
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
