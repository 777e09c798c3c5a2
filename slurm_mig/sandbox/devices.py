"""Fake NVIDIA device files for the sandbox: real character devices with no driver behind them.

A job allowed by its cgroup to use one gets ENXIO from ``open()`` (no driver); a job fenced
off gets EPERM.  That difference is what the isolation test reads.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

from ..host.safefs import ensure_dir
from .errors import SandboxError

NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
DEFAULT_CAP_MAJOR = 511  # top of the kernel's dynamic char-major range; any unused major works
# The modes the NVIDIA driver gives its nodes (as slurm_mig.sim.driver makes them):
# nvidia<N> and nvidiactl 0666; of nvidia-caps, the config capability 0400, the others 0444.
DEVICE_MODE = 0o666
CONFIG_CAP_MINOR = 1  # /proc/driver/nvidia-caps/mig-minors: "config 1"
CAP_MODE = 0o444
CONFIG_CAP_MODE = 0o400


def cap_mode(minor: int) -> int:
    return CONFIG_CAP_MODE if minor == CONFIG_CAP_MINOR else CAP_MODE


@dataclass(frozen=True)
class DeviceNodes:
    root: str
    gpus: Dict[int, str]  # minor -> <root>/nvidia<N>
    ctl: str  # <root>/nvidiactl
    caps: Dict[int, str]  # minor -> <root>/nvidia-caps/nvidia-cap<k>
    cap_major: int

    def gpu(self, minor: int) -> str:
        return self.gpus[minor]

    def cap(self, minor: int) -> str:
        return self.caps[minor]


def used_char_majors(proc_devices: str = "/proc/devices") -> set:
    majors = set()
    try:
        with open(proc_devices) as f:
            section = ""
            for line in f:
                if line.strip().endswith("devices:"):
                    section = line.strip()
                    continue
                fields = line.split()
                if section.startswith("Character") and fields and fields[0].isdigit():
                    majors.add(int(fields[0]))
    except OSError:
        pass
    return majors


def pick_cap_major(proc_devices: str = "/proc/devices") -> int:
    """511, or the highest major below it that no driver has taken."""
    used = used_char_majors(proc_devices)
    for major in range(DEFAULT_CAP_MAJOR, 233, -1):
        if major not in used:
            return major
    raise SandboxError("no free character-device major found in /proc/devices for nvidia-caps")


def _mknod(path: str, major: int, minor: int, mode: int) -> None:
    """A character device ``major:minor`` at ``path`` with exactly ``mode`` (the umask
    trims what mknod makes: set again); one already there with these numbers is kept."""
    rdev = os.makedev(major, minor)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not (stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev):
        os.unlink(path)
        st = None
    if st is None:
        try:
            os.mknod(path, mode | stat.S_IFCHR, rdev)
        except PermissionError as err:
            raise SandboxError(f"cannot mknod {path}: {err.strerror}; run as root "
                               f"(CAP_MKNOD)") from err
    os.chmod(path, mode)  # the node checked or made just above, in a trusted directory


def make_device_nodes(dev_root: str, gpu_minors: Iterable[int], cap_minors: Iterable[int],
                      cap_major: Optional[int] = None,
                      proc_devices: str = "/proc/devices") -> DeviceNodes:
    """Create ``nvidia<N>`` (195:N), ``nvidiactl`` (195:255) and ``nvidia-caps/nvidia-cap<k>``,
    with the driver's modes whatever the umask (:data:`DEVICE_MODE`, :func:`cap_mode`).

    Idempotent: a node that already has the right type and numbers is kept.  Raises
    :class:`SandboxError` when ``dev_root`` is on a ``nodev`` file system, where every open()
    would fail with EACCES and prove nothing.
    """
    caps_dir = os.path.join(dev_root, "nvidia-caps")
    ensure_dir(dev_root, 0o755, "sandbox /dev", tighten=True)
    ensure_dir(caps_dir, 0o755, "sandbox /dev", tighten=True)
    if os.statvfs(dev_root).f_flag & getattr(os, "ST_NODEV", 4):
        raise SandboxError(f"{dev_root} is on a nodev file system; device files there cannot be "
                           "opened: pick a directory on another file system (e.g. /var/tmp)")
    major = cap_major if cap_major is not None else pick_cap_major(proc_devices)
    gpus = {}
    for minor in gpu_minors:
        gpus[minor] = os.path.join(dev_root, f"nvidia{minor}")
        _mknod(gpus[minor], NVIDIA_MAJOR, minor, DEVICE_MODE)
    ctl = os.path.join(dev_root, "nvidiactl")
    _mknod(ctl, NVIDIA_MAJOR, NVIDIACTL_MINOR, DEVICE_MODE)
    caps = {}
    for minor in cap_minors:
        caps[minor] = os.path.join(caps_dir, f"nvidia-cap{minor}")
        _mknod(caps[minor], major, minor, cap_mode(minor))
    return DeviceNodes(dev_root, gpus, ctl, caps, major)
