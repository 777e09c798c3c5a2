"""What slurm-mig needs to know about the queue and the nodes, as frozen values.

Slurm's strings (``gres:gpu:1g.10gb:2``, ``0-9%2``, ``MIXED+DRAIN``) are parsed once, at
the edge (:mod:`.jsonread`, :mod:`.pyslurm_adapter`), into these types; nothing past the
edge looks at a Slurm string again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Tuple

from ..core.errors import SlurmError

PER = ("node", "job", "task", "socket")

# Pending reasons that a new layout cannot help: the job would still wait.
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})


DRAIN = "DRAIN"  #: Slurm's flag on a node that takes no new job (drained, or draining)


def drain_flagged(flags: Iterable[str]) -> bool:
    """Whether a node is drained or draining: Slurm's DRAIN flag is set, whatever its base
    state (idle, mixed, allocated: jobs that run go on, no new job lands).  The one test of
    it; :class:`NodeInfo` and :class:`~slurm_mig.slurm.scontrol.NodeStatus` use it."""
    return DRAIN in flags


class SlurmOutputError(SlurmError):
    """Slurm's output (JSON or pyslurm objects) has a shape this reader does not know.

    The message names the command, the Slurm version and the field."""


@dataclass(frozen=True)
class GresRequest:
    """One GPU request of a job: ``count`` instances of ``type`` (None: any GPU) ``per``
    node, job, task or socket, as Slurm stored it."""

    type: Optional[str]
    count: int
    per: str = "node"

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise ValueError(f"per must be one of {', '.join(PER)}, not {self.per!r}")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, not {self.count}")


def request_instances(request: GresRequest, nodes: int, tasks: int,
                      sockets_per_node: Optional[int]) -> int:
    """GPU instances ``request`` needs for a job of ``nodes`` nodes and ``tasks`` tasks: per
    node x nodes, per job, per task x tasks, per socket x sockets x nodes.  The one rule for
    pending jobs (what they ask for) and running ones (what they hold)."""
    nodes = max(nodes, 1)
    if request.per == "node":
        return request.count * nodes
    if request.per == "task":
        return request.count * max(tasks, 1)
    if request.per == "socket":
        return request.count * max(sockets_per_node or 1, 1) * nodes
    return request.count


@dataclass(frozen=True)
class PendingJob:
    """A pending job record: one job, or the pending rest of an array (``array_task``).

    ``array_tasks_pending`` is how many tasks this record stands for (1 for a plain job);
    ``array_throttle`` is the ``%N`` limit on how many of them may run at once.
    ``tasks`` and ``sockets_per_node`` turn per-task and per-socket requests into counts.
    """

    job_id: int
    array_job_id: Optional[int] = None
    array_task: Optional[str] = None
    array_tasks_pending: int = 1
    priority: int = 0
    partition: Tuple[str, ...] = ()
    reason: str = ""
    user: str = ""
    requests: Tuple[GresRequest, ...] = ()
    nodes_requested: int = 1
    state: str = "PENDING"
    tasks: int = 1
    sockets_per_node: Optional[int] = None
    array_throttle: Optional[int] = None
    held: bool = False  # held by a user or an admin (priority 0 until released)
    name: str = ""

    def instances(self, request: GresRequest) -> int:
        """GPU instances ``request`` needs for ONE task of this record (one array task,
        or the job): :func:`request_instances`."""
        return request_instances(request, self.nodes_requested, self.tasks, self.sockets_per_node)

    @property
    def runnable_at_once(self) -> int:
        """Array tasks of this record that may run at the same time (the ``%N`` throttle)."""
        if self.array_throttle:
            return min(self.array_tasks_pending, self.array_throttle)
        return self.array_tasks_pending


#: Time limits at or above this many minutes are Slurm's "no limit": INFINITE (0xffffffff) and
#: NO_VAL (0xfffffffe) as 22.05 prints them in plain numbers.
UNLIMITED_MINUTES = 0xFFFFFFFE


@dataclass(frozen=True)
class RunningJob:
    """A running job: where it runs, what it holds there and when Slurm expects it to end.

    ``start_time`` is Unix seconds; ``time_limit`` minutes, None for a job without one
    (``UNLIMITED``: it never ends for planning).  ``end_time`` is Slurm's expected end, start
    plus limit, the one time Slurm knows (backfill plans with it too); the job may end sooner.
    ``requests`` are its GPU requests as for a pending job (per node, job, task, socket).
    """

    job_id: int
    nodes: Tuple[str, ...] = ()
    start_time: Optional[int] = None
    time_limit: Optional[int] = None
    requests: Tuple[GresRequest, ...] = ()
    nodes_requested: int = 1
    tasks: int = 1
    sockets_per_node: Optional[int] = None

    @property
    def end_time(self) -> Optional[int]:
        """Start + time limit (Unix seconds); None when it has no limit or no start."""
        if self.start_time is None or self.time_limit is None:
            return None
        return self.start_time + 60 * self.time_limit

    def per_node(self) -> Dict[Optional[str], int]:
        """GPU instances per type it holds on each of its nodes (a request per job or per
        task spread evenly over its nodes, rounded up)."""
        nodes = max(self.nodes_requested, len(self.nodes), 1)
        out: Dict[Optional[str], int] = {}
        for r in self.requests:
            n = -(-request_instances(r, nodes, self.tasks, self.sockets_per_node) // nodes)
            if n > 0:
                out[r.type] = out.get(r.type, 0) + n
        return out


@dataclass(frozen=True)
class NodeInfo:
    """One node as Slurm sees it.

    ``state`` is one of idle, mixed, allocated, drained (drain flag, nothing running),
    draining (drain flag, jobs still running), down, unknown, future, error; ``flags``
    keeps Slurm's own flags (DRAIN, NOT_RESPONDING, COMPLETING, INVALID_REG, ...).
    ``gres``/``gres_used`` are GPU type -> count (an untyped ``gpu:2`` counts under "");
    ``gres_used_idx`` is GPU type -> the node's gres record indices in use (Slurm's IDX).
    """

    name: str
    state: str = "unknown"
    flags: Tuple[str, ...] = ()
    partitions: Tuple[str, ...] = ()
    gres: Dict[str, int] = field(default_factory=dict)
    gres_used: Dict[str, int] = field(default_factory=dict)
    gres_used_idx: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    extra: str = ""
    comment: str = ""
    reason: str = ""

    @property
    def gres_free(self) -> Dict[str, int]:
        return {t: n - self.gres_used.get(t, 0) for t, n in self.gres.items()
                if n - self.gres_used.get(t, 0) > 0}

    @property
    def responding(self) -> bool:
        return "NOT_RESPONDING" not in self.flags

    @property
    def drain_flagged(self) -> bool:
        """Drained or draining (:func:`drain_flagged`)."""
        return drain_flagged(self.flags)
