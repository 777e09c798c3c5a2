"""The host's device nodes: ``/proc/devices``, the driver's capability entries, and the
``/dev/nvidia-caps`` files made from them.

One small interface (:class:`DeviceNodes`) and one implementation over two roots
(:class:`HostDeviceNodes`): the real ``/dev`` and ``/proc``, or the simulator's tree
(``simulated=True``: where mknod is not allowed, an empty regular file stands in, as the
simulator's own device files do).  Every path is a parameter, so tests run in ``tmp_path``.

Writes: a new node is made under a temporary name in ``<dev>/nvidia-caps`` and renamed
over the path (atomic: a reader sees the old node or the new one, never none).  When
``nvidia-modprobe`` is given (:func:`device_nodes` finds it only for the real ``/dev`` and
``/proc``: its paths are compiled in), it is run first, as
``[nvidia-modprobe, "-f", <access file>]`` (an argument list, never a shell); the result is
checked, and mknod does what it left undone.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from typing import List, Optional, Protocol, Sequence

from ..core.capfiles import MISSING, CapEntry, SeenNode, WantedNode, no_major, parse_cap_entry, \
    parse_proc_devices
from ..core.devices import DeviceFilesError
from .config import Config, host_paths

#: Where an installed nvidia-modprobe is looked for (never $PATH: the hooks run as root).
MODPROBE_PATHS = ("/usr/bin/nvidia-modprobe", "/usr/sbin/nvidia-modprobe")
MODPROBE_TIMEOUT = 30.0
CAPS_DIR = "nvidia-caps"
_FIX_ROOT = "run slurm-mig as root (mknod needs CAP_MKNOD)"


class DeviceNodes(Protocol):
    """What slurm-mig needs to keep the MIG capability files of a node."""

    dev: str
    proc: str
    simulated: bool

    def caps_major(self) -> int:
        """The major of ``nvidia-caps`` in ``/proc/devices``; DeviceFilesError when absent."""

    def access_path(self, gpu_minor: int, gi: int, ci: Optional[int] = None) -> str:
        """The driver's capability file of an instance (what ``nvidia-modprobe -f`` is given)."""

    def cap_entry(self, gpu_minor: int, gi: int, ci: Optional[int] = None) -> Optional[tuple]:
        """(access path, CapEntry) of an instance's capability entry; None when the driver shows none."""

    def look(self, path: str) -> SeenNode:
        """What is at ``path`` (lstat)."""

    def make(self, node: WantedNode) -> str:
        """Create or replace the node; returns how (``nvidia-modprobe`` or ``mknod``)."""

    def set_attrs(self, node: WantedNode) -> None:
        """chmod/chown an existing node to the entry's mode and owner."""


class HostDeviceNodes:
    """:class:`DeviceNodes` over a ``/dev`` and a ``/proc`` root."""

    def __init__(self, dev: str = "/dev", proc: str = "/proc", *,
                 modprobe: Optional[str] = None, simulated: bool = False):
        self.dev = dev
        self.proc = proc
        self.modprobe = modprobe
        self.simulated = simulated
        self.modprobe_calls: List[Sequence[str]] = []  #: argv of each nvidia-modprobe run

    # ---------------------------------------------------------------- reads

    def caps_major(self) -> int:
        path = os.path.join(self.proc, "devices")
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError as err:
            raise DeviceFilesError(f"cannot read {path}: {err}; the MIG capability files cannot "
                                   f"be checked; is {self.proc} the host's /proc?") from err
        major = parse_proc_devices(text)
        if major is None:
            raise no_major(path)
        return major

    def access_path(self, gpu_minor: int, gi: int, ci: Optional[int] = None) -> str:
        parts = [self.proc, "driver", "nvidia", "capabilities", f"gpu{gpu_minor}", "mig", f"gi{gi}"]
        if ci is not None:
            parts.append(f"ci{ci}")
        return os.path.join(*parts, "access")

    def cap_entry(self, gpu_minor: int, gi: int, ci: Optional[int] = None) -> Optional[tuple]:
        path = self.access_path(gpu_minor, gi, ci)
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read(4096)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DeviceFilesError(f"cannot read {path}: {err}; check the driver "
                                   f"(nvidia-smi mig -lgi)") from err
        entry: CapEntry = parse_cap_entry(text, path)
        return path, entry

    def look(self, path: str) -> SeenNode:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return MISSING
        kind = ("chr" if stat.S_ISCHR(st.st_mode) else "reg" if stat.S_ISREG(st.st_mode)
                else "other")
        return SeenNode(kind, os.major(st.st_rdev) if kind == "chr" else -1,
                        os.minor(st.st_rdev) if kind == "chr" else -1,
                        stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino)

    # ---------------------------------------------------------------- writes

    def make(self, node: WantedNode) -> str:
        if self.modprobe is not None:
            self._run_modprobe(node)
            seen = self.look(node.path)
            if seen.kind == "chr" and (seen.major, seen.minor) == (node.major, node.entry.minor):
                if (seen.mode, seen.uid, seen.gid) != (
                        node.entry.mode, node.entry.uid, node.entry.gid):
                    self.set_attrs(node)
                return "nvidia-modprobe"
        self._mknod(node)
        return "mknod"

    def _run_modprobe(self, node: WantedNode) -> None:
        assert self.modprobe is not None  # make() asks only then
        argv = [self.modprobe, "-f", node.access]
        self.modprobe_calls.append(tuple(argv))
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=MODPROBE_TIMEOUT, check=False,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except (OSError, subprocess.SubprocessError):
            return  # what it left undone, mknod does (and a failure there is reported)

    def _mknod(self, node: WantedNode) -> None:
        e = node.entry
        directory = os.path.dirname(node.path)
        self._ensure_dir(directory)
        tmp = os.path.join(directory, f".{os.path.basename(node.path)}.slurm-mig.{os.getpid()}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        try:
            try:
                os.mknod(tmp, stat.S_IFCHR | e.mode, os.makedev(node.major, e.minor))
            except PermissionError:
                if not self.simulated:
                    raise
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, e.mode))
            os.chmod(tmp, e.mode)  # whatever the umask
            if not self.simulated:
                os.chown(tmp, e.uid, e.gid)
            os.rename(tmp, node.path)
        except OSError as err:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            fix = _FIX_ROOT if err.errno in (errno.EPERM, errno.EACCES) else (
                f"check {directory} (`ls -l {directory}`) and the driver")
            raise DeviceFilesError(f"cannot make {node.path} (char {node.major}:{e.minor}, mode "
                                   f"{e.mode:04o}) for {node.owner}: {err}; {fix}") from err

    def _ensure_dir(self, directory: str) -> None:
        """``<dev>/nvidia-caps``, 0755, as nvidia-modprobe makes it."""
        if os.path.isdir(directory) and not os.path.islink(directory):
            return
        try:
            os.mkdir(directory, 0o755)
            os.chmod(directory, 0o755)
        except FileExistsError:
            pass
        except OSError as err:
            raise DeviceFilesError(f"cannot make {directory}: {err}; {_FIX_ROOT}") from err

    def set_attrs(self, node: WantedNode) -> None:
        e = node.entry
        try:
            os.chmod(node.path, e.mode)  # a device node or regular file: look() said so
            if not self.simulated:
                os.chown(node.path, e.uid, e.gid, follow_symlinks=False)
        except OSError as err:
            raise DeviceFilesError(f"cannot set mode {e.mode:04o} and owner {e.uid}:{e.gid} on "
                                   f"{node.path} for {node.owner}: {err}; {_FIX_ROOT}") from err


def find_modprobe(candidates: Sequence[str] = MODPROBE_PATHS) -> Optional[str]:
    """An installed nvidia-modprobe: a regular file root owns, that only root may change."""
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022 \
                and st.st_mode & 0o111:
            return path
    return None


def device_nodes(config: Config) -> HostDeviceNodes:
    """The node's :class:`DeviceNodes`: the simulator's tree with ``backend = "sim"``, else
    ``paths.dev`` and ``paths.proc``; nvidia-modprobe only when those are ``/dev`` and ``/proc``."""
    dev, proc = host_paths(config)
    if config.backend == "sim":
        return HostDeviceNodes(dev, proc, simulated=True)
    modprobe = find_modprobe() if (dev, proc) == ("/dev", "/proc") else None
    return HostDeviceNodes(dev, proc, modprobe=modprobe)
