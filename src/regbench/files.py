"""Writing files safely: whole or not at all, and one process at a time.

- ``atomic_write`` (and ``atomic_write_bytes`` / ``atomic_write_json``): a temporary file in the same
  folder, fsync, then rename, so a kill at any moment leaves the old or the new version, never a torn one (JSON that a
  report or a sweep reads while a run goes on).
- ``exclusive_lock``: one exclusive lock on a file (flock), for what only one process may do at a
  time: holding a run folder (run/folder.py: a second process is refused) or decoding an image
  cache (datasets/cache.py: the others wait, then reuse what the first wrote).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


@contextlib.contextmanager
def exclusive_lock(path: Path, when_busy: Callable[[], None], remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs. When another
    process holds it, ``when_busy()`` is called first: it raises to refuse, or returns to wait.
    ``remove``: the lock file is deleted on release (a finished run folder keeps no lock file)."""
    handle = open_locked(path, when_busy)
    try:
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(handle)  # closing releases the lock


def open_locked(path: Path, when_busy: Callable[[], None]) -> int:
    """A descriptor of ``path`` holding its lock. A holder that removed the file on release leaves
    a waiter locking a deleted file, so the lock counts only while ``path`` still names it."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in BUSY:
                    raise
                when_busy()
                fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            os.close(handle)
            raise
        if names_same_file(path, handle):
            return handle
        os.close(handle)


def names_same_file(path: Path, handle: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(handle))
    except FileNotFoundError:
        return False


# Temporaries are named ``.<file>.regbench-<random>.tmp``: a claimed folder's leftovers of a killed
# write are found by this pattern, and a user's own ``.*.tmp`` file never matches it.
TEMPORARY_PREFIX = "regbench-"
TEMPORARY_GLOB = f".*.{TEMPORARY_PREFIX}*.tmp"


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` whole or not at all: ``write(file)`` fills a temporary file in the same folder,
    which is fsynced, given the mode the user's umask gives a new file, and renamed over ``path``.
    An OSError names ``path`` (not the temporary file)."""
    try:
        write_then_rename(path, write)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def new_file_mode() -> int:
    """The mode open() gives a new file under this process's umask (mkstemp always makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_then_rename(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{TEMPORARY_PREFIX}",
                                         suffix=".tmp")
    try:
        os.chmod(temporary, new_file_mode())
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def json_ready(value: Any) -> Any:
    """Plain JSON: NaN and infinities (a diverged run) become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(json_ready(data), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode())


def state_digest(value: Any) -> str:
    """A SHA-256 of a nested state (dicts, lists, tuples, tensors, plain values): keys, types,
    every tensor's dtype, shape and bytes. Written with a checkpoint or a cache file and compared
    on load, because ``torch.load`` does not check the zip's CRCs: a flipped bit would otherwise be
    read as a valid value."""
    digest = hashlib.sha256()
    update_digest(digest, value)
    return digest.hexdigest()


def update_digest(digest: "hashlib._Hash", value: Any) -> None:
    import torch  # here: the report and the sweep summary import this module without torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():  # bytes of any dtype (bfloat16 has no numpy twin): viewed as uint8
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(f"K{key!r}".encode())
            update_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            update_digest(digest, item)
    else:
        digest.update(f"V{type(value).__name__}{value!r}".encode())
