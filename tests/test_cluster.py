"""Sweeps on real engines: a one-node SLURM cluster (scripts/slurm-local-cluster.sh) and a local Ray.

The SLURM tests need a running cluster with a partition ``debug`` (``sudo
scripts/slurm-local-cluster.sh start``; .ci/run starts one) and skip with the reason otherwise; the
Ray tests need the ``ray`` extra (hydra-ray-launcher; and psutil, a dev dependency, for the
sockets) and skip without it."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import read_history, read_metrics, run_cli

try:
    import psutil  # the dev extra's: lists the sockets a local Ray opens
except ImportError:
    psutil = None

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
FAST = ["trainer.progress=false", "trainer.num_threads=1", "evaluation.figures=false"]
# The command: 1 CPU, 1 GB, no GPU per job, on the one-node cluster's partition.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
TIMINGS = {"seconds", "train_seconds", "eval_seconds"}
# The interrupted jobs' length: the signal is sent once 3 epochs are in history.jsonl and must
# find the job still training; the 117 epochs left are the margin for squeue's and scontrol's
# round trips (more epochs only lengthen both tests: the job and the reference train them all).
INTERRUPTED_EPOCHS = 120


def slurm_unavailable() -> str | None:
    """Why the SLURM tests cannot run here, or None when partition debug has a usable node."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (start a one-node cluster: sudo scripts/slurm-local-cluster.sh start)"
    try:
        result = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%t"], capture_output=True,
                                text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s: slurmctld is not reachable"
    states = result.stdout.split()
    if result.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return (f"no SLURM partition 'debug' with a usable node (sinfo: "
                f"{(result.stdout + result.stderr).strip() or 'nothing'}); start one with "
                f"sudo scripts/slurm-local-cluster.sh start")
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)


def job_folders(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))


def assert_usual_outputs(run_dir: Path, epochs: int) -> dict[str, Any]:
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed", metrics
    assert [r["epoch"] for r in read_history(run_dir)] == list(range(1, epochs + 1))
    assert (run_dir / "last.pt").stat().st_size > 0
    assert list(run_dir.glob("events.out.tfevents.*"))
    return metrics


def assert_report_reads(sweep: Path, jobs: int) -> None:
    report = run_cli([str(sweep)], cwd=sweep.parent, module="regbench.report")
    assert report.returncode == 0, report.stderr
    assert f"{jobs} jobs: {jobs} completed" in (sweep / "summary.md").read_text()


def without_timings(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def slurm_job_ids(name: str) -> list[str]:
    result = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                            timeout=30)
    return result.stdout.split()


def submitit_logs(sweep: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))


def cluster_state(sweep: Path) -> str:
    """What to show when a SLURM test fails: the queue, the node and the end of submitit's logs."""
    queue = subprocess.run(["squeue", "-a", "-o", "%i %j %T %r %M %l"], capture_output=True,
                           text=True, timeout=30)
    nodes = subprocess.run(["sinfo", "-N", "-o", "%N %t %E"], capture_output=True, text=True,
                           timeout=30)
    logs = submitit_logs(sweep) if (sweep / ".submitit").is_dir() else "(no submitit folder)"
    return f"squeue:\n{queue.stdout}{queue.stderr}\nsinfo:\n{nodes.stdout}\nsubmitit logs:\n{logs[-3000:]}"


def watch(process: subprocess.Popen, run_dir: Path, deadline_s: float) -> list[str]:
    """Wait for ``process``; returns the distinct statuses its job's metrics.json went through."""
    seen: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            status = read_metrics(run_dir)["status"]
        except (OSError, ValueError, KeyError):
            status = None
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        if process.poll() is not None:
            return seen
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"the sweep did not finish within {deadline_s:.0f} s (statuses seen: {seen})\n"
                f"{cluster_state(run_dir.parent)}\noutput:\n{process.communicate()[0][-3000:]}")


def wait_for_epochs(process: subprocess.Popen, run_dir: Path, epochs: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while len(read_history(run_dir)) < epochs and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if len(read_history(run_dir)) < epochs:
        process.kill()
        pytest.fail(f"the job did not train {epochs} epochs within {deadline_s:.0f} s\n"
                    f"{cluster_state(run_dir.parent)}\noutput:\n{process.communicate()[0][-3000:]}")


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "regbench", "-m", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_slurm_sweep_runs_each_job_in_its_own_folder(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *SLURM, "regularizer=none,dropout", "trainer.epochs=2", *FAST,
                      "model.hidden_sizes=[64]", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = job_folders(sweep)
    assert [f.name for f in folders] == ["0_regularizer=none", "1_regularizer=dropout"]
    regularizers = sorted(assert_usual_outputs(f, epochs=2)["regularizer"][0] for f in folders)
    assert regularizers == ["dropout", "none"]
    assert len(list((sweep / ".submitit").rglob("*_result.pkl"))) == 2  # ran as SLURM jobs
    assert_report_reads(sweep, jobs=2)


def test_slurm_requeued_job_resumes_in_its_folder_and_matches_an_uninterrupted_run(slurm, tmp_path):
    """`scontrol requeue` in the middle of training (what pre-emption does): SLURM sends SIGTERM,
    the job records `interrupted`, SLURM queues it again, it resumes from last.pt in the same
    folder and ends exactly where an uninterrupted run with the same seed ends."""
    epochs, name = INTERRUPTED_EPOCHS, f"regbench-requeue-{os.getpid()}"
    job = ["seed=3", f"trainer.epochs={epochs}", "model.hidden_sizes=[256,256]", *FAST]
    sweep = tmp_path / "sweep"
    process = start_sweep([*SLURM, f"hydra.launcher.name={name}", *job, f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path)
    run_dir = sweep / "0"
    wait_for_epochs(process, run_dir, epochs=3, deadline_s=240)
    job_ids = slurm_job_ids(name)
    assert len(job_ids) == 1 and process.poll() is None, process.communicate()[0][-3000:]
    subprocess.run(["scontrol", "requeue", job_ids[0]], check=True, timeout=30)
    # The reference: the same job, uninterrupted, on this machine while SLURM requeues the other.
    reference = run_cli([*job, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    seen = watch(process, run_dir, deadline_s=300)
    output = process.communicate()[0]
    assert process.returncode == 0, output[-3000:]
    assert "interrupted" in seen and seen[-1] == "completed", seen
    assert job_folders(sweep) == [run_dir]  # resumed in the SAME folder
    final = assert_usual_outputs(run_dir, epochs)
    assert "resuming from" in (run_dir / "regbench.log").read_text()
    assert "DUE TO JOB REQUEUE" in submitit_logs(sweep)
    assert without_timings(final) == without_timings(read_metrics(tmp_path / "reference"))


def test_slurm_time_limit_warning_requeues_the_job_and_it_resumes(slurm, tmp_path):
    """The launcher asks SLURM for SIGUSR2 signal_delay_s before the time limit (sbatch --signal);
    on it submitit's handler calls the launcher's checkpoint() (the same job again: same sweep dir,
    same job number) and requeues it; the job resumes from last.pt in its folder.

    The warning is sent with ``scancel --signal=USR2`` once the job has trained a few epochs: the
    same signal to the same job steps as SLURM's own, but at a known point of the run. With SLURM's
    timer (timeout_min=1 leaves at most 60 - signal_delay_s seconds per attempt) a machine whose job
    start-up takes longer than that never trains an epoch. submitit counts the signal as a time-out
    (not a pre-emption) for any limit under 10 minutes, as it does at a real time limit."""
    epochs, name = INTERRUPTED_EPOCHS, f"regbench-timeout-{os.getpid()}"
    sweep = tmp_path / "sweep"
    process = start_sweep([*SLURM, f"hydra.launcher.name={name}", "hydra.launcher.timeout_min=5",
                           "hydra.launcher.signal_delay_s=90", "hydra.launcher.max_num_timeout=2",
                           f"trainer.epochs={epochs}", "model.hidden_sizes=[256,256]", *FAST,
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    run_dir = sweep / "0"
    wait_for_epochs(process, run_dir, epochs=3, deadline_s=240)
    job_ids = slurm_job_ids(name)
    assert len(job_ids) == 1 and process.poll() is None, process.communicate()[0][-3000:]
    batch_script = next((sweep / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@90" in batch_script and "#SBATCH --time=5" in batch_script
    subprocess.run(["scancel", "--signal=USR2", job_ids[0]], check=True, timeout=30)

    seen = watch(process, run_dir, deadline_s=300)
    output = process.communicate()[0]
    assert process.returncode == 0, output[-3000:]
    assert seen[-1] == "completed", seen
    # regbench stops cleanly on SIGUSR2 (SLURM's time-limit warning), records `interrupted`, then
    # hands over to submitit's handler, which requeues the job.
    assert "interrupted" in seen, seen
    assert job_folders(sweep) == [run_dir]
    assert_usual_outputs(run_dir, epochs)
    logs = submitit_logs(sweep)
    assert "Caught signal SIGUSR2" in logs and "this job is timed-out" in logs, logs[-3000:]
    assert "Requeued job" in logs
    assert "resuming from" in (run_dir / "regbench.log").read_text()


ray_missing = importlib.util.find_spec("ray") is None or \
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None
RAY_SWEEP_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def listening_sockets(root: psutil.Process, met: dict[int, psutil.Process]) -> set[tuple[str, str, int]]:
    """The LISTEN sockets of ``root`` and its descendants as (process name, address, port); every
    process met is kept in ``met`` so that the test can end each one it started."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:  # the sweep has just ended
        return set()
    sockets = set()
    for process in processes:
        met.setdefault(process.pid, process)
        try:
            name = process.name()
            sockets |= {(name, c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # it ended between the listing and the look
            continue
    return sockets


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    # An IPv6 socket bound to 127.0.0.1 reports ::ffff:127.0.0.1 (not loopback to ipaddress).
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def end_processes(processes: dict[int, psutil.Process]) -> None:
    """Kill each process still alive; psutil refuses a pid that now names another process."""
    for process in processes.values():
        try:
            process.kill()
        except psutil.NoSuchProcess:  # ended already (a zombie included)
            pass
    psutil.wait_procs(list(processes.values()), timeout=30)


def watch_listening_sockets(args: list[str], cwd: Path, deadline_s: float) -> tuple[int, set, str]:
    """Run ``python -m regbench -m args`` and list the LISTEN sockets of it and of every process it
    starts (Ray's) until it ends; then kill, by pid, whatever of them is still alive.
    Returns (exit status, sockets, output)."""
    log = cwd / "sweep.log"  # a file, not a pipe nobody reads while polling
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "regbench", "-m", *args], cwd=cwd, text=True,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **RAY_SWEEP_ENV})
    met: dict[int, psutil.Process] = {}
    sockets: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + deadline_s
    try:
        root = psutil.Process(process.pid)
        while process.poll() is None and time.monotonic() < deadline:
            sockets |= listening_sockets(root, met)
            time.sleep(0.1)
        timed_out = process.poll() is None
    finally:
        end_processes({process.pid: root, **met})
    output = log.read_text(errors="replace")
    if timed_out:
        pytest.fail(f"the sweep did not finish within {deadline_s:.0f} s\noutput:\n{output[-3000:]}")
    return process.wait(), sockets, output


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory) -> tuple[Path, int, set, str]:
    """One sweep of two jobs on a local Ray (``hydra/launcher=ray``), the LISTEN sockets of it and of
    every process it started watched until it ended: (sweep folder, exit status, sockets, output).
    Both Ray tests read this one sweep: a local Ray's start is most of a Ray test's time."""
    if ray_missing or psutil is None:
        pytest.skip("Ray or psutil is not installed: pip install -e '.[dev]' -c constraints.txt")
    cwd = tmp_path_factory.mktemp("ray")
    sweep = cwd / "sweep"
    status, sockets, output = watch_listening_sockets(
        ["hydra/launcher=ray", "regularizer=none,dropout", "trainer.epochs=2", *FAST,
         "model.hidden_sizes=[64]", f"hydra.sweep.dir={sweep}"], cwd=cwd, deadline_s=300)
    return sweep, status, sockets, output


def test_ray_sweep_runs_jobs_as_ray_tasks_on_a_local_ray(ray_sweep):
    sweep, status, _, output = ray_sweep
    assert status == 0, output[-3000:]
    assert "Ray Launcher is launching 2 jobs" in output and "Started a local Ray instance" in output
    folders = job_folders(sweep)
    assert [f.name for f in folders] == ["0_regularizer=none", "1_regularizer=dropout"]
    regularizers = sorted(assert_usual_outputs(f, epochs=2)["regularizer"][0] for f in folders)
    assert regularizers == ["dropout", "none"]
    assert_report_reads(sweep, jobs=2)


def test_a_local_ray_listens_on_the_loopback_interface_only(ray_sweep):
    """The local Ray of ``hydra/launcher=ray`` (init.address null) serves this machine only: its
    GCS, raylet, agents, workers and the driver listen on 127.0.0.1 or ::1, never on every
    interface. Joining a cluster is the user's choice (hydra.launcher.ray.init.address)."""
    _, status, sockets, output = ray_sweep
    assert status == 0, output[-3000:]
    names = {name for name, _, _ in sockets}
    # The test saw Ray's own servers and a worker, not an empty list.
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sockets
    exposed = sorted(s for s in sockets if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback (process, address, port): {exposed}"
