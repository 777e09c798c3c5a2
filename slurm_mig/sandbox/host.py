"""What this machine offers the sandbox: programs, free ports, file helpers."""

from __future__ import annotations

import os
import shutil
import socket
from typing import BinaryIO, List, Optional

from ..host.atomic import write_atomic as _write_atomic
from ..host.safefs import open_file

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")  # often not on a test runner's PATH


def which(name: str) -> Optional[str]:
    """The program's path, also looking in the sbin directories."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def missing_requirements() -> List[str]:
    """What keeps a sandbox cluster from running here (empty when it can run)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (slurmd, unshare --uts and mknod need it)")
    for name, package in (("munged", "munge"), ("slurmctld", "slurmctld"), ("slurmd", "slurmd"),
                          ("sinfo", "slurm-client"), ("sbatch", "slurm-client"),
                          ("scontrol", "slurm-client"), ("unshare", "util-linux")):
        if which(name) is None:
            missing.append(f"{name} (apt-get install -y {package})")
    return missing


def free_ports(count: int) -> List[int]:
    """Distinct TCP ports free right now (held together while picked)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` all at once (readers see old or new) with exactly ``mode``, whatever
    the umask; its directory is made 0755 where missing and must be trusted, a link in the
    file's place is replaced, never written through (:func:`slurm_mig.host.atomic.write_atomic`)."""
    _write_atomic(path, text, mode=mode, keep_prev=False, durable=False, follow=False)


def open_append(path: str, mode: int = 0o644) -> BinaryIO:
    """``path`` opened to append (a log), created with exactly ``mode`` whatever the umask;
    never through a symbolic link, only a regular file of ours (:func:`safefs.open_file`)."""
    fd = open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode, "log file")
    return os.fdopen(fd, "ab")


def tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of a file (from its last 64 KiB); "" when unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
