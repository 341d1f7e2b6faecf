"""What the image cache's checks cost (datasets/cache.py): the payload digest verified on every load,
and the cache key's reading of every image's first and last blocks.

Builds, in a temporary folder, N JPEG images (random pixels, so they do not compress to nothing)
and a cache file of N decoded images of 3 x S x S, then interleaves, over several repetitions:
  load         torch.load(mmap=True) alone (the pages are read later, when used);
  load+copy    and one copy of every byte (what the training split's subset costs a run anyway);
  load+digest  read_cache: torch.load(mmap=True) and the SHA-256 of the payload (files.state_digest);
  stat         os.stat of every image (the key's input before the ends were added);
  open+ends    cache.image_file of every image (open, fstat, the first and last END_BLOCK bytes);
and reports medians. Warm page cache: the data is in memory, as on a second run.

    python scripts/bench_image_cache.py [--images 7000] [--size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regbench.datasets import cache


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def write_images(folder: Path, count: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def write_cache_file(path: Path, count: int, size: int) -> str:
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8)
    content = {"train": images, "key": "bench", "version": cache.CACHE_VERSION}
    content["digest"] = cache.payload_digest(content)
    cache.write_cache(path, content)
    return "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=7000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), args.images, args.size)
        cache_path = Path(folder) / "cache.pt"
        key = write_cache_file(cache_path, args.images, args.size)
        cases = {
            "load": lambda: torch.load(cache_path, mmap=True, weights_only=True),
            "load+copy": lambda: torch.load(cache_path, mmap=True, weights_only=True)["train"].clone(),
            "load+digest": lambda: cache.read_cache(cache_path, key),
            "stat": lambda: [os.stat(path) for path in paths],
            "open+ends": lambda: [cache.image_file(path) for path in paths],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, case in cases.items():
                times[name].append(timed(case))
        megabytes = cache_path.stat().st_size / 1e6
        mean_file = sum(os.path.getsize(path) for path in paths) / len(paths) / 1e3
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; cache {megabytes:.0f} MB ({args.images} x 3x{args.size}x{args.size}); "
          f"{args.images} JPEGs of {mean_file:.1f} kB on average")
    for name, values in times.items():
        print(f"{name:12s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, "
              f"max {max(values):.3f}, {args.repeats} repeats)")


if __name__ == "__main__":
    main()
