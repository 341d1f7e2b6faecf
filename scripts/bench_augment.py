"""Speed of the augmentation policies (autoaugment, randaugment, trivialaugment, augmix): regbench's
per-image batching on whole uint8 batches (regularizers/policy_ops.py) against torchvision's v2
policies called on one image at a time in a DataLoader, the usual way.

Part 1, the policies alone: CIFAR-sized uint8 images (3x32x32, random pixels, ``--images`` of them
in batches of 128), images per second through

  regbench      the regularizer's ``transform_batch`` on each batch (on ``--device``);
  loader 0w/2w  a Dataset applying torchvision's policy to each image in ``__getitem__`` and a
                DataLoader (batch 128) with 0 or 2 worker processes (persistent, warmed up), the
                batches collated as usual: v2.AutoAugment(CIFAR10), v2.RandAugment(),
                v2.TrivialAugmentWide(), v2.AugMix(all_ops=False) (regbench's default operations);
                for augmix+jsd the Dataset returns (clean, AugMix, AugMix) per image as the paper's
                AugMixDataset does.

Part 2, a training epoch with RandAugment: LeNet, batch 128, on ``--epoch-images`` synthetic
32x32 RGB JPEGs decoded once into regbench's in-memory image cache (dataset=imagefolder, as
scripts/bench.py's image-folder case), one process, the same model object and optimizer:

  A   regbench's ``Run.train_epoch`` with regularizer=randaugment (the policy's share of the epoch
      measured by timing its ``transform_batch`` calls inside the epoch);
  A0  the same epoch with regularizer=none (what the policy adds);
  B   the usual pipeline: the same uint8 images in a Dataset applying v2.RandAugment, ToDtype and
      Normalize per image, a DataLoader with 0 or 2 workers (both measured), then forward,
      cross-entropy, backward, step.

Every repetition runs each measurement once in the same order (interleaved: the machine may be
shared); medians are reported, with the load average before and after. Torch threads: regbench's
default, trainer.num_threads=0 (the cores other processes leave free; on a busy machine more
threads than free cores slow every step down), for both parts, unless ``--threads`` says.

    python scripts/bench_augment.py [--repeats 3] [--images 1280] [--epoch-images 5120]
                                    [--threads N] [--device cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from bench import (  # scripts/bench.py: the same synthetic folder, loop and timer
    IMAGENET_MEAN,
    IMAGENET_STD,
    cache_in,
    cpu_model,
    plain_epoch,
    timed,
    write_synthetic_image_folder,
)
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from regbench.cli.compose import compose_settings
from regbench.machine import free_cores
from regbench.regularizers import REGULARIZERS
from regbench.regularizers.augmix import AugMixConfig
from regbench.regularizers.autoaugment import AutoAugmentConfig
from regbench.regularizers.randaugment import RandAugmentConfig
from regbench.regularizers.trivialaugment import TrivialAugmentConfig
from regbench.run.engine import Run

BATCH_SIZE = 128
WORKERS = (0, 2)


class PerImage(Dataset):
    """uint8 images, each through ``transform`` when it is read: the usual augmentation pipeline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


class ThreeViews:
    """(clean, AugMix, AugMix) of one image, stacked: the paper's AugMixDataset for the JSD loss."""

    def __init__(self) -> None:
        self.augmix = v2.AugMix(all_ops=False)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([image, self.augmix(image), self.augmix(image)])


# name -> (regularizer name, its config, torchvision's per-image counterpart)
POLICIES = {
    "autoaugment": ("autoaugment", AutoAugmentConfig(),
                    lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)),
    "randaugment": ("randaugment", RandAugmentConfig(), v2.RandAugment),
    "trivialaugment": ("trivialaugment", TrivialAugmentConfig(), v2.TrivialAugmentWide),
    "augmix": ("augmix", AugMixConfig(jsd=False), lambda: v2.AugMix(all_ops=False)),
    "augmix+jsd": ("augmix", AugMixConfig(), ThreeViews),
}


def loader(images: torch.Tensor, labels: torch.Tensor, transform: Callable, workers: int,
           shuffle: bool = False) -> DataLoader:
    return DataLoader(PerImage(images, labels, transform), batch_size=BATCH_SIZE, shuffle=shuffle,
                      num_workers=workers, persistent_workers=workers > 0, drop_last=True)


def drain(batches) -> None:
    for _ in batches:
        pass


def policy_jobs(count: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """Part 1: for each policy, regbench on whole batches and torchvision per image in loaders."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    batches = [(x.to(device), y.to(device)) for x, y in
               zip(images.split(BATCH_SIZE), labels.split(BATCH_SIZE))]
    jobs: dict[str, Callable[[], object]] = {}
    for name, (regularizer_name, config, counterpart) in POLICIES.items():
        regularizer = REGULARIZERS.get(regularizer_name)(config)
        jobs[f"{name} | regbench"] = lambda r=regularizer: [r.transform_batch(x, y)
                                                            for x, y in batches]
        for workers in WORKERS:
            pipeline = loader(images, labels, counterpart(), workers)
            jobs[f"{name} | loader {workers}w"] = lambda p=pipeline: drain(p)
    return jobs


def timed_policy(run: Run) -> list[float]:
    """Wrap the run's policy so that the seconds of each of its calls are recorded."""
    seconds: list[float] = []
    regularizer = run.regularizers[0]
    transform = regularizer.transform_batch

    def timed_transform(images, labels):
        started = time.perf_counter()
        result = transform(images, labels)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        seconds.append(time.perf_counter() - started)
        return result

    regularizer.transform_batch = timed_transform
    return seconds


def epoch_jobs(data_root: Path, threads: int, device: str):
    """Part 2: regbench's epoch with RandAugment (A), without (A0), the usual pipeline (B)."""
    def settings(regularizer: str):
        return compose_settings([
            "dataset=imagefolder", f"dataset.root={data_root}", "dataset.val_size=0",
            "model=lenet", f"trainer.batch_size={BATCH_SIZE}", f"regularizer={regularizer}",
            "trainer.progress=false", f"trainer.num_threads={threads}", "trainer.epochs=1000",
            f"trainer.device={device}"])

    run, run_none = Run.build(settings("randaugment")), Run.build(settings("none"))
    policy_seconds = timed_policy(run)
    per_image = v2.Compose([v2.RandAugment(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    images, labels = run.data.train.images.cpu(), run.data.train.labels.cpu()
    jobs = {"A regbench + randaugment": lambda: run.train_epoch(0),
            "A0 regbench, none": lambda: run_none.train_epoch(0)}
    for workers in WORKERS:
        pipeline = loader(images, labels, per_image, workers, shuffle=True)
        jobs[f"B loader {workers}w + v2.RandAugment"] = (
            lambda p=pipeline: plain_epoch(run.model, run.optimizer, p, run.device))
    return jobs, policy_seconds, len(run.data.train) * BATCH_SIZE


def measure(jobs: dict[str, Callable[[], object]], repeats: int,
            device: torch.device) -> dict[str, list[float]]:
    for job in jobs.values():  # warm-up: first calls, worker start-up
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            times[name].append(timed(job, device))
    return times


def policy_table(times: dict[str, list[float]], count: int) -> dict:
    rows = {}
    for name, values in times.items():
        policy, pipeline = name.split(" | ")
        median = statistics.median(values)
        rows.setdefault(policy, {})[pipeline] = {"median_seconds": median,
                                                 "images_per_second": count / median}
    print(f"{'policy':<16}{'pipeline':<12}{'images/s':>10}{'x best loader':>15}")
    for policy, pipelines in rows.items():
        best = max(pipelines[f"loader {w}w"]["images_per_second"] for w in WORKERS)
        for pipeline, row in pipelines.items():
            print(f"{policy:<16}{pipeline:<12}{row['images_per_second']:>10.0f}"
                  f"{row['images_per_second'] / best:>15.2f}")
    return rows


def epoch_table(times: dict[str, list[float]], policy_seconds: list[float], samples: int,
                repeats: int, batches: int) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    ra = medians["A regbench + randaugment"]
    # The policy's calls of the timed epochs (the warm-up epoch's calls come first).
    per_epoch = [sum(policy_seconds[(1 + k) * batches:(2 + k) * batches]) for k in range(repeats)]
    share = statistics.median(per_epoch) / ra
    print(f"{'epoch':<34}{'s/epoch':>9}{'images/s':>10}{'time / A':>10}")
    for name, median in medians.items():
        print(f"{name:<34}{median:>9.3f}{samples / median:>10.0f}{median / ra:>10.2f}")
    print(f"randaugment's share of regbench's epoch: {share:.3f}")
    best_loader = min(medians[f"B loader {w}w + v2.RandAugment"] for w in WORKERS)
    return {"median_seconds": medians, "samples_per_epoch": samples,
            "policy_share_of_epoch": share, "speedup_vs_best_loader": best_loader / ra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1280, help="part 1: images per measurement")
    parser.add_argument("--epoch-images", type=int, default=5120, help="part 2 (0: skip it)")
    parser.add_argument("--threads", type=int, default=0, help="0: regbench's free cores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.images < BATCH_SIZE or args.repeats < 1 or 0 < args.epoch_images < BATCH_SIZE:
        parser.error(f"--images (and --epoch-images unless 0) must be >= {BATCH_SIZE}")
    threads = args.threads or free_cores()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    count = args.images // BATCH_SIZE * BATCH_SIZE
    report = {"policies": policy_table(measure(policy_jobs(count, device), args.repeats, device),
                                       count)}
    if args.epoch_images:
        with tempfile.TemporaryDirectory() as folder, cache_in(Path(folder) / "cache"):
            root = Path(folder) / "images"
            write_synthetic_image_folder(root, args.epoch_images, num_test=BATCH_SIZE)
            jobs, policy_seconds, samples = epoch_jobs(root, threads, args.device)
            times = measure(jobs, args.repeats, device)
            report["epoch"] = epoch_table(times, policy_seconds, samples, args.repeats,
                                          samples // BATCH_SIZE)
    report["machine"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
                         "device": str(device), "torch": torch.__version__,
                         "load_average_before": load_before,
                         "load_average_after": os.getloadavg()[0]}
    report.update(repeats=args.repeats, images=count, batch_size=BATCH_SIZE)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
