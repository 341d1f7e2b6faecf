"""What the out-of-distribution pieces of #23 cost: the OOD metrics of one set (evaluation/ood.py,
4 scores x 4 metrics) and each synthetic set (datasets/synthetic_ood.py), at the digits test
split's size (360 images of 1x8x8) and at CIFAR's (10,000 of 3x32x32), against one training epoch
of the default digits job.

Every repetition runs each measurement once, in the same order (interleaved), and the medians are
reported; the first repetition is a warm-up (imports of scikit-learn and scipy) and is dropped.

    python scripts/bench_ood.py [--repeats 7] [--out bench_ood.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from regbench.cli.compose import compose_settings
from regbench.datasets.synthetic_ood import SYNTHETIC_OOD_SETS, synthetic_ood_images
from regbench.evaluation.ood import ood_metrics
from regbench.run.engine import Run

SIZES = {"digits": (360, (1, 8, 8)), "cifar": (10_000, (3, 32, 32))}
CLASSES = 10


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measurements(run: Run) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)
    jobs: dict[str, Callable[[], object]] = {"digits train epoch": lambda: run.train_epoch(0)}
    for size_name, (count, shape) in SIZES.items():
        in_logits = torch.randn(count, CLASSES, generator=generator) * 3
        out_logits = torch.randn(count, CLASSES, generator=generator)
        jobs[f"{size_name} ood_metrics (one set)"] = (
            lambda a=in_logits, b=out_logits: ood_metrics(a, b, "bench"))
        for set_name in SYNTHETIC_OOD_SETS:
            jobs[f"{size_name} synthetic {set_name}"] = (
                lambda n=set_name, c=count, s=shape: synthetic_ood_images(n, c, s, seed=0))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    run = Run.build(compose_settings(["trainer.progress=false"]))
    jobs = measurements(run)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for repeat in range(args.repeats + 1):
        for name, job in jobs.items():
            seconds = timed(job)
            if repeat:  # the first round is the warm-up
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    epoch = medians["digits train epoch"]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "repeats": args.repeats,
        "median_seconds": medians,
        "share_of_a_digits_epoch": {name: value / epoch for name, value in medians.items()},
    }
    for name, value in medians.items():
        print(f"{name:38s} {value * 1000:9.1f} ms  {value / epoch:7.2f} x a digits epoch")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
