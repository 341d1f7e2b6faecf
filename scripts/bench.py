"""Training speed: regbench's epoch against the usual PyTorch pipeline and against pure compute.

For each model (default: LeNet-5 and the 2x1024 MLP) on MNIST-format data (synthetic 28x28 pixels
written as real IDX files to a temporary folder, so both regbench and torchvision read them from disk
as they would the real MNIST), in one process, with the same model object, optimizer, batch size and
samples per epoch, interleaved A B C (D) over several repetitions after a warm-up:

  A  regbench: ``Run.train_epoch``, the CLI's epoch, on the run ``Run.build`` makes from the real
     config (in-memory uint8 split, batches indexed and normalized as whole tensors, the epoch's
     train/ metrics included);
  B  the tutorial pipeline (PyTorch's examples/mnist): torchvision's MNIST with ToTensor + Normalize
     per sample and a DataLoader with 0 or 2 workers, whichever was faster in one probing epoch each;
     then forward, cross-entropy, backward, step;
  C  pure compute: the same loop over normalized float batches prepared in memory beforehand, the
     limit for this model on this machine;
  D  (only when PyTorch Lightning is installed) the same model and optimizer in ``lightning.Trainer``
     for one epoch over B's DataLoader, the framework most users would pick; each repetition is one
     ``fit(max_epochs=1)``, so it includes Lightning's per-fit setup.

Nothing is reset between pipelines: the question is time per epoch, not accuracy. Reports medians;
for LeNet also ``speedup_vs_dataloader`` (B/A) and ``overhead_vs_compute`` (A/C).

The image-folder case (``--imagefolder-images``, default 50,000; 0 skips it): that many synthetic
32x32 RGB JPEGs (random pixels, PIL quality 75, 10 classes) written to a temporary
``train/<class>/`` folder, LeNet, batch 128, interleaved A B C as above, where A is regbench's epoch
on ``dataset=imagefolder`` decoded once into the image cache (``REGBENCH_CACHE`` in the temporary
folder; native 32x32, in memory), and B is torchvision's ``ImageFolder`` with ``ToTensor`` +
``Normalize`` and a ``DataLoader`` (the faster of 0 and 2 workers), decoding every JPEG every epoch.
It also reports the one-time cache build (``Run.build`` decoding every image) and a second
``Run.build`` that loads the cache. JSON keys ``imagefolder_speedup_vs_dataloader`` (B/A) and
``imagefolder_overhead_vs_compute`` (A/C).

    python scripts/bench.py [--models lenet mlp] [--repeats 5] [--samples 60000] [--threads N]
                            [--imagefolder-images 50000] [--out bench.json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from regbench.cli.compose import compose_settings
from regbench.machine import resolve_device
from regbench.run.engine import Run

BATCH_SIZE = 128  # PyTorch's examples/mnist uses 64; 128 is the common choice for LeNet/MLP benchmarks
# The tutorial's MNIST statistics (also configs/dataset/mnist.yaml).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
WORKER_CHOICES = (0, 2)  # the tutorial's default, and one worker per core of a 2-core machine
NAMES = {"A": "regbench Run", "B": "tutorial DataLoader", "C": "pure compute", "D": "lightning"}
# configs/dataset/imagefolder.yaml's statistics, used by both A and B.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- data ----------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (the MNIST raw files): 0x00 0x00, type 0x08 (ubyte), ndim; big-endian int32 dims;
    then the data. Hand-written because torchvision only reads this format."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_synthetic_mnist(root: Path, num_train: int, num_test: int) -> None:
    """Random pixels and labels under ``root/MNIST/raw``, where torchvision's MNIST looks."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count, dtype=np.uint8))


def write_synthetic_jpegs(folder: Path, count: int, classes: int = 10) -> None:
    """``count`` random-pixel 32x32 RGB JPEGs spread over ``classes`` subfolders of ``folder``."""
    rng = np.random.default_rng(0)
    for name in range(classes):
        (folder / f"class{name}").mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"class{index % classes}" / f"{index}.jpg", quality=75)


def write_synthetic_image_folder(root: Path, num_train: int, num_test: int) -> None:
    write_synthetic_jpegs(root / "train", num_train)
    write_synthetic_jpegs(root / "test", num_test)


def tutorial_imagefolder_loader(root: Path, num_workers: int) -> DataLoader:
    """The usual ImageFolder pipeline: every JPEG decoded per sample, every epoch."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers, drop_last=True,
                      persistent_workers=num_workers > 0)


def tutorial_loader(root: Path, num_workers: int) -> DataLoader:
    """PyTorch's examples/mnist input pipeline. drop_last=True so it yields exactly A's full batches
    (regbench drops the last partial training batch); 96 of 60,000 samples, for equal work."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    dataset = datasets.MNIST(str(root), train=True, transform=transform, download=False)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers, drop_last=True)


def prepared_batches(run: Run) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A's batches, converted and normalized once, kept in memory for C."""
    return [(run.prepare(images), labels) for images, labels in run.data.train]


# --- the plain loop (B and C) and Lightning (D) -----------------------------------------------------

def plain_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches, device: torch.device) -> None:
    """forward, cross-entropy, backward, step."""
    model.train()
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def lightning_epoch_function(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                             device: torch.device) -> Optional[Callable[[], None]]:
    """One epoch of ``lightning.Trainer.fit`` over ``loader``, or None when Lightning is not installed."""
    try:
        import lightning
    except ImportError:
        return None
    # Lightning announces devices and suggests more workers on every fit: not part of the measurement.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    class Classification(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_index):
            images, labels = batch
            return F.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return optimizer

    module = Classification()

    def epoch() -> None:
        # The run's own device: Lightning moves the module there, and A, B, C share the module.
        trainer = lightning.Trainer(max_epochs=1, accelerator=device.type, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, train_dataloaders=loader)

    return epoch


# --- measuring ---------------------------------------------------------------------------------------

def timed(function: Callable[[], object], device: torch.device) -> float:
    started = time.perf_counter()
    function()
    if device.type == "cuda":  # queued kernels belong to this epoch
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


@contextlib.contextmanager
def cache_in(folder: Path):
    """REGBENCH_CACHE pointed at ``folder`` while the block runs (the image cache stays temporary)."""
    before = os.environ.get("REGBENCH_CACHE")
    os.environ["REGBENCH_CACHE"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["REGBENCH_CACHE"]
        else:
            os.environ["REGBENCH_CACHE"] = before


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bench_settings(model: str, data_root: Path, threads: int, epochs: int, dataset: str = "mnist"):
    overrides = [
        f"dataset={dataset}", f"dataset.root={data_root}", "dataset.download=false", "dataset.val_size=0",
        f"model={model}", f"trainer.batch_size={BATCH_SIZE}", "regularizer=none", "trainer.progress=false",
        f"trainer.num_threads={threads}", f"trainer.epochs={epochs}",
    ]
    return compose_settings(overrides)


def bench_model(model_name: str, data_root: Path, repeats: int, threads: int) -> dict:
    settings = bench_settings(model_name, data_root, threads, epochs=repeats + 1)
    run = Run.build(settings)
    return bench_pipelines(run, lambda workers: tutorial_loader(data_root, workers), repeats, lightning=True)


def bench_imagefolder(data_root: Path, repeats: int, threads: int) -> dict:
    """LeNet on the JPEG folder: the cache built once (timed), loaded by a second build (timed), then
    A B C interleaved. The cache lives in the temporary folder, so every invocation builds it anew."""
    settings = bench_settings("lenet", data_root, threads, epochs=repeats + 1, dataset="imagefolder")
    builds = []
    for _ in range(2):  # the first decodes every JPEG into the cache, the second loads it
        started = time.perf_counter()
        run = Run.build(settings)
        builds.append(time.perf_counter() - started)
    result = bench_pipelines(run, lambda workers: tutorial_imagefolder_loader(data_root, workers), repeats,
                             lightning=False)
    result["input_shape"] = list(run.data.input_shape)
    result["cache_build_seconds"], result["cached_build_seconds"] = builds
    return result


def bench_pipelines(run: Run, make_loader: Callable[[int], DataLoader], repeats: int, lightning: bool) -> dict:
    """A B C (D) interleaved on ``run``; ``make_loader(workers)`` builds B's DataLoader."""
    device = run.device
    samples = len(run.data.train) * BATCH_SIZE  # full batches only (drop_last)
    compute_batches = prepared_batches(run)

    # B's worker count: one probing epoch each (also B's warm-up).
    probes = {}
    for workers in WORKER_CHOICES:
        probe_loader = make_loader(workers)
        probes[workers] = timed(lambda: plain_epoch(run.model, run.optimizer, probe_loader, device), device)
    workers = min(probes, key=probes.get)
    loader = make_loader(workers)
    epochs = itertools.count()  # A's epoch index (what regularizers read as progress)
    pipelines: dict[str, Callable[[], object]] = {
        "A": lambda: run.train_epoch(next(epochs)),
        "B": lambda: plain_epoch(run.model, run.optimizer, loader, device),
        "C": lambda: plain_epoch(run.model, run.optimizer, compute_batches, device),
    }
    lightning_epoch = lightning_epoch_function(run.model, run.optimizer, loader, device) if lightning else None
    if lightning_epoch is not None:
        pipelines["D"] = lightning_epoch

    for name, function in pipelines.items():
        if name != "B":  # B was warmed up by the probes
            function()
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, function in pipelines.items():
            times[name].append(timed(function, device))

    results = {}
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {"pipeline": NAMES[name], "median_seconds": median,
                         "samples_per_second": samples / median, "seconds": values}
    return {
        "samples_per_epoch": samples,
        "batches_per_epoch": len(run.data.train),
        "dataloader_workers": workers,
        "dataloader_probe_seconds": {str(k): v for k, v in probes.items()},
        "pipelines": results,
        "speedup_vs_dataloader": results["B"]["median_seconds"] / results["A"]["median_seconds"],
        "overhead_vs_compute": results["A"]["median_seconds"] / results["C"]["median_seconds"],
    }


def print_table(results: dict, machine: dict) -> None:
    print(f"{'model':<8}{'pipeline':<30}{'s/epoch':>10}{'samples/s':>12}{'time / A':>10}")
    for model, result in results.items():
        a_seconds = result["pipelines"]["A"]["median_seconds"]
        for name, row in result["pipelines"].items():
            label = f"{name} {row['pipeline']}"
            if name == "B":
                label += f" ({result['dataloader_workers']}w)"
            print(f"{model:<8}{label:<30}{row['median_seconds']:>10.3f}{row['samples_per_second']:>12.0f}"
                  f"{row['median_seconds'] / a_seconds:>10.3f}")
        print(f"{model:<8}speedup_vs_dataloader (B/A) {result['speedup_vs_dataloader']:.2f}   "
              f"overhead_vs_compute (A/C) {result['overhead_vs_compute']:.3f}")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["lenet", "mlp"], help="MNIST-format cases (none: only the image folder)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions after one warm-up")
    parser.add_argument("--samples", type=int, default=60_000, help="training images (MNIST has 60,000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--imagefolder-images", type=int, default=50_000,
                        help="training JPEGs of the image-folder case (0: skip it)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    if args.samples < BATCH_SIZE or args.repeats < 1 or args.threads < 1:
        parser.error(f"--samples must be >= {BATCH_SIZE}, --repeats and --threads >= 1")
    if 0 < args.imagefolder_images < BATCH_SIZE:
        parser.error(f"--imagefolder-images must be 0 or >= {BATCH_SIZE}")

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as data_folder:
        data_root = Path(data_folder)
        # The test split is read by regbench but not timed: MNIST's 10,000, or fewer for small runs.
        write_synthetic_mnist(data_root, args.samples, num_test=min(10_000, args.samples))
        results = {model: bench_model(model, data_root, args.repeats, args.threads) for model in args.models}
    imagefolder = None
    if args.imagefolder_images:
        with tempfile.TemporaryDirectory() as folder, cache_in(Path(folder) / "cache"):
            data_root = Path(folder) / "images"
            started = time.perf_counter()
            # The test split is decoded by regbench but not timed.
            write_synthetic_image_folder(data_root, args.imagefolder_images, min(10_000, args.imagefolder_images // 5))
            writing = time.perf_counter() - started
            imagefolder = bench_imagefolder(data_root, args.repeats, args.threads)
            imagefolder["images"] = args.imagefolder_images
            imagefolder["jpeg_writing_seconds"] = writing

    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
               "torch": torch.__version__, "device": str(resolve_device("auto")),
               "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0]}
    try:
        import lightning
        machine["lightning"] = lightning.__version__
    except ImportError:
        pass
    table = dict(results)
    if imagefolder is not None:
        table["imgfold"] = imagefolder
    print_table(table, machine)
    report = {"machine": machine, "batch_size": BATCH_SIZE, "repeats": args.repeats, "samples": args.samples,
              "models": results}
    if imagefolder is not None:
        print(f"imagefolder: {args.imagefolder_images} JPEGs, cache build {imagefolder['cache_build_seconds']:.1f} s "
              f"(once), second Run.build {imagefolder['cached_build_seconds']:.1f} s")
        report["imagefolder"] = imagefolder
        report["imagefolder_speedup_vs_dataloader"] = imagefolder["speedup_vs_dataloader"]
        report["imagefolder_overhead_vs_compute"] = imagefolder["overhead_vs_compute"]
        report["imagefolder_cache_build_seconds"] = imagefolder["cache_build_seconds"]
    if "lenet" in results:  # the headline numbers
        report["speedup_vs_dataloader"] = results["lenet"]["speedup_vs_dataloader"]
        report["overhead_vs_compute"] = results["lenet"]["overhead_vs_compute"]
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
