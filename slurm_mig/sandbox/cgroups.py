"""Which cgroup plugin the sandbox can use, and whether Slurm can fence devices with it.

:func:`choose_isolation` is pure: it reads the text of ``/proc/self/mounts``.
:func:`detect_isolation` reads the file (its path is a parameter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Set

# proctrack/cgroup needs freezer; ConstrainDevices needs devices (cgroup v1).
V1_CONTROLLERS_NEEDED = ("freezer", "devices")


@dataclass(frozen=True)
class Isolation:
    """How jobs are fenced in the sandbox.

    ``mode`` is ``"v1"``, ``"v2"`` or ``"none"`` (no cgroups: proctrack/linuxproc, task/none).
    ``devices`` is True when Slurm is configured to confine a job to its gres device files;
    it says what is configured, the cluster tests prove it.  ``reason`` says why (not).
    """

    mode: str
    devices: bool
    reason: str
    mountpoint: str = "/sys/fs/cgroup"

    @property
    def available(self) -> bool:
        return self.devices


@dataclass(frozen=True)
class _Mount:
    target: str
    fstype: str
    options: Set[str]


def _parse_mounts(text: str) -> List[_Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            target = fields[1].replace("\\040", " ")
            mounts.append(_Mount(target, fields[2], set(fields[3].split(","))))
    return mounts


def choose_isolation(mounts_text: str, mountpoint: str = "/sys/fs/cgroup",
                     want: Optional[str] = None) -> Isolation:
    """Pick cgroup v1 where its controllers are mounted, else v2 where /sys/fs/cgroup is cgroup2.

    ``want`` forces a mode ("v1", "v2", "none"); ``None`` or ``"auto"`` detects.
    """
    if want == "none":
        return Isolation("none", False, "cgroups turned off by the caller (cgroup='none')",
                         mountpoint)
    mounts = _parse_mounts(mounts_text)
    v1: Dict[str, str] = {}
    for m in mounts:
        if m.fstype == "cgroup":
            for ctrl in V1_CONTROLLERS_NEEDED:
                if ctrl in m.options:
                    v1[ctrl] = m.target
    v1_ok = all(v1.get(c) == os.path.join(mountpoint, c) for c in V1_CONTROLLERS_NEEDED)
    v2_ok = any(m.fstype == "cgroup2" and m.target == mountpoint for m in mounts)
    if want in (None, "auto", "v1") and v1_ok:
        return Isolation("v1", True, f"cgroup/v1 devices controller at {mountpoint}/devices",
                         mountpoint)
    if want in (None, "auto", "v2") and v2_ok:
        return Isolation("v2", True, f"cgroup/v2 eBPF device filter under {mountpoint} "
                         "(IgnoreSystemd=yes)", mountpoint)
    found = ", ".join(f"{c} at {t}" for c, t in sorted(v1.items())) or "no v1 controllers"
    return Isolation(
        "none", False,
        f"no usable cgroup for device fencing: need cgroup v1 {'+'.join(V1_CONTROLLERS_NEEDED)} "
        f"under {mountpoint}/ ({found}) or cgroup2 mounted at {mountpoint}"
        + (f" (asked for {want})" if want not in (None, "auto") else ""),
        mountpoint)


def detect_isolation(mounts_path: str = "/proc/self/mounts", mountpoint: str = "/sys/fs/cgroup",
                     want: Optional[str] = None) -> Isolation:
    try:
        with open(mounts_path) as f:
            text = f.read()
    except OSError as err:
        return Isolation("none", False, f"cannot read {mounts_path}: {err.strerror}", mountpoint)
    return choose_isolation(text, mountpoint, want)
