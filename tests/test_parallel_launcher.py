"""The default launcher of -m: jobs side by side as the machine allows, results as one at a time."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from conftest import read_metrics, run_cli, without_timings
from regbench.cli.command_line import check_command_line
from regbench.cli.compose import composer
from regbench.config import ConfigError
from regbench.machine import available_cores
from regbench.sweep_plan import (
    LAUNCHER_TARGET,
    JobShape,
    counted,
    gpu_slot,
    job_overrides,
    plan_jobs,
    shape_key,
)

MLP = JobShape(model="mlp", device="auto", num_threads=0)


def test_small_cpu_jobs_run_one_per_core_with_one_thread_each():
    plan = plan_jobs([MLP], job_count=8, cores=2, gpus=0)
    assert (plan.at_once, plan.threads, plan.gpus) == (2, 1, 0)
    assert plan_jobs([MLP], job_count=16, cores=16, gpus=0).threads == 1


def test_cores_left_over_by_a_short_sweep_are_shared_out_without_oversubscribing():
    plan = plan_jobs([MLP], job_count=3, cores=16, gpus=0)
    assert (plan.at_once, plan.threads) == (3, 5)
    assert plan_jobs([MLP], job_count=1, cores=16, gpus=0).threads == 16


def test_a_users_thread_count_sets_how_many_jobs_fit_and_is_left_alone():
    plan = plan_jobs([JobShape("mlp", "auto", 4)], job_count=8, cores=16, gpus=0)
    assert (plan.at_once, plan.threads) == (4, None)
    assert plan_jobs([JobShape("mlp", "auto", 32)], job_count=8, cores=16, gpus=0).at_once == 1


def test_an_imagenet_sized_resnet_in_the_sweep_takes_the_whole_machine_one_job_at_a_time():
    plan = plan_jobs([MLP, JobShape("resnet34", "auto", 0)], job_count=6, cores=16, gpus=0)
    assert (plan.at_once, plan.threads) == (1, 16)


def test_cuda_jobs_run_one_per_gpu_each_pinned_with_the_cores_shared_out():
    plan = plan_jobs([MLP], job_count=8, cores=16, gpus=4)
    assert (plan.at_once, plan.threads, plan.gpus) == (4, 4, 4)
    single = plan_jobs([MLP], job_count=8, cores=16, gpus=1)
    assert (single.at_once, single.gpus) == (1, 0)  # one GPU: trainer.device=auto finds it
    on_cpu = plan_jobs([JobShape("mlp", "cpu", 0)], job_count=8, cores=16, gpus=4)
    assert (on_cpu.at_once, on_cpu.gpus) == (8, 0)
    named = plan_jobs([JobShape("mlp", "cuda:1", 0)], job_count=8, cores=16, gpus=4)
    assert (named.at_once, named.gpus) == (1, 0)  # the user's GPU, one job at a time, not pinned


def test_hydra_launcher_n_jobs_sets_the_jobs_at_once():
    plan = plan_jobs([MLP], job_count=8, cores=16, gpus=0, n_jobs=2)
    assert (plan.at_once, plan.threads) == (2, 8)
    assert "hydra/launcher=basic runs one at a time" in plan.describe(8)
    assert plan_jobs([MLP], job_count=1, cores=1, gpus=0).describe(1).startswith(
        "1 job, 1 at a time (1 core, 1 CPU thread each)")


def test_a_jobs_share_is_appended_to_its_overrides_so_it_wins():
    plan = plan_jobs([MLP], job_count=8, cores=16, gpus=4)
    assert job_overrides(plan, ["seed=1", "trainer.num_threads=8"], slot=2) == [
        "seed=1", "trainer.num_threads=8", "trainer.num_threads=4", "trainer.device=cuda:2"]
    with composer() as compose:
        assert compose(["trainer.num_threads=8", "trainer.num_threads=4"]).trainer.num_threads == 4


def test_only_overrides_that_can_change_a_jobs_shape_are_composed_apart():
    assert shape_key(["seed=3", "regularizer=dropout", "model=lenet", "+trainer.amp=true",
                      "dataset.train_size=100"]) == ("model=lenet", "+trainer.amp=true",
                                                     "dataset.train_size=100")


def test_jobs_running_at_once_hold_different_gpus_and_free_them_when_they_end(tmp_path):
    held, release = [], threading.Event()

    def job() -> None:
        with gpu_slot(tmp_path, 2) as slot:
            held.append(slot)
            release.wait(10)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    while len(held) < 2:
        pass
    with pytest.raises(RuntimeError, match="no free GPU slot among 2"):
        with gpu_slot(tmp_path, 2):
            pass
    release.set()
    for thread in threads:
        thread.join()
    assert sorted(held) == [0, 1]
    with gpu_slot(tmp_path, 2) as slot:
        assert slot == 0


def job_results(sweep: Path) -> dict[str, dict]:
    return {path.parent.name: without_timings(read_metrics(path.parent))
            for path in sorted(sweep.glob("*/metrics.json"))}


def appended_threads(job: Path) -> int:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return int(next(line for line in reversed(overrides)
                    if line.startswith("trainer.num_threads="))
               .split("=")[1])


@pytest.mark.slow
def test_a_default_sweep_runs_jobs_side_by_side_with_the_results_of_one_at_a_time(tmp_path):
    grid = ["seed=0,1", "regularizer=none,label_smoothing", "trainer.epochs=2",
            "trainer.progress=false", "evaluation.figures=false", "evaluation.calibrators=[]"]
    parallel = run_cli(["-m", *grid, f"hydra.sweep.dir={tmp_path / 'parallel'}"], cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr
    at_once = min(4, available_cores())
    assert f"4 jobs, {at_once} at a time ({counted(available_cores(), 'core')}" in (parallel.stdout
                                                                                     + parallel.stderr)
    assert "sweep finished: 4 jobs (4 completed)" in parallel.stdout
    jobs = sorted(path.parent for path in (tmp_path / "parallel").glob("*/metrics.json"))
    threads = {appended_threads(job) for job in jobs}
    assert threads == {max(1, available_cores() // at_once)}
    for job in jobs:  # every closing line names its job: parallel jobs' lines interleave
        assert f"[{job.name}] run folder:" in parallel.stdout
    workers = [json.loads(line)["pid"] for line in (tmp_path / "parallel" / ".regbench-jobs.jsonl")
               .read_text().splitlines() if '"pid"' in line]
    if at_once > 1:
        assert len(set(workers)) > 1

    basic = run_cli(["-m", "hydra/launcher=basic", *grid, f"trainer.num_threads={threads.pop()}",
                     f"hydra.sweep.dir={tmp_path / 'basic'}"], cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr
    assert job_results(tmp_path / "parallel") == job_results(tmp_path / "basic")


@pytest.mark.parametrize("value", ["-1", "0", "abc", "1.5"])
def test_a_bad_n_jobs_for_the_default_launcher_is_refused_in_one_line(value):
    with pytest.raises(ConfigError, match=r"^hydra.launcher.n_jobs=.* is not allowed: a positive "
                                          r"number of jobs at once, or null"):
        check_command_line(["-m", "seed=0,1", f"hydra.launcher.n_jobs={value}"])
    check_command_line(["-m", "seed=0,1", "hydra.launcher.n_jobs=3"])
    check_command_line(["-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"])


def test_the_launcher_the_command_line_checks_is_the_one_the_config_names():
    with composer() as compose:
        assert compose([], hydra=True).hydra.launcher._target_ == LAUNCHER_TARGET


def test_a_jobs_shape_is_read_from_its_composed_config():
    with composer() as compose:
        config = compose(["model=lenet", "trainer.num_threads=2", "trainer.device=cpu"])
    assert JobShape.of(config) == JobShape("lenet", "cpu", 2)
