"""Reading the queue and the nodes: one small interface, two adapters, one factory.

* :class:`SlurmJsonClient` (default): runs ``squeue --json --states=PENDING`` and
  ``sinfo -N --json`` (argument lists, configurable paths) and reads them with
  :mod:`.jsonread`.  22.05 ignores ``--states`` (and ``-p``) with ``--json``, measured:
  the reader keeps only PENDING records whatever the command printed.
* :class:`~.pyslurm_adapter.PyslurmReader`: the optional pyslurm extra.

Either raises :class:`~slurm_mig.core.errors.SlurmUnreadable` (exit 9, one line) when Slurm did
not answer: the command failed, timed out or is missing, its JSON carries ``errors`` (22.05
exits 0 with only that while slurmctld is down, after ~MessageTimeout), no node at all, or
pyslurm raised.  Never an empty queue or an empty cluster in place of an answer.

``slurm_reader(prefer="auto")`` picks pyslurm when it can be imported and slurm.conf is
readable, else the commands.  ``import pyslurm`` initialises libslurm, which ends the whole
process (exit 1, "fatal: Could not establish a configuration source"; after retrying 60 s when
``SLURM_CONF`` names a missing file) when it finds no slurm.conf: measured with pyslurm 24.11.0
on Slurm 24.11.  So pyslurm is imported only where ``$SLURM_CONF`` (else Slurm's default,
/etc/slurm/slurm.conf) is a readable file; configless clients (DNS SRV) read through the
commands.  And ``auto`` reads through pyslurm only when it is sure to read the cluster the
commands would: pyslurm reads libslurm's slurm.conf (this process's ``$SLURM_CONF``), the
commands read theirs (the environment they are given; a wrapper script may set any).  So a
wrapper script in place of ``squeue``/``sinfo`` (the sandbox's ``bin/``, a site's module
wrapper), or a ``SLURM_CONF`` for the commands that is not libslurm's, keeps ``auto`` on the
commands; ``reader = "pyslurm"`` still forces pyslurm.  Measured on 24.11: with a stray
/etc/slurm/slurm.conf, ``auto`` planned another cluster's queue than the commands'.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

from ..core.errors import SlurmError, SlurmUnreadable
from . import jsonread
from .client import failure_detail, run_command, run_process
from .model import NodeInfo, PendingJob, RunningJob, SlurmOutputError

__all__ = ["SlurmReader", "SlurmJsonClient", "slurm_reader", "run_command"]
from .pyslurm_adapter import PyslurmReader, import_pyslurm


class SlurmReader(Protocol):
    name: str

    def pending_jobs(self) -> List[PendingJob]:
        """Every pending job record (array remainders as one record each)."""

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
        """Nodes by name (all, or those named)."""

    def running_jobs(self) -> List[RunningJob]:
        """Every running job, with its start time and time limit (when it is expected to end)."""


class SlurmJsonClient:
    """:class:`SlurmReader` over the Slurm commands' JSON output."""

    name = "json"

    def __init__(self, squeue: str = "squeue", sinfo: str = "sinfo",
                 env: Optional[Mapping[str, str]] = None, timeout: float = 60.0):
        self.squeue = squeue
        self.sinfo = sinfo
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def squeue_argv(self) -> List[str]:
        return [self.squeue, "--json", "--states=PENDING"]

    def squeue_running_argv(self) -> List[str]:
        return [self.squeue, "--json", "--states=RUNNING"]

    def sinfo_argv(self) -> List[str]:
        return [self.sinfo, "-N", "--json"]

    def _read(self, argv: List[str], command: str) -> str:
        """The command's stdout; SlurmUnreadable when it is missing, does not finish, or
        exits non-zero (quoting the ``errors`` of its JSON when it printed some)."""
        done = run_process(argv, "cannot read Slurm", self.env, self.timeout,
                           hint=jsonread.CHECK_SLURMCTLD, error=SlurmUnreadable)
        if done.returncode != 0:
            try:
                jsonread.load(done.stdout, command)  # Slurm's own errors, if it printed JSON
            except SlurmOutputError:
                pass  # not JSON: stderr says why
            raise SlurmUnreadable(f"cannot read Slurm: `{' '.join(argv)}` failed (exit "
                                  f"{done.returncode}): {failure_detail(done)[:300]}; "
                                  f"{jsonread.CHECK_SLURMCTLD}")
        return str(done.stdout)

    def pending_jobs(self) -> List[PendingJob]:
        argv = self.squeue_argv()
        command = "squeue " + " ".join(argv[1:])
        return jsonread.read_pending_jobs(self._read(argv, command), command)

    def running_jobs(self) -> List[RunningJob]:
        argv = self.squeue_running_argv()
        command = "squeue " + " ".join(argv[1:])
        return jsonread.read_running_jobs(self._read(argv, command), command)

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
        argv = self.sinfo_argv()
        command = "sinfo " + " ".join(argv[1:])
        return jsonread.read_nodes(self._read(argv, command), command, names)


# libslurm's compiled-in default (Debian's and the upstream packages'); $SLURM_CONF wins.
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"


def pyslurm_importable() -> bool:
    return importlib.util.find_spec("pyslurm") is not None


def slurm_conf_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """The slurm.conf libslurm (so pyslurm) reads at import: ``$SLURM_CONF``, else the default."""
    env = os.environ if environ is None else environ
    return env.get("SLURM_CONF") or DEFAULT_SLURM_CONF


def slurm_conf_readable(environ: Optional[Mapping[str, str]] = None) -> bool:
    path = slurm_conf_path(environ)
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _is_script(command: str, environ: Optional[Mapping[str, str]]) -> bool:
    """True when ``command`` (a path, or a name looked up on PATH) is a ``#!`` script, whose
    environment (so whose cluster) cannot be known; False for a program or a missing one."""
    path = command if os.sep in command else shutil.which(
        command, path=(environ if environ is not None else os.environ).get("PATH"))
    if not path:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def same_cluster_as_commands(squeue: str = "squeue", sinfo: str = "sinfo",
                             env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether pyslurm (libslurm's slurm.conf) is sure to read what the commands read: both
    commands are programs, not wrapper scripts, and the slurm.conf their environment names is
    libslurm's (the same file, links resolved)."""
    if _is_script(squeue, env) or _is_script(sinfo, env):
        return False
    if env is None:
        return True
    return os.path.realpath(slurm_conf_path(env)) == os.path.realpath(slurm_conf_path())


def slurm_reader(prefer: str = "auto", *, pyslurm_module: Any = None,
                 **json_options: Any) -> SlurmReader:
    """``json`` -> :class:`SlurmJsonClient` (``json_options``: squeue, sinfo, env, timeout);
    ``pyslurm`` -> :class:`PyslurmReader` (SlurmError when pyslurm cannot be imported);
    ``auto`` -> pyslurm when importable, slurm.conf is readable and the commands would read
    the same cluster (:func:`same_cluster_as_commands`), else json.  pyslurm reads this
    process's environment (``$SLURM_CONF``), not ``json_options["env"]``."""
    if prefer not in ("auto", "json", "pyslurm"):
        raise SlurmError(f"slurm reader {prefer!r} is not one of auto, json, pyslurm")
    if prefer == "json":
        return SlurmJsonClient(**json_options)
    if pyslurm_module is not None:
        return PyslurmReader(pyslurm_module)
    if prefer == "pyslurm":
        if pyslurm_importable() and not slurm_conf_readable():
            raise SlurmError(f"pyslurm needs a readable slurm.conf when it is imported, and "
                             f"{slurm_conf_path()} is not one (libslurm would end this process); "
                             f"set SLURM_CONF to the cluster's slurm.conf, or read Slurm through "
                             f"its JSON commands ([slurm] reader = \"json\")")
        return PyslurmReader(import_pyslurm())
    if (pyslurm_importable() and slurm_conf_readable() and same_cluster_as_commands(
            json_options.get("squeue", "squeue"), json_options.get("sinfo", "sinfo"),
            json_options.get("env"))):
        try:
            return PyslurmReader(import_pyslurm())
        except SlurmError:  # found but broken (built against another Slurm): use the commands
            pass
    return SlurmJsonClient(**json_options)
