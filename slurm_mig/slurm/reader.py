"""Reading the queue and the nodes: one small interface, two adapters, one factory.

* :class:`SlurmJsonClient` (default): runs ``squeue --json --states=PENDING`` and
  ``sinfo -N --json`` (argument lists, configurable paths) and reads them with
  :mod:`.jsonread`.  22.05 ignores ``--states`` (and ``-p``) with ``--json``, measured:
  the reader keeps only PENDING records whatever the command printed.
* :class:`~.pyslurm_adapter.PyslurmReader`: the optional pyslurm extra.

``slurm_reader(prefer="auto")`` picks pyslurm when it can be imported, else the commands.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

from ..errors import SlurmError
from . import jsonread
from .client import run_command
from .model import NodeInfo, PendingJob
from .pyslurm_adapter import PyslurmReader, import_pyslurm


class SlurmReader(Protocol):
    name: str

    def pending_jobs(self) -> List[PendingJob]:
        """Every pending job record (array remainders as one record each)."""

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
        """Nodes by name (all, or those named)."""


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

    def sinfo_argv(self) -> List[str]:
        return [self.sinfo, "-N", "--json"]

    def pending_jobs(self) -> List[PendingJob]:
        argv = self.squeue_argv()
        out = run_command(argv, "read the pending jobs", self.env, self.timeout)
        return jsonread.read_pending_jobs(out, "squeue " + " ".join(argv[1:]))

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
        argv = self.sinfo_argv()
        out = run_command(argv, "read the nodes", self.env, self.timeout)
        return jsonread.read_nodes(out, "sinfo " + " ".join(argv[1:]), names)


def pyslurm_importable() -> bool:
    return importlib.util.find_spec("pyslurm") is not None


def slurm_reader(prefer: str = "auto", *, pyslurm_module: Any = None,
                 **json_options: Any) -> SlurmReader:
    """``json`` -> :class:`SlurmJsonClient` (``json_options``: squeue, sinfo, env, timeout);
    ``pyslurm`` -> :class:`PyslurmReader` (SlurmError when pyslurm cannot be imported);
    ``auto`` -> pyslurm when importable, else json."""
    if prefer not in ("auto", "json", "pyslurm"):
        raise SlurmError(f"slurm reader {prefer!r} is not one of auto, json, pyslurm")
    if prefer == "json":
        return SlurmJsonClient(**json_options)
    if pyslurm_module is not None:
        return PyslurmReader(pyslurm_module)
    if prefer == "pyslurm":
        return PyslurmReader(import_pyslurm())
    if pyslurm_importable():
        try:
            return PyslurmReader(import_pyslurm())
        except SlurmError:  # found but broken (built against another Slurm): use the commands
            pass
    return SlurmJsonClient(**json_options)
