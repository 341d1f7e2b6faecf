"""Decode once, train from memory: decoded uint8 images of a file-based dataset in a cache file.

Decoding JPEGs every epoch in DataLoader workers costs far more than training a small model on
them. So the images of a folder (or of Oxford-IIIT Pet) are decoded once, in parallel worker
processes, into one file of uint8 tensors; every later run (and every job of a sweep) loads it in
seconds and trains through the same in-memory path as CIFAR (``TensorBatches``).

- **Where**: ``$REGBENCH_CACHE``, else ``$XDG_CACHE_HOME/regbench`` (default ``~/.cache/regbench``):
  a user cache, since the data folder may be read-only or shared. Delete it to reclaim the space.
- **Key**: a SHA-256 of the cache format version, the dataset name, the decode setting (the stored
  size) and, for every image in order, its path, size in bytes and modification time (ns). Any
  added, removed, renamed, rewritten or touched file, or another size, makes a new key (a new
  file), so a stale cache is never read.
- **Atomic and shared**: the file is written to a temporary name in the same folder and renamed
  (``os.replace``), so a reader sees a complete file or none. Builders take an exclusive ``flock``
  on ``<file>.lock`` and look for the file again once they hold it: when several jobs of a sweep
  start at once, one decodes and the others wait and load its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from regbench.config import ConfigError, one_line
from regbench.files import atomic_write, exclusive_lock
from regbench.machine import available_cores

log = logging.getLogger(__name__)

# Bump when what a cache file holds, or how images are decoded into it, changes.
CACHE_VERSION = 1
# Images per task sent to a worker: large enough that pickling is a small share of the work,
# small enough that the progress bar moves and the workers finish together.
CHUNK = 256


def cache_dir() -> Path:
    """``$REGBENCH_CACHE``, else the XDG user cache (``~/.cache/regbench``)."""
    if os.environ.get("REGBENCH_CACHE"):
        return Path(os.environ["REGBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "regbench"


def memory_budget_bytes(budget_gb: float | None) -> int:
    """``dataset.memory_budget_gb`` in bytes; null: a quarter of physical RAM, which leaves room for
    the model, the optimizer, a second copy of a split while it is subset, and other processes."""
    if budget_gb is not None:
        return int(budget_gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


@dataclass(frozen=True)
class ImageFile:
    path: str
    size: int
    mtime_ns: int


def listing_key(name: str, setting: Any, splits: dict[str, Sequence[ImageFile]]) -> str:
    """The cache key: format version, dataset, decode setting and every file's path, size, mtime."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, name, setting]).encode())
    for split, files in sorted(splits.items()):
        digest.update(f"\0{split}\0{len(files)}".encode())
        for file in files:
            digest.update(f"\0{file.path}\0{file.size}\0{file.mtime_ns}".encode())
    return digest.hexdigest()


def cache_file(name: str, key: str) -> Path:
    return cache_dir() / f"{name}-{key[:32]}.pt"


def lock_file(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file; say so when another process holds it."""
    lock = lock_file(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch(exist_ok=True)
    except OSError as error:
        raise unwritable(path, error) from None
    with exclusive_lock(lock, when_busy=lambda: log.info(
            "waiting for another process that is decoding images into %s", path)):
        yield


def unwritable(path: Path, error: OSError) -> ConfigError:
    return ConfigError(f"cannot write the image cache {path} ({one_line(error)}); set REGBENCH_CACHE "
                       f"to a writable folder with space, or dataset.in_memory=false")


def read_cache(path: Path, key: str) -> dict[str, Any] | None:
    """The cache file's content when it exists and is the one for ``key``, else None. Memory-mapped:
    pages are read when used, and a split that is subset is copied once."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, mmap=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        # A file cut short (disk full, killed copy) or from another torch version: decode again.
        log.warning("ignoring unreadable image cache %s (%s)", path, " ".join(str(error).split()))
        return None
    if not isinstance(content, dict) or content.get("key") != key:
        return None
    return content


def load_or_build(path: Path, key: str, build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The cache content for ``key``, built by ``build`` (under the lock) when missing.
    Returns (content, whether this process built it)."""
    content = read_cache(path, key)
    if content is not None:
        return content, False
    with exclusive(path):
        content = read_cache(path, key)  # another process may have built it while we waited
        if content is not None:
            return content, False
        content = {**build(), "key": key, "version": CACHE_VERSION}
        try:
            atomic_write(path, lambda file: torch.save(content, file))
        except OSError as error:  # e.g. the disk filled up: nothing half-written is left
            raise unwritable(path, error) from None
    return read_cache(path, key) or content, True


# --- parallel decoding -------------------------------------------------------------------------

def single_threaded() -> None:
    """Worker initializer: one torch thread per worker process (as DataLoader workers), so N
    workers use N cores, not N x cores."""
    torch.set_num_threads(1)


def run_chunk(function: Callable[[str], Any], items: Sequence[str]) -> Any:
    """``function`` of every item; tensors come back stacked as ONE numpy array: torch sends each
    tensor between processes as a shared-memory file descriptor, and thousands of them exhaust
    the descriptors ("received 0 items of ancdata"), while an array is pickled as bytes."""
    results = [function(item) for item in items]
    if results and all(isinstance(result, torch.Tensor) for result in results):
        return torch.stack(results).numpy()
    return results


def pool_context() -> multiprocessing.context.BaseContext:
    # fork on Linux: workers start at once, without importing torch again (as DataLoader's workers).
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def parallel_map(function: Callable[[str], Any], items: Sequence[str], description: str,
                 workers: int | None = None) -> Iterator[tuple[int, Any]]:
    """``function`` over ``items`` in worker processes, with a progress bar (on a terminal).
    Yields (index of the chunk's first item, results) as chunks finish. An exception raised by
    ``function`` (e.g. a CorruptDatasetError naming an image) stops the pool and is raised here."""
    starts = range(0, len(items), CHUNK)
    workers = min(workers or available_cores(), len(starts))
    with tqdm(total=len(items), desc=description, unit="img", disable=None, leave=False) as bar:
        if workers <= 1:  # one core or one chunk: a pool would only add start-up time
            for start in starts:
                results = run_chunk(function, items[start:start + CHUNK])
                bar.update(len(results))
                yield start, results
            return
        with ProcessPoolExecutor(workers, mp_context=pool_context(),
                                 initializer=single_threaded) as pool:
            pending = {pool.submit(run_chunk, function, items[start:start + CHUNK]): start
                       for start in starts}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        start = pending.pop(future)
                        results = future.result()  # re-raises the worker's exception
                        bar.update(len(results))
                        yield start, results
            finally:
                for future in pending:
                    future.cancel()


def decode_all(decode: Callable[[str], torch.Tensor], paths: Sequence[str],
               shape: tuple[int, int, int], description: str) -> torch.Tensor:
    """Every image decoded by ``decode`` (uint8 [C, H, W] of ``shape``) into one uint8 [N, C, H, W]."""
    images = torch.empty((len(paths), *shape), dtype=torch.uint8)
    for start, decoded in parallel_map(decode, paths, description):
        images[start:start + len(decoded)] = torch.from_numpy(decoded)
    return images


def timed_build(name: str, path: Path, build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """``build`` with one log line saying what it decoded, where to, and how long it took."""

    def logged() -> dict[str, Any]:
        started = time.perf_counter()
        content = build()
        images = [value for value in content.values() if isinstance(value, torch.Tensor)]
        count = sum(len(tensor) for tensor in images)
        size = sum(tensor.numel() for tensor in images) / 1e6
        log.info("%s: decoded %d images once into %s (%.0f MB, %.1f s); later runs load it",
                 name, count, path, size, time.perf_counter() - started)
        return content

    return logged
