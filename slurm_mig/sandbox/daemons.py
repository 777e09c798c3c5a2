"""Start, track and stop the sandbox's daemons (munged, slurmctld, one slurmd per node).

Each daemon runs in the foreground as our child, in its own session, and by default gets
SIGTERM when this process dies (``PR_SET_PDEATHSIG``), so a killed test run leaves no daemon
behind.  Slurm 23.11+ restarts its daemons on ``scontrol reconfigure`` (new pids, no longer
our children): :meth:`Daemon.pids` also reads the daemon's pid file, checking the process name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ..host.safefs import open_file
from .errors import SandboxError
from .host import open_append

# Every daemon (and node timer) starts with this umask, whatever the caller's: the files
# slurmctld, slurmd and munged make under the root are never group/world-writable.
DAEMON_UMASK = 0o022

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

_LIBC: Optional[ctypes.CDLL]
try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
except OSError:  # pragma: no cover - no libc to load: no parent-death signal
    _LIBC = None

# Run as: unshare --uts -- python -c SETHOSTNAME <node> slurmd -D ...
# (sets the UTS hostname to the node name, so slurmd finds its NodeName, then execs slurmd).
_SETHOSTNAME = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
                "os.execv(sys.argv[2], sys.argv[2:])")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def set_process_name(name: str) -> None:
    """Name this process as ``/proc/<pid>/stat`` shows it (15 bytes at most), so that a pid
    file it writes can be checked against the name (:meth:`Daemon.pid_file_pid`)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def in_uts_namespace(unshare: str, hostname: str, argv: Sequence[str]) -> List[str]:
    """argv that runs ``argv`` in a new UTS namespace whose hostname is ``hostname``."""
    return [unshare, "--uts", "--", sys.executable, "-c", _SETHOSTNAME, hostname, *argv]


def _proc_name(pid: int) -> Optional[str]:
    """The process's name, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    name = stat[stat.find("(") + 1:stat.rfind(")")]
    state = stat[stat.rfind(")") + 2:stat.rfind(")") + 3]
    return None if state in ("Z", "X") else name


class Daemon:
    """One foreground daemon: its argv, an output file, an optional pid file."""

    def __init__(self, name: str, argv: Sequence[str], output: str,
                 pid_file: Optional[str] = None, proc_name: Optional[str] = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.output = output
        self.pid_file = pid_file
        self.proc_name = proc_name or os.path.basename(self.argv[0])
        self.proc: Optional[subprocess.Popen] = None

    def start(self, env: Mapping[str, str], die_with_parent: bool = True) -> None:
        if self.pid_file:
            try:
                os.unlink(self.pid_file)
            except FileNotFoundError:
                pass
        with open_append(self.output) as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n"
                      .encode())
            out.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=dict(env), start_new_session=True, close_fds=True, umask=DAEMON_UMASK,
                    preexec_fn=_die_with_parent if die_with_parent else None)
            except OSError as err:
                raise SandboxError(f"cannot start {self.name} ({self.argv[0]}): "
                                   f"{err.strerror}") from err

    def pid_file_pid(self) -> Optional[int]:
        """The pid in the pid file, if that process is alive and has this daemon's name."""
        if not self.pid_file:
            return None
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _proc_name(pid) == self.proc_name[:15] else None

    def pids(self) -> List[int]:
        """Live pids of this daemon: our child and, if different, the one in the pid file."""
        out = []
        if self.proc is not None and self.proc.poll() is None:
            out.append(self.proc.pid)
        other = self.pid_file_pid()
        if other is not None and other not in out:
            out.append(other)
        return out

    def alive(self) -> bool:
        return bool(self.pids())

    def exit_status(self) -> Optional[int]:
        """Our child's exit status when it has exited and no successor holds the pid file."""
        if self.proc is None or self.proc.poll() is None or self.pid_file_pid() is not None:
            return None
        return self.proc.returncode


def stop_daemons(daemons: Iterable[Daemon], timeout: float = 5.0) -> None:
    """SIGTERM every live daemon, wait up to ``timeout``, then SIGKILL what is left."""
    daemons = list(daemons)
    targets: Dict[int, Daemon] = {}
    for d in daemons:
        for pid in d.pids():
            targets[pid] = d
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p, targets[p]) for p in targets):
        time.sleep(0.05)
    for pid, d in targets.items():
        if _alive(pid, d):
            _signal(pid, signal.SIGKILL)
    for d in daemons:
        if d.proc is not None:
            try:
                d.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed above
                pass


def kill_daemons(daemons: Iterable[Daemon], timeout: float = 5.0) -> None:
    """SIGKILL every live daemon at once (a crash: no shutdown, no last state save) and
    wait up to ``timeout`` until they are gone."""
    daemons = list(daemons)
    targets = {pid: d for d in daemons for pid in d.pids()}
    for pid in targets:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p, targets[p]) for p in targets):
        time.sleep(0.01)
    for d in daemons:
        if d.proc is not None:
            try:
                d.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILL is not refused
                pass


def _alive(pid: int, d: Daemon) -> bool:
    if d.proc is not None and d.proc.pid == pid:
        return d.proc.poll() is None
    return _proc_name(pid) is not None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def write_munge_key(path: str, nbytes: int = 128) -> None:
    """A fresh random key, mode 0600 (what ``mungekey -c`` writes, without needing mungekey)."""
    fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, "munge key")
    try:
        os.write(fd, os.urandom(nbytes))
    finally:
        os.close(fd)


def check_socket_path(path: str) -> None:
    """munged needs a short path and o+x on every directory above its socket."""
    if len(path.encode()) > 100:
        raise SandboxError(f"munge socket path is {len(path)} bytes, over the 108-byte limit of a "
                           f"unix socket: {path}; use a shorter root such as /var/tmp/sbx-XXXX")
    parent = os.path.dirname(path)
    while True:
        st = os.stat(parent)
        if not st.st_mode & 0o001:
            raise SandboxError(f"munged refuses a socket under {parent} (mode "
                               f"{st.st_mode & 0o777:o}): every directory above the socket "
                               "needs o+x; put the sandbox root under /var/tmp or chmod o+x "
                               "that directory")
        if parent == "/":
            return
        parent = os.path.dirname(parent)
