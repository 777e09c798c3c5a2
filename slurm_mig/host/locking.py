"""One lock per node, so that concurrent slurm-mig runs never interleave their changes.

Many Slurm prologs and epilogs can start at once on one node, each wanting to change
a GPU's layout.  Each of them holds :func:`node_lock` for its whole read-plan-apply
cycle, so one finishes before the next reads the GPUs: no lost update.

The lock is an exclusive ``flock`` on a lock file.  The kernel drops it when the
holder exits, however it exits (``kill -9`` included), so a crashed run never
leaves a stale lock behind.  ``flock`` locks belong to an open file description:
the same process taking the lock twice through two calls blocks itself, so take it
once, at the top (:func:`slurm_mig.node.apply.apply_node` does).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from ..core.errors import LockBusy
from .safefs import ensure_dir, open_file

TYPE_CHECKING = False  # no `typing` at run time: the hooks take this lock on every job
if TYPE_CHECKING:
    from typing import Iterator

#: How often a waiting run retries, in seconds.
POLL_INTERVAL = 0.02


@contextlib.contextmanager
def node_lock(path: str, timeout: float | None = 60.0, *, dir_mode: int = 0o700,
              note_holder: bool = True) -> Iterator[str]:
    """Hold an exclusive lock on ``path`` for the ``with`` block; yield the path.

    The file is created ``0600`` and its directory ``dir_mode`` where missing; the
    directory must be trusted and the file a regular one (a planted symlink is refused,
    never followed: :mod:`slurm_mig.host.safefs`).  Waits up to ``timeout`` seconds (``0``:
    one try; ``None``: no limit), then raises :class:`~slurm_mig.core.errors.LockBusy` naming
    the file and how to find the holder.  ``note_holder=False`` skips writing our pid into
    the file (a truncate and a write: about 3 ms on ext4 here, which forces out the last
    holder's pid; the metrics lock, taken by every hook, does without the hint).
    """
    path = os.path.abspath(os.fspath(path))
    ensure_dir(os.path.dirname(path), dir_mode, "lock directory")
    fd = open_file(path, os.O_RDWR | os.O_CREAT, 0o600, "lock file")
    try:
        _acquire(fd, path, timeout)
        try:
            if note_holder:
                _note_holder(fd)
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: str, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            if time.monotonic() >= deadline:
                holder = _last_holder(fd)
                raise LockBusy(
                    f"another slurm-mig holds the node lock {path}{holder} and it was not "
                    f"released within {timeout:g}s; find the holder with `fuser {path}`"
                ) from err
            time.sleep(POLL_INTERVAL)


def _note_holder(fd: int) -> None:
    """Write our pid into the lock file: a hint for whoever waits next (never trusted)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _last_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid} took it last)"
    return ""
