"""A sweep's jobs and its end: what each job of this invocation did, one summary, the report
command, and the exit status.

**Outcomes.** Every launcher (basic, joblib, submitit/SLURM, Ray) calls the ``SweepSummary``
callback's ``on_job_start`` in the process that runs a job, maybe on another machine sharing the
sweep folder: the callback travels there with Hydra's context, so the job knows this invocation's
id (made in the parent by ``on_multirun_start``) and appends what it did, one JSON line, to
``<sweep dir>/.regbench-jobs.jsonl`` (``append_line``: O_APPEND, one write per line, so jobs
writing at once never interleave). At the end the parent counts the last line of each job of its
own invocation, not the folders on disk: a rerun whose jobs were all refused says so and exits 1.

**Interruptions.** The parent never aborts its launcher on Ctrl-C or SIGTERM (joblib would kill
its workers before they record what they finished): it notes the signal in the outcomes file and
waits. Jobs not yet begun see the note and do not begin; a running job stops after its current
step (the run's own handler, run/engine.stop_on_signals) and keeps its finished epochs, whether
the signal reached it too (Ctrl-C reaches the whole process group) or only the parent (``kill``,
a job on another machine): ``SignalRelay`` passes each SIGINT the job's process gets, or else the
parent's note, once to the job. Then the parent prints one line and exits 128 + the signal; a
third signal stops it without waiting. SIGINT is held blocked in the parent's main thread (a
helper thread takes it) so that the processes it starts inherit it blocked: an idle pool worker
cannot die of Ctrl-C, which would make loky kill the busy ones.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from regbench.run.folder import RunFolder, natural_key
from regbench.run.spec import Status

# One JSON line per job event of every invocation into this sweep folder (a dot file: no job).
OUTCOMES_FILE = ".regbench-jobs.jsonl"
# What a job of this invocation did, besides the statuses of metrics.json (spec.Status).
STARTED = "started"  # as a job's last line: it died unrecorded (killed, out of memory)
ALREADY_COMPLETED = "already completed"  # its folder held this run, completed: nothing trained
REFUSED = "refused"  # its folder belongs to another run, is in use or cannot be read
NOT_STARTED = "not started"  # the sweep was interrupted before the job began
FINISHED = (Status.completed.value, ALREADY_COMPLETED)
# Signals that stop a sweep; the third one stops the parent without waiting for its jobs.
SWEEP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNALS_BEFORE_GIVING_UP = 3
# Held blocked in the processes a sweep's launcher starts, unless it runs its jobs in-process.
INHERITED_BLOCKED = {signal.SIGINT}
IN_PROCESS_LAUNCHER = ".BasicLauncher"
# How often a running job looks for the parent's note of an interruption (and the longest a job's
# end waits for its SignalRelay to stop).
RELAY_POLL_S = 0.1


class SweepInterrupted(KeyboardInterrupt):
    """A signal stops the job this process runs, or (the third) the sweep's parent at once."""

    def __init__(self, signal_name: str, line: str = "") -> None:
        super().__init__(signal_name)
        self.signal_name, self.line = signal_name, line


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One line, appended in one write (O_APPEND): concurrent jobs' lines never interleave. It
    starts with its newline, so a line a killed writer (a full disk) left torn spoils no other."""
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(handle, ("\n" + json.dumps(record)).encode())
    finally:
        os.close(handle)


def read_records(path: Path, invocation: Optional[str]) -> list[dict[str, Any]]:
    """The records of ``invocation``, in the order written; a torn line is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("invocation") == invocation:
            records.append(record)
    return records


def interruption(records: list[dict[str, Any]]) -> Optional[str]:
    """The signal the parent noted (its first), if the invocation was interrupted."""
    return next((record["interrupted_by"] for record in records if "interrupted_by" in record), None)


def job_outcomes(records: list[dict[str, Any]]) -> dict[str, str]:
    """Job folder -> its last outcome (a requeued job's later lines win), in job-number order; a
    job whose last line says it started died unrecorded: unfinished."""
    last = {record["job"]: str(record["outcome"]) for record in records if "job" in record}
    last = {job: Status.unfinished.value if outcome == STARTED else outcome
            for job, outcome in last.items()}
    return dict(sorted(last.items(), key=lambda item: natural_key(item[0])))


def outcome_of_error(error: BaseException, status: Status) -> str:
    """What a job stopped by ``error`` (with metrics.json ``status``) did, for the summary."""
    from regbench.run.folder import FolderRefused

    return REFUSED if isinstance(error, FolderRefused) else status.value


class SweepJob:
    """The job of this invocation that this process runs (``current_job``)."""

    def __init__(self, sweep_dir: Path, invocation: str, name: str, in_sweep_process: bool) -> None:
        self.sweep_dir, self.invocation, self.name = sweep_dir, invocation, name
        # The basic launcher runs jobs in the sweep's own process: an interrupted job ends the sweep.
        self.in_sweep_process = in_sweep_process
        self.stoppable = False  # a signal raises SweepInterrupted (before: noted in ``received``)
        self.received: Optional[str] = None

    @property
    def outcomes_file(self) -> Path:
        return self.sweep_dir / OUTCOMES_FILE

    def record(self, outcome: str) -> None:
        append_line(self.outcomes_file, {"invocation": self.invocation, "job": self.name,
                                         "outcome": outcome, "pid": os.getpid()})

    def sweep_interrupted(self) -> Optional[str]:
        """The signal that interrupted this invocation's parent, if one did."""
        return interruption(read_records(self.outcomes_file, self.invocation))

    def begin(self) -> bool:
        """Start the job unless the sweep was interrupted before (then it is recorded as not
        started)."""
        if self.received or self.sweep_interrupted():
            self.record(NOT_STARTED)
            return False
        self.record(STARTED)
        return True

    def exits_when_interrupted(self) -> bool:
        """Whether an interrupted job ends its process: in the sweep's own process (the sweep
        stops with it), and under SLURM unless the sweep was interrupted (a job pre-empted to be
        requeued must not look finished to submitit)."""
        return self.in_sweep_process or ("SLURM_JOB_ID" in os.environ and not self.sweep_interrupted())


# The job this process runs now (SweepSummary.on_job_start), None outside a sweep's job.
ACTIVE_JOB: Optional[SweepJob] = None


def current_job() -> Optional[SweepJob]:
    return ACTIVE_JOB


@contextlib.contextmanager
def signals_stop(job: Optional[SweepJob]) -> Iterator[None]:
    """While the block runs, a signal to ``job``'s process stops it as a single run stops
    (SweepInterrupted, a KeyboardInterrupt, or the run's own handler in training and test)."""
    if job is None:
        yield
        return
    job.stoppable = True
    try:
        yield
    finally:
        job.stoppable = False


def finished_before(folder: Path) -> bool:
    """Whether the job's folder already holds a completed run (then the job trains nothing)."""
    return RunFolder(folder).status() == Status.completed.value


class SignalRelay(threading.Thread):
    """While a job runs in a process other than the sweep's: SIGINT is blocked in every thread but
    taken here, and each one is passed to the main thread's handler (``_thread.interrupt_main``:
    the run's graceful stop, or SweepInterrupted); when the sweep's parent was interrupted and this
    process got no signal of its own, the parent's signal is passed on once."""

    def __init__(self, job: SweepJob) -> None:
        super().__init__(name="regbench-signal-relay", daemon=True)
        self.job, self.stopped, self.relayed = job, threading.Event(), False
        self.outcomes_size = -1

    def run(self) -> None:
        while not self.stopped.is_set():
            received = signal.sigtimedwait(INHERITED_BLOCKED, RELAY_POLL_S)
            if self.stopped.is_set():
                return
            if received is not None:
                self.relay(received.si_signo)
            elif not self.relayed and (parents := self.parents_signal()) is not None:
                self.relay(signal.Signals[parents])

    def parents_signal(self) -> Optional[str]:
        """The parent's note of an interruption, the outcomes file read only when it grew."""
        with contextlib.suppress(OSError):
            size = self.job.outcomes_file.stat().st_size
            if size != self.outcomes_size:
                self.outcomes_size = size
                return self.job.sweep_interrupted()
        return None

    def relay(self, signum: int) -> None:
        self.relayed = True
        # A signal Python does not handle here (SIGTERM outside training) stops the job as SIGINT.
        _thread.interrupt_main(signum if callable(signal.getsignal(signum)) else signal.SIGINT)

    def stop(self) -> None:
        """Joined, so that no signal is passed on once the job's handlers are gone."""
        self.stopped.set()
        self.join()


def tally(outcomes: dict[str, str]) -> str:
    counts = Counter(outcomes.values())
    return ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))


def summary_lines(sweep_dir: Path, outcomes: dict[str, str]) -> list[str]:
    lines = [f"\nsweep finished: {len(outcomes)} jobs ({tally(outcomes) or 'none ran'})"]
    not_done = [f"{name} ({outcome})" for name, outcome in outcomes.items() if outcome not in FINISHED]
    if not_done:
        lines.append(f"not completed: {', '.join(not_done)}")
    # As configured (hydra.sweep.dir): relative to the working directory, which no launcher
    # changes (hydra.job.chdir=false), or absolute as typed; quoted for the shell when needed.
    shown = shlex.quote(str(sweep_dir))
    lines += [f"sweep folder: {sweep_dir}",
              f"report:       python -m regbench.report {shown}",
              f"see curves:   tensorboard --logdir {shown}"]
    return lines


def interrupted_line(sweep_dir: Path, signal_name: str, outcomes: dict[str, str]) -> str:
    from regbench.cli.command_line import shell_override

    return (f"regbench: sweep interrupted by {signal_name} ({tally(outcomes) or 'no job ran'}); run "
            f"the same sweep command again with {shell_override('hydra.sweep.dir', sweep_dir)} to "
            f"resume: completed jobs are skipped, interrupted ones continue after their last "
            f"finished epoch")


def write_hparams(sweep_dir: Path) -> None:
    """The sweep's HParams columns (report.write_sweep_hparams), so TensorBoard's HParams tab is
    right before any report is made. Never fails the sweep: it is a convenience."""
    from regbench.report.events import write_sweep_hparams
    from regbench.report.jobs import ReportError, load_jobs

    try:
        write_sweep_hparams(sweep_dir, load_jobs(sweep_dir))
    except (ReportError, OSError, ValueError) as error:
        print(f"(HParams summary not written: {error})", file=sys.stderr)


def start_resource_trackers() -> None:
    """loky's and multiprocessing's resource trackers unblock SIGINT in the thread that starts them
    (their fix for their own process, bpo-33613): started before the block, they leave it alone
    when joblib's pool starts its workers."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with contextlib.suppress(ImportError):
        from joblib.externals.loky.backend import resource_tracker as loky_resource_tracker

        loky_resource_tracker.ensure_running()


@contextlib.contextmanager
def signals_taken_by_a_helper_thread(blocked: set[int]) -> Iterator[None]:
    """``blocked`` signals held blocked in the calling (main) thread, so the processes started
    meanwhile inherit them blocked, while a daemon thread takes them for this process: Python
    still runs the handlers in the main thread."""
    done = threading.Event()

    def take_signals() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        done.wait()

    threading.Thread(target=take_signals, name="regbench-signals", daemon=True).start()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        done.set()


class SweepSummary(Callback):
    """Hydra callback (configs/config.yaml). In the parent: the invocation id, the signal handling
    and the summary (``on_multirun_start``, ``on_multirun_end``); in a job's process: which job
    runs and its signals (``on_job_start``, ``on_job_end``)."""

    def __init__(self) -> None:
        self.invocation: Optional[str] = None
        self.parent_pid: Optional[int] = None
        self.sweep_dir: Optional[Path] = None
        self.signals_received = 0
        self.restore: Optional[contextlib.ExitStack] = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to the jobs' processes with Hydra's context; the parent's handlers stay here.
        return {**self.__dict__, "restore": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.invocation, self.parent_pid = uuid.uuid4().hex, os.getpid()
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.restore = contextlib.ExitStack()
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SWEEP_SIGNALS:  # an ignored one (a background job's SIGINT) stays ignored
            if signal.getsignal(sig) != signal.SIG_IGN:
                self.restore.callback(signal.signal, sig, signal.signal(sig, self.on_signal))
        if not str(config.hydra.launcher._target_).endswith(IN_PROCESS_LAUNCHER):
            start_resource_trackers()
            self.restore.enter_context(signals_taken_by_a_helper_thread(INHERITED_BLOCKED))

    def on_signal(self, signum: int, frame: Any) -> None:
        """A job that began stops as a single run does; before it began the signal is noted (it
        will not begin). In the parent, the jobs running elsewhere are waited for."""
        name = signal.Signals(signum).name
        job = current_job()
        if job is not None and job.stoppable:
            raise SweepInterrupted(name)
        if job is not None:
            job.received = name
        if os.getpid() != self.parent_pid:
            return
        self.signals_received += 1
        if self.signals_received == 1:
            append_line(self.sweep_dir / OUTCOMES_FILE, {"invocation": self.invocation,
                                                         "interrupted_by": name})
        if self.signals_received >= SIGNALS_BEFORE_GIVING_UP:
            raise SweepInterrupted(name, f"regbench: sweep stopped by {name} without waiting for "
                                         f"its jobs; see {self.sweep_dir}")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global ACTIVE_JOB
        if self.invocation is None:  # a single run
            return
        folder = Path(str(config.hydra.runtime.output_dir))
        in_sweep_process = os.getpid() == self.parent_pid
        ACTIVE_JOB = SweepJob(self.sweep_dir, self.invocation,
                              os.path.relpath(folder, self.sweep_dir.resolve()), in_sweep_process)
        if not in_sweep_process and threading.current_thread() is threading.main_thread():
            self.restore = self.relay_signals(ACTIVE_JOB)

    def relay_signals(self, job: SweepJob) -> contextlib.ExitStack:
        """SIGINT blocked in this process's threads and taken by a SignalRelay while ``job`` runs."""
        stack = contextlib.ExitStack()
        stack.callback(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, self.on_signal))
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, INHERITED_BLOCKED)
        stack.callback(signal.pthread_sigmask, signal.SIG_SETMASK, mask)
        relay = SignalRelay(job)
        relay.start()
        stack.callback(relay.stop)
        return stack

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        global ACTIVE_JOB
        if ACTIVE_JOB is not None and not ACTIVE_JOB.in_sweep_process and self.restore is not None:
            self.restore.close()
        ACTIVE_JOB = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.restore is not None:
            self.restore.close()
        records = read_records(self.sweep_dir / OUTCOMES_FILE, self.invocation)
        outcomes = job_outcomes(records)
        if outcomes:
            write_hparams(self.sweep_dir)
        print("\n".join(summary_lines(self.sweep_dir, outcomes)), flush=True)
        stopped_by = interruption(records)
        if stopped_by is not None:
            print(interrupted_line(self.sweep_dir, stopped_by, outcomes), file=sys.stderr, flush=True)
            sys.exit(128 + signal.Signals[stopped_by].value)
        if any(outcome not in FINISHED for outcome in outcomes.values()):
            sys.exit(1)
