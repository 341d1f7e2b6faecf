"""``hydra/launcher=parallel``: the sweep's jobs in parallel processes that fit the machine.

Hydra's joblib launcher (loky worker processes) with the number of jobs at once, each job's CPU
threads and its GPU chosen by ``regbench.sweep_plan`` from the jobs' composed configs, the cores
and the visible GPUs, before the first job starts. Everything else is the joblib launcher's:
each job composes its config and runs in a worker process; regbench's sweep callback
(regbench/sweep.py) gives the jobs their outcomes, the closing summary and Ctrl-C handling, as it
does for every launcher.

Hydra's plugin scan imports this module in every run: it imports neither torch nor joblib at the top.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig

if TYPE_CHECKING:  # regbench is imported when a sweep launches, not by Hydra's plugin scan
    from regbench.sweep_plan import JobPlan, JobShape

log = logging.getLogger(__name__)


def execute_planned_job(plan: "JobPlan", sweep_dir: Path, idx: int, overrides: Sequence[str],
                        hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction,
                        singleton_state: dict[Any, Any]) -> JobReturn:
    """One job in a worker process, with its share of the machine (threads, a GPU slot held while
    it runs) appended to its overrides."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    from regbench.sweep_plan import gpu_slot, job_overrides

    with gpu_slot(sweep_dir, plan.gpus) as slot:
        return execute_job(idx, job_overrides(plan, overrides, slot), hydra_context, config,
                           task_function, singleton_state)


class ParallelLauncher(JoblibLauncher):
    """Hydra's ``JoblibLauncher`` whose ``n_jobs`` and per-job threads and GPUs fit the machine
    (``n_jobs`` null: chosen by regbench.sweep_plan; a number: that many at once)."""

    def __init__(self, n_jobs: Optional[int] = None, **joblib: Any) -> None:
        super().__init__(**joblib)
        self.n_jobs = n_jobs

    def job_shapes(self, job_overrides: Sequence[Sequence[str]]) -> list["JobShape"]:
        """The distinct shapes among the jobs, each composed once (``sweep_plan.shape_key``)."""
        from regbench.sweep_plan import JobShape, shape_key

        distinct = {shape_key(overrides): overrides for overrides in job_overrides}
        load = self.hydra_context.config_loader.load_sweep_config
        return [JobShape.of(load(self.config, list(overrides))) for overrides in distinct.values()]

    def plan(self, job_overrides: Sequence[Sequence[str]]) -> "JobPlan":
        import torch

        from regbench.machine import available_cores
        from regbench.sweep_plan import plan_jobs

        return plan_jobs(self.job_shapes(job_overrides), len(job_overrides), available_cores(),
                         torch.cuda.device_count(), self.n_jobs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        plan = self.plan(job_overrides)
        log.info("%s; sweep folder: %s", plan.describe(len(job_overrides)), sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        # loky: Hydra's joblib launcher's backend (threads cannot run Hydra jobs side by side).
        parallel = Parallel(**{**self.joblib, "n_jobs": plan.at_once, "backend": "loky"})
        state = Singleton.get_state()
        return parallel(delayed(execute_planned_job)(plan, sweep_dir, initial_job_idx + idx, overrides,
                                                     self.hydra_context, self.config,
                                                     self.task_function, state)
                        for idx, overrides in enumerate(job_overrides))
