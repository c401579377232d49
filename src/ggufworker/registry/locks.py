"""Inter-process file locks that leave no file behind.

A lock is a file under ``staging/locks/`` held with ``flock``. The holder deletes the file
before it lets go; a process that was waiting on the deleted file sees that the path no longer
names the file it locked and tries again, so two processes never both believe they hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 30.0


def lock_path(root: Path, key: str) -> Path:
    """The lock file for ``key`` (any text: a target path, a partial's key) under ``root``."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return root / f"{digest}.lock"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _open_locked(path: Path, *, blocking: bool, what: str) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    waited_since: float | None = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                os.close(fd)
                return None
            if waited_since is None:
                waited_since = time.monotonic()
                logger.info("waiting for another process to finish %s", what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            if waited_since is not None:
                logger.debug("got %s after %.1fs", what, time.monotonic() - waited_since)
            return fd
        os.close(fd)  # the holder removed the file while we waited: lock the new one


@contextlib.contextmanager
def file_lock(path: Path, *, what: str = "a download") -> Iterator[None]:
    """Hold the exclusive lock ``path`` for the block, waiting for another holder to finish.

    The lock file is removed when the block ends.
    """
    fd = _open_locked(path, blocking=True, what=what)
    assert fd is not None
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Like :func:`file_lock` without waiting: yields False when another process holds it."""
    fd = _open_locked(path, blocking=False, what="")
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
