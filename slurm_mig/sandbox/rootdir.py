"""The sandbox's root directory: made fresh by ``up``, marked as ours, checked before any use.

Everything under the root is run or read by root: slurmd runs ``prolog.d/*`` and sources
``slurm-mig.env``, the Slurm clients load plugins from the ``slurm.conf`` there, ``down
--purge`` removes the tree.  So a root that another user made, or could change, must never
be used, not even looked into (docs/sandbox.md, "The root directory"):

* a root that does not exist is made by :func:`make_root`: its missing parents 0755 in a
  trusted parent (:mod:`slurm_mig.host.safefs`; a sticky one such as ``/var/tmp`` is fine), the
  root 0755, then at once the marker file :data:`MARKER` (0600, ``O_CREAT|O_EXCL|O_NOFOLLOW``);
* a root that exists is used only if :func:`check_root` passes: a real directory (not a
  symbolic link), owned by root (or the user slurm-mig runs as), not writable by group or
  others, trusted up to ``/``, holding our marker (a regular file of ours, opened with
  ``O_NOFOLLOW``).  Otherwise it is refused with one line, and nothing in it is changed.

Refusals: :class:`~slurm_mig.host.safefs.UnsafePath` (exit 3) when someone else made or can change
the path (owner, mode, a link, a parent, the marker); :class:`~slurm_mig.core.errors.InputError`
(exit 2) when the path is simply not a sandbox (a file, a directory of root's without the
marker): the wrong ``--root``.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..core.errors import InputError
from ..host import safefs
from ..host.safefs import UnsafePath

#: Marks a directory as a sandbox root made by ``slurm-mig sandbox up``.
MARKER = ".slurm-mig-sandbox"

FIX_UP = "pick another --root (a path that does not exist yet: up makes it) or remove it"
FIX_OTHERS = "not touching it; pick the --root that `slurm-mig sandbox up` made"


def marker_path(root: str) -> str:
    return os.path.join(root, MARKER)


def make_root(root: str) -> str:
    """Create the sandbox root ``root`` (it must not exist) and its marker; return its path.

    Raises :class:`UnsafePath` when a parent is not trusted, or when the directory (or its
    marker) appeared meanwhile and is not ours.
    """
    root = os.path.abspath(root)
    # Makes the missing parents 0755 and the root 0755 (exact, whatever the umask), after a
    # trust walk of the deepest existing parent; then checks the root like any existing one:
    # a directory that another user slipped in between is refused here, untouched.
    safefs.ensure_dir(root, 0o755, "sandbox root")
    try:
        fd = safefs.open_file(marker_path(root), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600,
                              "sandbox marker")
    except UnsafePath as err:  # EEXIST: another `up` made the same root at the same time
        raise UnsafePath(f"--root {root} was made by another process just now; "
                         f"{FIX_UP}") from err
    try:
        os.write(fd, (f"slurm-mig sandbox root, made by `slurm-mig sandbox up` (uid "
                      f"{os.geteuid()}) at {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                      f"`slurm-mig sandbox down --purge` removes it\n").encode())
    finally:
        os.close(fd)
    return root


def check_root(root: str, fix: str = FIX_UP) -> str:
    """Check that ``root`` is a sandbox root that ``up`` made (module doc); return its path.

    Reads only: whatever it finds, nothing is changed.  Raises FileNotFoundError (unchanged)
    when ``root`` does not exist; :class:`UnsafePath` (exit 3) or :class:`InputError`
    (exit 2) naming the owner, mode or missing marker and ``fix`` otherwise.
    """
    root = os.path.abspath(root)
    st = os.lstat(root)  # FileNotFoundError: the caller decides
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"--root {root} is a symbolic link (owned by uid {st.st_uid}); the "
                         f"sandbox root must be a directory it made itself: {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"--root {root} is not a directory; {fix}")
    if st.st_uid not in safefs.trusted_owners():
        raise UnsafePath(f"--root {root} is owned by uid {st.st_uid} (mode {mode:04o}), not "
                         f"by root: another user made it and may have put anything in it; "
                         f"{fix}")
    if mode & 0o022:
        raise UnsafePath(f"--root {root} has mode {mode:04o}: others can write in it; {fix}")
    safefs.check_dir(root, "sandbox root")  # every parent up to / as well
    _check_marker(root, fix)
    return root


def _check_marker(root: str, fix: str) -> None:
    path = marker_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"--root {root} holds no sandbox that `slurm-mig sandbox up` made (no "
                         f"{MARKER} in it; a sandbox of an older slurm-mig: docs/sandbox.md); "
                         f"{fix}") from None
    except OSError as err:
        why = "a symbolic link" if err.errno == errno.ELOOP else (err.strerror or str(err))
        raise UnsafePath(f"--root {root}: its marker {MARKER} is {why}, not one that up made; "
                         f"{fix}") from err
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"--root {root}: its marker {MARKER} is not a regular file, not one "
                         f"that up made; {fix}")
    if st.st_uid not in safefs.trusted_owners():
        raise UnsafePath(f"--root {root}: its marker {MARKER} is owned by uid {st.st_uid}, not "
                         f"by root; {fix}")


__all__ = ["MARKER", "check_root", "make_root", "marker_path"]
