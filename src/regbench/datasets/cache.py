"""Decode once, train from memory: decoded uint8 images of a file-based dataset in a cache file.

Decoding JPEGs every epoch in DataLoader workers costs far more than training a small model on
them. So the images of a folder (or of Oxford-IIIT Pet) are decoded once, in parallel worker
processes, into one file of uint8 tensors; every later run (and every job of a sweep) loads it in
seconds and trains through the same in-memory path as CIFAR (``TensorBatches``).

- **Where**: ``$REGBENCH_CACHE``, else ``$XDG_CACHE_HOME/regbench`` (default ``~/.cache/regbench``):
  a user cache, since the data folder may be read-only or shared. Delete it to reclaim the space.
- **Key**: a SHA-256 of the cache format version, the dataset name, the decode setting (the stored
  size) and, for every image in order, its path, size in bytes, modification time (ns) and a hash
  of its first and last ``END_BLOCK`` bytes (``file_ends``). An added, removed, renamed or touched
  file, another size, or a rewrite that changes either end makes a new key (a new file). The
  ends catch a rewrite whose old modification time was restored (``os.utime``, ``cp -p``,
  ``rsync -t``): they hold all of a file up to 8 KiB and, in a PNG, the zlib checksum of all its
  pixels. Not detected: a change confined to the middle of a larger file that keeps its size and
  modification time (an in-place edit of a JPEG's middle, a bit flipped on disk); delete the cache
  file, or use ``dataset.in_memory=false``, after such an edit. Hashing all of every image would
  read the whole dataset from disk on every run, which the cache exists to avoid.
- **Checked on load**: the file holds a SHA-256 of its payload (``files.state_digest``), compared
  on every load, since ``torch.load`` does not check the zip's CRCs. A file that does not match
  (or is cut short) is decoded again under the lock, with one warning; a file that fails
  ``torch.load``'s ``weights_only`` check (damaged, or not regbench's: it asks for more than
  tensors) is refused in one line and left in place for the user to delete.
- **Atomic and shared**: the file is written to a temporary name in the same folder and renamed
  (``os.replace``), so a reader sees a complete file or none. Builders take an exclusive ``flock``
  on ``<file>.lock`` and look for the file again once they hold it: when several jobs of a sweep
  start at once, one decodes and the others wait and load its file. A write that fails (a full
  disk) is one line, and the log says the file was written only once it is."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from regbench.config import ConfigError, one_line
from regbench.files import atomic_write, exclusive_lock, state_digest
from regbench.machine import available_cores

log = logging.getLogger(__name__)

# Bump when what a cache file holds, or how images are decoded into it, changes.
CACHE_VERSION = 2
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
    ends: str  # file_ends: a hash of the first and last END_BLOCK bytes
    inode: tuple[int, int]  # (st_dev, st_ino) of the file a path leads to: one image per real file


# Bytes hashed at each end of every image for the key (module docstring: what this detects).
END_BLOCK = 4096


def file_ends(descriptor: int, size: int) -> str:
    """A SHA-256 of the first and last END_BLOCK bytes of an open file of ``size`` bytes (all of
    it up to 2 x END_BLOCK). pread on the descriptor: a buffered Python file costs more than this."""
    ends = hashlib.sha256(os.pread(descriptor, END_BLOCK, 0))
    if size > END_BLOCK:
        ends.update(os.pread(descriptor, END_BLOCK, max(END_BLOCK, size - END_BLOCK)))
    return ends.hexdigest()


def image_file(path: str) -> ImageFile:
    """One image's size, mtime, ends and inode, from one open (symbolic links followed)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        status = os.fstat(descriptor)
        ends = file_ends(descriptor, status.st_size)
    finally:
        os.close(descriptor)
    return ImageFile(path, status.st_size, status.st_mtime_ns, ends, (status.st_dev, status.st_ino))


def listing_key(name: str, setting: Any, splits: dict[str, Sequence[ImageFile]]) -> str:
    """The cache key: format version, dataset, decode setting and every file's path, size, mtime
    and ends."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, name, setting]).encode())
    for split, files in sorted(splits.items()):
        digest.update(f"\0{split}\0{len(files)}".encode())
        for file in files:
            digest.update(f"\0{file.path}\0{file.size}\0{file.mtime_ns}\0{file.ends}".encode())
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


class ImageCacheError(ConfigError):
    """The image cache cannot be written, or holds a file regbench did not write."""


def unwritable(path: Path, error: BaseException) -> ImageCacheError:
    return ImageCacheError(f"cannot write the image cache {path} ({one_line(error)}); set "
                           f"REGBENCH_CACHE to a writable folder with space, or dataset.in_memory=false")


def refused_file(path: Path, error: pickle.UnpicklingError) -> ImageCacheError:
    """One line for a file that fails ``torch.load``'s ``weights_only`` check: it asks for more than
    tensors and plain values (a file planted there, or a damaged one). It is left where it is."""
    # torch's message is a page of advice; what it found follows "WeightsUnpickler error:".
    found = str(error).partition("WeightsUnpickler error:")[2].strip().split(". ")[0]
    return ImageCacheError(f"the image cache {path} fails torch.load's weights_only check"
                           f"{f' ({one_line(found)})' if found else ''}: damaged, or not written by "
                           f"regbench; delete it and rerun")


def payload_digest(content: dict[str, Any]) -> str:
    """``files.state_digest`` of a cache file's content without its own digest."""
    return state_digest({key: value for key, value in content.items() if key != "digest"})


def read_cache(path: Path, key: str, warn: bool = True) -> dict[str, Any] | None:
    """The cache file's content when it exists, is the one for ``key`` and matches its digest, else
    None (a damaged file with one warning, unless ``warn`` is false). Memory-mapped: pages are read
    when used (the digest reads them all once), and a split that is subset is copied once."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise refused_file(path, error) from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        # A file cut short (disk full, killed copy) or from another torch version: decode again.
        if warn:
            log.warning("ignoring unreadable image cache %s (%s); decoding again", path,
                        one_line(error))
        return None
    if not isinstance(content, dict) or content.get("key") != key:
        return None
    if content.get("digest") != payload_digest(content):
        if warn:
            log.warning("ignoring the image cache %s: its content does not match its checksum "
                        "(a damaged file); decoding again", path)
        return None
    return content


def write_cache(path: Path, content: dict[str, Any]) -> None:
    try:
        atomic_write(path, lambda file: torch.save(content, file))
    # e.g. the disk filled up: torch.save's stream writer raises RuntimeError, not OSError; the
    # temporary file is removed, and an older file of another key is untouched.
    except (OSError, RuntimeError) as error:
        raise unwritable(path, error) from None


def load_or_build(name: str, path: Path, key: str,
                  build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The cache content for ``key`` when the caller's ``read_cache`` found none: built by ``build``
    under the lock and written, unless another process wrote it meanwhile. Returns (content,
    whether this process built it)."""
    with exclusive(path):
        # Another process may have built it while we waited (a damaged file was reported already).
        content = read_cache(path, key, warn=False)
        if content is not None:
            return content, False
        started = time.perf_counter()
        content = {**build(), "key": key, "version": CACHE_VERSION}
        content["digest"] = payload_digest(content)
        write_cache(path, content)
    images = [value for value in content.values() if isinstance(value, torch.Tensor)]
    log.info("%s: decoded %d images once into %s (%.0f MB, %.1f s); later runs load it", name,
             sum(len(tensor) for tensor in images), path,
             sum(tensor.numel() for tensor in images) / 1e6, time.perf_counter() - started)
    # Read back memory-mapped, so the decoded copy can be freed; just written, so not hashed again.
    return torch.load(path, mmap=True, weights_only=True), True


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
