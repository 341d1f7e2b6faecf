"""How many jobs of a sweep run at once on this machine, with how many CPU threads, on which GPU.

The default launcher of ``-m`` (``hydra/launcher=parallel``,
src/hydra_plugins/regbench_parallel_launcher/) asks ``plan_jobs`` before it starts any job:

- **CUDA** (a job's ``trainer.device`` is ``auto`` or ``cuda`` and GPUs are visible): one job per
  visible GPU, each pinned to its own (``trainer.device=cuda:<slot>``, the slot a job holds while it
  runs: ``GpuSlot``), as DomainBed's ``multi_gpu`` launcher does; the CPU cores are shared out
  among them for data loading and the Python side.
- **CPU**: as many job processes as the cores allow at the threads each job gets. A job's minimum
  is ``MIN_THREADS`` by model: one thread for the models of digits, MNIST and CIFAR, because no
  measured model uses a second thread fully (scripts/bench_threads.py; README, Performance:
  threads), so two one-thread jobs finish a grid sooner than one two-thread job; all cores for
  ImageNet-sized torchvision ResNets, whose convolutions use threads well and whose activations
  take gigabytes per job. Cores left over when a sweep has fewer jobs than that are shared out
  (``cores // jobs`` threads each), so every core is used and none is oversubscribed.
- What the user set wins: ``trainer.num_threads=T`` (then ``cores // T`` jobs at once) and
  ``hydra.launcher.n_jobs``.

Threads per job change only how float sums are split: a job's metrics are identical to a
sequential run's at the same ``trainer.num_threads``; across thread counts they agree to float
rounding (README, Sweeps).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

# The fewest threads a job of this model gets on the CPU (models not listed: 1).
MIN_THREADS_ALL_CORES = 0  # marker: the whole machine, one job at a time
MIN_THREADS = {"resnet18": MIN_THREADS_ALL_CORES, "resnet34": MIN_THREADS_ALL_CORES,
               "resnet50": MIN_THREADS_ALL_CORES}
# configs/hydra/launcher/parallel.yaml's launcher (the command-line check looks for it).
LAUNCHER_TARGET = "hydra_plugins.regbench_parallel_launcher.parallel_launcher.ParallelLauncher"
# Hidden lock files in the sweep folder: a job holds one while it runs on that GPU.
GPU_SLOT_FILE = ".regbench-gpu-{}.lock"


@dataclass(frozen=True)
class JobShape:
    """What decides a job's share of the machine, read from its composed config."""

    model: str
    device: str  # trainer.device
    num_threads: int  # trainer.num_threads; 0 = not set

    @classmethod
    def of(cls, config: Any) -> "JobShape":
        """The shape of a job's composed config."""
        from omegaconf import OmegaConf

        return cls(model=str(OmegaConf.select(config, "model.name", default="")),
                   device=str(OmegaConf.select(config, "trainer.device", default="auto")),
                   num_threads=int(OmegaConf.select(config, "trainer.num_threads", default=0)))


@dataclass(frozen=True)
class JobPlan:
    at_once: int
    threads: Optional[int]  # trainer.num_threads for every job; None: the jobs' own setting
    gpus: int = 0  # >0: each job runs on the GPU of the slot it holds (cuda:0 ... cuda:gpus-1)
    reason: str = ""

    def describe(self, job_count: int) -> str:
        threads = f", {counted(self.threads, 'CPU thread')} each" if self.threads else ""
        return (f"{counted(job_count, 'job')}, {self.at_once} at a time "
                f"({self.reason}{threads}); hydra/launcher=basic runs one at a time")


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def check_n_jobs(n_jobs: object) -> None:
    """``hydra.launcher.n_jobs``: null (chosen from the cores or GPUs) or a positive whole number."""
    from regbench.config import check

    check(n_jobs is None or (isinstance(n_jobs, int) and not isinstance(n_jobs, bool) and n_jobs >= 1),
          "hydra.launcher.n_jobs", n_jobs, "a positive number of jobs at once, or null (chosen from "
          "the cores or the GPUs)")


PINNABLE_DEVICES = ("auto", "cuda")  # trainer.device values the launcher may pin to a GPU


def uses_cuda(shape: JobShape, gpus: int) -> bool:
    return gpus > 0 and (shape.device in PINNABLE_DEVICES or shape.device.startswith("cuda:"))


def plan_jobs(shapes: Sequence[JobShape], job_count: int, cores: int, gpus: int,
              n_jobs: Optional[int] = None) -> JobPlan:
    """The plan for ``job_count`` jobs whose distinct configs are ``shapes``, on ``cores`` CPU cores
    and ``gpus`` visible CUDA devices; ``n_jobs`` is hydra.launcher.n_jobs when the user set it."""
    job_count, cores = max(1, job_count), max(1, cores)
    user_threads = max((shape.num_threads for shape in shapes), default=0)
    if any(uses_cuda(shape, gpus) for shape in shapes):
        # A device the user named (cuda:1) is theirs: its jobs run there, one at a time.
        pinnable = all(shape.device in PINNABLE_DEVICES for shape in shapes)
        slots = gpus if pinnable else 1
        at_once = min(job_count, n_jobs or slots)
        threads = None if user_threads else max(1, cores // at_once)
        return JobPlan(at_once, threads, gpus=min(slots, at_once) if pinnable and at_once > 1 else 0,
                       reason=f"{counted(slots, 'GPU')}, one job each")
    if n_jobs:
        at_once = min(job_count, n_jobs)
        reason = "hydra.launcher.n_jobs"
    elif user_threads:
        at_once = min(job_count, max(1, cores // user_threads))
        reason = f"{counted(cores, 'core')} / trainer.num_threads={user_threads}"
    else:
        least = max(MIN_THREADS.get(shape.model, 1) or cores for shape in shapes) if shapes else 1
        at_once = min(job_count, max(1, cores // least))
        reason = counted(cores, "core") + (", a model that takes all of them" if least > 1 else "")
    threads = None if user_threads else max(1, cores // at_once)
    return JobPlan(at_once, threads, reason=reason)


def job_overrides(plan: JobPlan, overrides: Sequence[str], slot: Optional[int]) -> list[str]:
    """A job's overrides with its share of the machine appended (later overrides win in Hydra);
    both keys are result-neutral (run/spec.py) and left out of job folder names."""
    extra = [f"trainer.num_threads={plan.threads}"] if plan.threads else []
    if slot is not None:
        extra.append(f"trainer.device=cuda:{slot}")
    return [*overrides, *extra]


class SlotTaken(Exception):
    """Another job holds this GPU's slot."""


def slot_taken() -> None:
    raise SlotTaken


@contextlib.contextmanager
def gpu_slot(sweep_dir: Path, gpus: int) -> Iterator[Optional[int]]:
    """The first GPU no other job of this sweep holds, held (``files.exclusive_lock``) until the
    block ends; None when jobs are not pinned (``gpus`` 0). The launcher never runs more jobs at
    once than GPUs, so a free one exists; a lock dies with its process, so a killed job frees it."""
    from regbench.files import exclusive_lock

    if gpus <= 0:
        yield None
        return
    for slot in range(gpus):
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(sweep_dir / GPU_SLOT_FILE.format(slot), slot_taken))
            except SlotTaken:
                continue
            yield slot
            return
    raise RuntimeError(f"no free GPU slot among {gpus} in {sweep_dir}")


# Override keys that can change a job's shape (its model, device or threads); jobs that differ only
# in other keys (seeds, regularizers, learning rates) share one composition in the launcher.
SHAPE_KEYS = ("model", "dataset", "experiment", "trainer")


def shape_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides of a job that can change its shape, in order."""
    return tuple(line for line in overrides
                 if line.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0] in SHAPE_KEYS)
