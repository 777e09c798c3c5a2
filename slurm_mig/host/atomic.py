"""Safe writes of generated files: never a half-written gres.conf, the previous copy kept.

:func:`write_atomic` writes a temporary file in the target's directory, fsyncs it and
renames it over the target; the old content stays reachable as ``<file>.prev`` (a hard
link to the old inode, so it costs no copy and is itself swapped in atomically).  A
failure at any point leaves the target as it was.  :func:`update_file` is the
read-merge-write of a file shared by several nodes, under a lock next to the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Type

from ..core.errors import SlurmMigError
from .safefs import UnsafePath, ensure_dir, resolve_link

PREV_SUFFIX = ".prev"


class WriteFailed(SlurmMigError):
    """A generated file could not be written; the old one is unchanged (exit 3)."""

    exit_code = 3


@dataclass(frozen=True)
class WriteResult:
    path: str
    changed: bool
    prev: Optional[str]  #: the previous copy, when there was one and it changed


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in ``directory`` durable (best effort: not every FS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _keep_prev(path: str, directory: str) -> Optional[str]:
    """Make ``<path>.prev`` the current content of ``path`` (atomically); None if no file."""
    if not os.path.exists(path):
        return None
    prev = path + PREV_SUFFIX
    tmp = os.path.join(directory, f".{os.path.basename(path)}.prev.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here: copy instead
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read())
            dst.flush()
            os.fsync(dst.fileno())
    try:
        os.replace(tmp, prev)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return prev


def write_atomic(path: str, text: str, *, mode: int = 0o644, keep_prev: bool = True,
                 durable: bool = True, follow: bool = True) -> WriteResult:
    """Replace ``path`` with ``text`` all at once; unchanged content is not rewritten.

    ``durable=False`` (the simulator's state, rewritten on every driver call) skips the
    unchanged-content check and the directory fsync; the rename is still atomic.

    ``path`` may be a symbolic link that root or this user made (a gres.conf shared by
    several nodes): with ``follow`` the write lands on its target, atomically in the
    target's directory, and the link stays; a link anyone else made is refused.  State
    files pass ``follow=False``: a link in their place is replaced, never written through.
    The directory must be trusted (:mod:`slurm_mig.host.safefs`); a missing one is made 0755.
    The file gets exactly ``mode``, whatever the umask.
    """
    path = resolve_link(path, "file") if follow else os.path.abspath(path)
    directory = os.path.dirname(path)
    data = text.encode()
    ensure_dir(directory, 0o755, f"directory of {os.path.basename(path)}")
    if durable and _same_content(path, data):
        return WriteResult(path, False, None)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise WriteFailed(f"cannot write in {directory}: {err.strerror}; {path} is unchanged") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        prev = _keep_prev(path, directory) if keep_prev else None
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise WriteFailed(f"cannot write {path}: {err.strerror or err}; the file is unchanged"
                              ) from err
        raise
    if durable:
        fsync_dir(directory)
    return WriteResult(path, True, prev)


def _same_content(path: str, data: bytes) -> bool:
    """Whether ``path`` (a regular file, never followed if a link) holds exactly ``data``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as err:
        if err.errno == errno.ELOOP:
            return False  # a link in a state file's place: replaced
        raise WriteFailed(f"cannot read {path}: {err.strerror}; check the path and permissions") from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(f"{path} is not a regular file; remove it (slurm-mig writes its own)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(len(data) + 1) == data
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: dict, *, mode: int = 0o600, durable: bool = True) -> None:
    """A JSON state file (job records, journal, simulator): atomic, no ``.prev``, never
    written through a symlink."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=mode, keep_prev=False,
                 durable=durable, follow=False)


def lock_path_for(path: str) -> str:
    """The lock next to a shared file: ``<dir>/.<name>.lock``."""
    path = os.path.abspath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


def update_file(path: str, transform: Callable[[str], str], *, mode: int = 0o644,
                lock_timeout: Optional[float] = 60.0) -> WriteResult:
    """Read ``path`` ('' when absent), write ``transform(text)``, all under the file's lock."""
    from .locking import node_lock

    path = resolve_link(path, "file")  # a shared file behind a link: lock beside the file itself
    with node_lock(lock_path_for(path), lock_timeout, dir_mode=0o755):
        return write_atomic(path, transform(read_text(path)), mode=mode)


def preview_update(path: str, transform: Callable[[str], str]) -> WriteResult:
    """What :func:`update_file` would do, without writing or locking: ``changed`` says
    whether ``transform`` would change the file (``--write --dry-run``; Ansible's check mode)."""
    path = resolve_link(path, "file")
    text = read_text(path)
    return WriteResult(path=path, changed=transform(text) != text, prev=None)


def read_text(path: str, error: Type[SlurmMigError] = WriteFailed) -> str:
    """``path``'s text, '' when absent; any other failure (unreadable, not UTF-8) raises
    ``error`` (default :class:`WriteFailed`) as one line naming the file, so each caller keeps
    its own exit code (gres.conf readers raise GresConfError)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read {path}: {err}; check the file") from err

