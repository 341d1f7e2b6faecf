"""Fine-tuning on the CPU: what an epoch of experiment=pets_finetune costs, body frozen or not, in
fp32 and bf16, and whether caching the frozen body's features would pay.

Synthetic Pets files (random-pixel JPEGs of 256 x 320 px in Pets' on-disk layout, 37 breeds) are
read through ``dataset=pets`` as the preset reads them (stored at 256, random 224 crops and flips
by the augmentation regularizer), into the preset's run: ResNet-34 with fastai's head, batch 64,
AdamW one-cycle (``model.weights=null``: random weights compute exactly what ImageNet ones do).
One run per mode, each epoch ``--batches`` steps of ``--batch-size`` images:

  unfrozen            every layer trains (trainer.freeze_epochs=0)
  frozen, train_bn    the body frozen, its BatchNorm layers training (the preset: fastai's default)
  frozen              the body frozen and in eval mode (train_bn=false): the backward pass stops at
                      the head
  features once       the body's forward pass in eval mode without autograd (``Run.evaluate`` on
                      the unaugmented training images): what filling a feature cache costs
  head on features    the head's training step on cached features (forward, backward, AdamW)

each in fp32 and in bf16 (``torch.autocast("cpu", dtype=torch.bfloat16)``, what trainer.amp=true
switches on when regbench.machine.cpu_has_bf16() says the CPU has AVX512-BF16 or AMX). The
measurements are interleaved over ``--repeats`` rounds after a warm-up round; the table gives
medians per image and the epoch of Pets' 3,312 training images (3,680 trainval less 368 held out)
they extrapolate to.

    python scripts/bench_finetune.py [--batches 1] [--batch-size 64] [--repeats 2]
                                     [--image-size 224] [--threads N] [--out finetune.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from bench import cpu_model  # scripts/bench.py: the CPU's name
from PIL import Image

from regbench.cli.compose import compose_settings
from regbench.machine import cpu_has_bf16
from regbench.run.engine import Run

PETS_TRAIN_IMAGES = 3312  # trainval 3,680 less the 368 of dataset.val_size
BREEDS = 37
MODES = {  # mode -> trainer overrides (the runs train for far fewer epochs than they are set for)
    "unfrozen": ["trainer.freeze_epochs=0"],
    "frozen, train_bn": ["trainer.freeze_epochs=1000", "trainer.train_bn=true"],
    "frozen": ["trainer.freeze_epochs=1000", "trainer.train_bn=false"],
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def write_pets(root: Path, train_images: int, seed: int = 0) -> None:
    """Pets' layout: oxford-iiit-pet/images/<Breed>_<n>.jpg and annotations/{trainval,test}.txt."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    rng = np.random.default_rng(seed)
    per_breed = {"trainval": -(-train_images // BREEDS), "test": 1}
    number = 0
    for split, count in per_breed.items():
        lines = []
        for breed in range(1, BREEDS + 1):
            for _ in range(count):
                number += 1
                pixels = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / "images" / f"breed{breed}_{number}.jpg")
                lines.append(f"breed{breed}_{number} {breed} 1 {breed}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def build_run(root: Path, mode: str, args: argparse.Namespace) -> Run:
    batches, batch_size = args.batches, args.batch_size
    return Run.build(compose_settings([
        "experiment=pets_finetune", "model.weights=null", f"dataset.root={root}",
        f"dataset.image_size={args.image_size}", f"trainer.num_threads={args.threads}",
        "dataset.download=false", "dataset.val_size=0",
        f"dataset.train_size={batches * batch_size}", f"trainer.batch_size={batch_size}",
        "trainer.progress=false", "trainer.epochs=1000", *MODES[mode]]))


def head_step(run: Run, batch_size: int) -> Callable[[], None]:
    """One training step of a copy of the head on random features of the body's width: what an
    epoch costs per batch once the features are cached."""
    import copy

    head = copy.deepcopy(run.model.head).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    features = torch.randn(batch_size, run.model.num_features)
    labels = torch.randint(0, BREEDS, (batch_size,))

    def step() -> None:
        with run.autocast():
            logits = head(features)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(runs: dict[str, Run], batches: int, batch_size: int,
            repeats: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per image of every (mode, precision), interleaved; round 0 warms up."""
    images = batches * batch_size
    features_run = runs["frozen"]
    heads = {name: head_step(features_run, batch_size) for name in PRECISIONS}
    seconds: dict[tuple[str, str], list[float]] = {}
    for round_index in range(repeats + 1):
        for precision, dtype in PRECISIONS.items():
            for mode, run in runs.items():
                run.amp_dtype = dtype
                took = timed(lambda: run.train_epoch(round_index))
                seconds.setdefault((mode, precision), []).append(took / images)
            features_run.amp_dtype = dtype
            took = timed(lambda: features_run.evaluate(features_run.data.train_eval))
            seconds.setdefault(("features once", precision), []).append(took / images)
            took = timed(lambda: [heads[precision]() for _ in range(batches)])
            seconds.setdefault(("head on features", precision), []).append(took / images)
            print(f"round {round_index} {precision}: done", file=sys.stderr, flush=True)
    return {key: values[1:] for key, values in seconds.items()}


def table(medians: dict[tuple[str, str], float]) -> list[dict]:
    rows = []
    for (mode, precision), per_image in medians.items():
        unfrozen = medians[("unfrozen", precision)]
        rows.append({"mode": mode, "precision": precision, "seconds_per_image": per_image,
                     "images_per_second": 1 / per_image,
                     "pets_epoch_seconds": per_image * PETS_TRAIN_IMAGES,
                     "fraction_of_unfrozen": per_image / unfrozen,
                     "bf16_speedup": medians[(mode, "fp32")] / medians[(mode, "bf16")]})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'mode':<18}{'precision':>10}{'ms/image':>10}{'images/s':>10}"
          f"{'Pets epoch s':>14}{'/unfrozen':>11}{'fp32/bf16':>11}")
    for row in rows:
        print(f"{row['mode']:<18}{row['precision']:>10}{1000 * row['seconds_per_image']:>10.1f}"
              f"{row['images_per_second']:>10.2f}{row['pets_epoch_seconds']:>14.0f}"
              f"{row['fraction_of_unfrozen']:>11.3f}{row['bf16_speedup']:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1, help="training steps per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="measured rounds (after a warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--image-size", type=int, default=224,
                        help="the crop the model sees (the preset's 224; less for a quick check)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the random-body warning, once per run: expected here
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["REGBENCH_CACHE"] = str(Path(folder) / "cache")
        write_pets(Path(folder) / "data", args.batches * args.batch_size)
        runs = {mode: build_run(Path(folder) / "data", mode, args) for mode in MODES}
        seconds = measure(runs, args.batches, args.batch_size, args.repeats)
    rows = table({key: statistics.median(values) for key, values in seconds.items()})
    print_table(rows)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
               "native_bf16": cpu_has_bf16(), "torch": torch.__version__,
               "python": sys.version.split()[0], "load_average_before": load_before,
               "load_average_after": os.getloadavg()}
    print(json.dumps(machine))
    if args.out:
        args.out.write_text(json.dumps({
            "machine": machine, "batches": args.batches, "batch_size": args.batch_size,
            "image_size": args.image_size, "repeats": args.repeats, "rows": rows,
            "seconds_per_image": {f"{mode} | {precision}": values
                                  for (mode, precision), values in seconds.items()}},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
