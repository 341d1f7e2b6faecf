"""What making the corrupted test sets costs (evaluation/shift.py): every corruption of the standard
suite at severities 1-5 on the digits test split (360 images of 1x8x8, the real loader's) and on a
CIFAR-sized batch (10,000 of 3x32x32), against one training epoch of the default digits job.

Every repetition runs each measurement once, in the same order (interleaved); medians are
reported. A warm-up pass over the digits (torchvision's imports, first calls) comes first and is
not counted. Torch threads are the default job's (Run.build applies trainer.num_threads=0: the
cores other processes leave free); the JSON records them and the load average.

    python scripts/bench_shift.py [--repeats 3] [--device cpu] [--cifar-count 10000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from regbench.cli.compose import compose_settings
from regbench.config import DatasetConfig
from regbench.datasets.digits import load_digits
from regbench.evaluation.shift import SEVERITIES, corrupt, standard_suite
from regbench.run.engine import Run


def timed(function: Callable[[], object], device: torch.device) -> float:
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def suite_jobs(label: str, images: torch.Tensor) -> dict[str, Callable[[], object]]:
    """One job per corruption: its five severities on the whole batch."""
    generator = torch.Generator(device=images.device).manual_seed(0)

    def every_severity(name: str) -> None:
        for severity in SEVERITIES:
            corrupt(images, name, severity, generator)
    return {f"{label} {name}": (lambda n=name: every_severity(n))
            for name in standard_suite(images.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cifar-count", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = torch.device(args.device)
    run = Run.build(compose_settings(["trainer.progress=false"]))
    digits = load_digits(DatasetConfig(name="digits")).test.images.to(device)
    cifar = torch.randint(0, 256, (args.cifar_count, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).to(device)
    digit_jobs, cifar_jobs = suite_jobs("digits", digits), suite_jobs("cifar", cifar)
    jobs = {"digits train epoch": lambda: run.train_epoch(0), **digit_jobs, **cifar_jobs}
    for job in digit_jobs.values():  # warm-up
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            times[name].append(timed(job, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    epoch = medians["digits train epoch"]
    totals = {label: sum(medians[name] for name in group)
              for label, group in (("digits suite", digit_jobs), ("cifar suite", cifar_jobs))}
    training = epoch * run.settings.trainer.epochs
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "device": str(device),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
        "repeats": args.repeats,
        "median_seconds": medians,
        "totals_seconds": totals,
        "digits_suite_share_of_the_default_jobs_training": totals["digits suite"] / training,
    }
    for name, value in {**medians, **totals}.items():
        print(f"{name:34s} {value:9.3f} s  {value / epoch:8.2f} x a digits epoch")
    print(f"digits suite / default job's training ({run.settings.trainer.epochs} epochs): "
          f"{totals['digits suite'] / training:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
