"""One exclusive lock on a file (flock), for what only one process may do at a time: holding a
run folder (run_folder.py: a second process is refused) or decoding an image cache
(datasets/cache.py: the others wait, then reuse what the first wrote)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator

BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


@contextlib.contextmanager
def exclusive_lock(path: Path, when_busy: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs. When another
    process holds it, ``when_busy()`` is called first: it raises to refuse, or returns to wait."""
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in BUSY:
                raise
            when_busy()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock
