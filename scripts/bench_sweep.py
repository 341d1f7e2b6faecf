"""A sweep on the default launcher (``hydra/launcher=parallel``) against one job at a time
(``hydra/launcher=basic``): wall time, jobs per hour, the ratio, and whether the jobs' results agree.

Each round runs the same grid once with each launcher, in a fresh sweep folder, as a user types it
(``python -m regbench -m <grid>``, nothing else added), the launchers' order alternating between
rounds. Reports median wall times over rounds, jobs per hour and basic / parallel, the machine (CPU,
cores, load average before and after), what the default launcher chose (its first line), and per
metric the largest difference between the two launchers' jobs (0 when identical: threads differ,
so float sums may round differently; README, Sweeps).

    python scripts/bench_sweep.py [--rounds 3] [--grid "regularizer=none,dropout seed=0,1"] [--out sweep.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cpu_model  # scripts/bench.py

# 16 jobs: the 8-job grid with four seeds instead of two.
DEFAULT_GRID = ("regularizer=none,dropout,label_smoothing,confidence_penalty seed=0,1,2,3 "
                "trainer.epochs=15 evaluation.figures=false")
LAUNCHERS = {"parallel": [], "basic": ["hydra/launcher=basic"]}  # parallel: the default
COMPARED = ("test/acc", "test/nll", "test/ece")


def run_sweep(grid: list[str], launcher: list[str], sweep: Path) -> tuple[float, str]:
    """Wall seconds of one sweep, and the default launcher's plan line (empty for basic)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "regbench", "-m", *launcher, *grid,
                             f"hydra.sweep.dir={sweep}"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(launcher) or 'default'}): {result.stderr.strip()[-2000:]}")
    plan = next((line.split("[HYDRA] ", 1)[1] for line in (result.stdout + result.stderr).splitlines()
                 if "at a time" in line), "")
    return seconds, plan


def job_metrics(sweep: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sweep.glob("*/metrics.json")}


def largest_differences(first: Path, second: Path) -> dict[str, float]:
    """Per compared metric, the largest |difference| between the same job of the two sweeps."""
    a, b = job_metrics(first), job_metrics(second)
    if sorted(a) != sorted(b):
        sys.exit(f"the sweeps ran different jobs: {sorted(a)} vs {sorted(b)}")
    return {key: max(abs(a[job][key] - b[job][key]) for job in a) for key in COMPARED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=DEFAULT_GRID, help="the sweep's overrides, as typed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    grid = shlex.split(args.grid)
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    differences, plan = {}, ""
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.rounds):
            order = list(LAUNCHERS) if index % 2 == 0 else list(reversed(LAUNCHERS))
            for name in order:  # interleaved: each launcher once per round, order alternating
                wall, line = run_sweep(grid, LAUNCHERS[name], Path(folder) / f"{index}-{name}")
                seconds[name].append(wall)
                plan = line or plan
                print(f"round {index + 1}: {name:<20}{wall:8.1f} s", flush=True)
            differences = largest_differences(Path(folder) / f"{index}-parallel",
                                              Path(folder) / f"{index}-basic")
    print_table(args, grid, seconds, differences, plan, load_before)


def print_table(args: argparse.Namespace, grid: list[str], seconds: dict[str, list[float]],
                differences: dict[str, float], plan: str, load_before: tuple) -> None:
    jobs = int(plan.split(" ", 1)[0]) if plan else None  # "8 jobs, 2 at a time (...)"
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(),
               "cores_available": len(os.sched_getaffinity(0)),
               "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(f"\ngrid: {' '.join(grid)}\ndefault launcher: {plan}")
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores; load average "
          f"{load_before[0]:.1f} before, {machine['load_average_after'][0]:.1f} after\n")
    print("| launcher | median wall s | jobs per hour | basic / this |")
    print("| --- | ---: | ---: | ---: |")
    rows = []
    for name, median in medians.items():
        per_hour = jobs * 3600 / median if jobs else float("nan")
        ratio = medians["basic"] / median
        rows.append({"launcher": name, "median_seconds": median, "seconds": seconds[name],
                     "jobs_per_hour": per_hour, "speedup_over_basic": ratio})
        print(f"| {name} | {median:.1f} | {per_hour:.0f} | {ratio:.2f} |")
    print("\nlargest |parallel - basic| per job: "
          + ", ".join(f"{key} {value:.2g}" for key, value in differences.items()))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "grid": grid, "jobs": jobs,
                                        "default_launcher": plan, "rounds": args.rounds,
                                        "rows": rows, "largest_differences": differences},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
