"""Root-safe file access: paths that no other local user can redirect, files made with exact modes.

slurm-mig runs as root (slurmd's prolog and epilog, timers, the sandbox) and keeps its state
in directories (``paths.state_dir``, ``paths.slurm_conf_dir``, a sandbox root) that an admin
configures.  Root following a path that another user can change is the classic way to lose a
machine: a planted ``node.lock -> /etc/shadow`` is truncated by the next lock, a planted
``jobs -> /etc`` is chmodded and written into.  Every open, lock and directory slurm-mig
makes goes through here, so one module holds the rules (docs/security.md):

* **A trusted directory** is one that only a trusted user can change, all the way up: every
  component from ``/`` is owned by root or by the user slurm-mig runs as, and none is
  writable by group or others, except a sticky ancestor (``/tmp``, ``/var/tmp``), where
  others cannot rename or remove what a trusted user made.  The directory itself must not be
  group/world-writable even when sticky (others could create names in it).  Symbolic links
  on the way are followed only when a trusted user owns them; the target is checked the same
  way.  A check passes once and stays true: only trusted users can change what it looked at.
* **Files are opened without following a final symlink** (``O_NOFOLLOW``), must be regular
  files owned by a trusted user, and get their mode set with ``fchmod`` whatever the umask.
* **Directories are created one component at a time** (no recursion: a very deep path is
  an error, not a ``RecursionError``), each with its mode set explicitly.

Stdlib only, and no ``typing`` at run time: the hooks import this on every job.
"""

from __future__ import annotations

import errno
import os
import stat

from ..core.errors import EXIT_CONFIG, SlurmMigError

TYPE_CHECKING = False  # no `typing` at run time: the hooks start on every job
if TYPE_CHECKING:
    from typing import Iterable

#: Symbolic links followed while checking one path, as the kernel's own limit (ELOOP).
MAX_LINKS = 40
#: Components of a path we walk; deeper paths are refused (PATH_MAX allows ~2048).
MAX_DEPTH = 256
#: Largest state file read (job records, journal, snapshots are a few KiB).
MAX_STATE_BYTES = 16 << 20


class UnsafePath(SlurmMigError):
    """A path another user could redirect or change, or not what it must be (exit 3).

    A configuration problem of the host: the fix is an owner, a mode or a path."""

    exit_code = EXIT_CONFIG


def trusted_owners() -> frozenset:
    """Users whose files root may follow: root, and the user slurm-mig runs as."""
    return frozenset((0, os.geteuid()))


def _fix(path: str, st: os.stat_result, owners) -> str:
    who = "root" if owners == frozenset((0,)) else f"root or uid {os.geteuid()}"
    return (f"{path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; "
            f"only {who} may own it and no one else may write it: "
            f"`chown root: {path}; chmod go-w {path}` (or pick another path)")


def check_dir(path: str, what: str = "directory", owners: Iterable[int] | None = None) -> str:
    """Check that ``path`` is a trusted directory (module doc); return its real path.

    Raises :class:`UnsafePath` naming the component at fault and the fix; FileNotFoundError
    (unchanged) when a component is missing, so callers may create it.
    """
    owners = frozenset(owners) if owners is not None else trusted_owners()
    real = _walk(os.path.abspath(os.fspath(path)), what, owners)
    st = os.stat(real)
    if st.st_mode & 0o022:
        raise UnsafePath(f"{what} {path}: {_fix(real, st, owners)}")
    return real


def _walk(path: str, what: str, owners) -> str:
    """Resolve ``path`` component by component, checking each as the module doc says."""
    todo = [p for p in path.split("/") if p][::-1]
    if len(todo) > MAX_DEPTH:
        raise UnsafePath(f"{what} {path[:80]}...: more than {MAX_DEPTH} path components; "
                         f"use a shorter path")
    cur = "/"
    st = os.lstat(cur)
    _check_owner(what, path, cur, st, owners)
    links = 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except OSError as err:
            if err.errno == errno.ENOTDIR:
                raise UnsafePath(f"{what} {path}: {cur} is not a directory; check the path "
                                 f"(paths.* in the config)") from err
            raise
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise UnsafePath(f"{what} {path}: too many symbolic links; check the path")
            if st.st_uid not in owners:
                raise UnsafePath(f"{what} {path}: {nxt} is a symbolic link owned by uid "
                                 f"{st.st_uid}; root does not follow it: remove it")
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            todo.extend(p for p in target.split("/")[::-1] if p)
            if len(todo) > MAX_DEPTH:
                raise UnsafePath(f"{what} {path}: more than {MAX_DEPTH} path components")
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{what} {path}: {nxt} is not a directory; check the path "
                             f"(paths.* in the config)")
        _check_owner(what, path, nxt, st, owners)
        cur = nxt
    return cur


def _check_owner(what: str, path: str, comp: str, st: os.stat_result, owners) -> None:
    """A component on the way: trusted owner; group/world-writable only when sticky."""
    if st.st_uid not in owners or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        raise UnsafePath(f"{what} {path}: {_fix(comp, st, owners)}")


def ensure_dir(path: str, mode: int = 0o700, what: str = "directory", *,
               owners: Iterable[int] | None = None, tighten: bool = False,
               parent_mode: int = 0o755) -> str:
    """Make ``path`` a trusted directory, creating what is missing; return the path.

    Missing components are made one by one, the last with ``mode``, the others with
    ``parent_mode``, each set with ``chmod`` whatever the umask.  ``tighten`` also takes an
    existing last directory down to ``mode`` (for directories only slurm-mig uses, such as
    ``jobs/``); otherwise an existing one keeps its mode, if it is safe.
    """
    owners = frozenset(owners) if owners is not None else trusted_owners()
    path = os.path.abspath(os.fspath(path))
    try:
        check_dir(path, what, owners)
    except FileNotFoundError:
        _make(path, mode, parent_mode, what, owners)
        check_dir(path, what, owners)
        return path
    except OSError as err:
        raise _os_error(what, path, err) from err
    if tighten:
        _set_mode(path, mode, what)
    return path


def _make(path: str, mode: int, parent_mode: int, what: str, owners) -> None:
    """Create the missing tail of ``path`` below its deepest existing ancestor, which must
    be trusted up to ``/`` (sticky allowed: what we make there is ours, and checked after)."""
    missing = []
    cur = path
    while True:
        try:
            os.lstat(cur)
        except FileNotFoundError:
            missing.append(cur)
            parent = os.path.dirname(cur)
            if parent == cur or len(missing) > MAX_DEPTH:
                raise UnsafePath(f"{what} {path[:80]}: cannot create it; use a shorter path") from None
            cur = parent
            continue
        except OSError as err:
            raise _os_error(what, path, err) from err
        break
    try:
        _walk(cur, what, owners)  # an ancestor may be sticky (/var/tmp): what we make is ours
    except FileNotFoundError as err:  # a dangling trusted link on the way
        raise UnsafePath(f"{what} {path}: {cur} leads nowhere; check the path") from err
    except OSError as err:
        raise _os_error(what, path, err) from err
    for d in reversed(missing):
        m = mode if d == path else parent_mode
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass  # made by a run beside us: checked below like any existing one
        except OSError as err:
            raise _os_error(what, d, err) from err
        else:
            _set_mode(d, m, what)


def _set_mode(path: str, mode: int, what: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise _os_error(what, path, err) from err
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _os_error(what: str, path: str, err: OSError) -> UnsafePath:
    if err.errno == errno.ELOOP:
        return UnsafePath(f"{what} {path} is a symbolic link; root does not follow it here: "
                          f"remove it (slurm-mig makes its own)")
    if err.errno == errno.ENAMETOOLONG:
        return UnsafePath(f"{what} {path[:80]}...: name too long; use a shorter path")
    reason = err.strerror or str(err)
    return UnsafePath(f"{what} {path}: {reason}; check the path and its permissions")


def open_file(path: str, flags: int, mode: int = 0o600, what: str = "file", *,
              owners: Iterable[int] | None = None) -> int:
    """``os.open`` that never follows a final symlink and only returns a regular file
    owned by a trusted user; a file it may create gets exactly ``mode``.  Returns the fd."""
    owners = frozenset(owners) if owners is not None else trusted_owners()
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise _os_error(what, path, err) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{what} {path} is not a regular file; remove it (slurm-mig "
                             f"makes its own)")
        if st.st_uid not in owners:
            raise UnsafePath(f"{what} {path}: {_fix(path, st, owners)}")
        if flags & os.O_CREAT and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(path: str, what: str = "file", *, limit: int = MAX_STATE_BYTES,
              owners: Iterable[int] | None = None) -> bytes | None:
    """A state file's bytes (None when it does not exist), read as :func:`open_file` opens."""
    try:
        fd = open_file(path, os.O_RDONLY, what=what, owners=owners)
    except FileNotFoundError:
        return None
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise UnsafePath(f"{what} {path} is larger than {limit} bytes; it is not one "
                                 f"of slurm-mig's: move it aside")
            chunks.append(chunk)
    finally:
        os.close(fd)


def resolve_link(path: str, what: str = "file", *, owners: Iterable[int] | None = None) -> str:
    """Where a write to ``path`` should land: ``path`` itself, or, when it is a symbolic link
    a trusted user made (a gres.conf shared between nodes, say), its final target, whose
    directory must be trusted.  A link owned by anyone else is refused."""
    owners = frozenset(owners) if owners is not None else trusted_owners()
    path = os.path.abspath(os.fspath(path))
    for _ in range(MAX_LINKS):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path
        except OSError as err:
            raise _os_error(what, path, err) from err
        if not stat.S_ISLNK(st.st_mode):
            return path
        if st.st_uid not in owners:
            raise UnsafePath(f"{what} {path} is a symbolic link owned by uid {st.st_uid}; root "
                             f"does not write through it: remove it or make root own it")
        target = os.readlink(path)
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        check_dir(os.path.dirname(path), f"{what}'s directory", owners)
    raise UnsafePath(f"{what} {path}: too many symbolic links; check the path")


def write_file(path: str, data: bytes, mode: int, *, uid: int | None = None,
               durable: bool = False, keep_same: bool = True) -> bool:
    """Replace ``path`` with ``data`` atomically; True when written.

    The small writer of the hooks and the files they keep (the fast path's state files,
    the TaskProlog's env file, dcgm-exporter's mapping files); :mod:`.atomic` is the one
    for generated Slurm files (``.prev`` kept, locks) and costs the hooks its imports.

    A new temporary file ``.<name>.<pid>.tmp`` in ``path``'s directory (made with
    ``O_EXCL``, never through a link; one left by a killed run of the same pid is removed
    first) gets ``data``, the owner ``uid`` when given and exactly ``mode`` whatever the
    umask, then is renamed over ``path``; on any failure it is removed and ``path`` is as it
    was.  ``durable``: the file is fsynced before the rename and the directory after it (a
    failing directory fsync is ignored: the rename is done).  ``keep_same``: a regular file
    that already holds exactly ``data`` (read without following a link) is left as it is,
    mode and owner included, and False returned.  The directory is the caller's to trust.
    """
    path = os.path.abspath(path)
    if keep_same and _holds(path, data):
        return False
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if uid is not None:
                os.fchown(fd, uid, -1)
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    return True


def _holds(path: str, data: bytes) -> bool:
    """Whether ``path`` is a regular file (not followed if a link) holding exactly ``data``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP):
            return False
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        chunks = []
        want = len(data) + 1
        while want > 0:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks) == data
    finally:
        os.close(fd)
