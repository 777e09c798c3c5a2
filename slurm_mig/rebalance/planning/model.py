"""The planner's own frozen input and output values.  Pure data.

The planner does not know how Slurm is read: the rebalance command (or a test) turns
``sinfo``/``squeue``/``scontrol`` output into these values first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple, Union

from ...core.errors import InputError
from ...core.layout import Layout, format_counts, format_layout

#: Node state flags that make a node neither a source of free instances nor changeable.
UNAVAILABLE_FLAGS = frozenset({
    "down", "drain", "drained", "draining", "fail", "failing", "maint", "reboot",
    "reboot_requested", "reboot_issued", "not_responding", "power_down", "powered_down",
    "powering_down", "powering_up", "power_up", "future", "unknown", "inval", "invalid",
    "reserved", "planned", "cloud",
})
_SUFFIXES = "*~#!%$@^-"


def condition(state: str) -> str:
    """A Slurm node state reduced to ``idle``, ``mixed``, ``allocated``, ``completing``
    or ``unavailable``.

    Accepts ``idle``, ``MIXED+DRAIN``, ``mixed drain``, ``idle*`` (not responding), ``alloc``.
    Any flag in :data:`UNAVAILABLE_FLAGS` (or a ``*`` suffix) makes it ``unavailable``.
    """
    raw = (state or "").strip().lower()
    if not raw:
        return "unavailable"
    parts = [p for p in re.split(r"[+\s,]+", raw) if p]
    if parts[0].endswith("*"):
        return "unavailable"
    words = [p.rstrip(_SUFFIXES) for p in parts]
    if any(w in UNAVAILABLE_FLAGS for w in words):
        return "unavailable"
    if "completing" in words or "comp" in words:
        return "completing"
    base = words[0]
    if base in ("idle",):
        return "idle"
    if base in ("mixed", "mix"):
        return "mixed"
    if base in ("allocated", "alloc"):
        return "allocated"
    return "unavailable"


@dataclass(frozen=True)
class PlanGpu:
    """One GPU of a node: its model, current layout and the instances jobs hold."""

    index: int
    model_key: str  #: catalog key or NVML name (``A100-80GB``)
    layout: Layout
    busy: FrozenSet[Tuple[int, int]] = frozenset()  #: ``(profile_id, start)`` of instances in use


@dataclass(frozen=True)
class JobEnd:
    """One job running on a node: when it is expected to end and what it holds there.

    ``ends_in``: seconds from the plan's "now" to the job's start + time limit (Slurm's
    expected end; 0 when already past); None for a job without a time limit (it never ends
    for planning).  ``slices``: compute slices of the instances it holds on this node."""

    ends_in: Optional[float]
    slices: int = 0


@dataclass(frozen=True)
class PlanNode:
    """One Slurm node as the planner sees it.

    ``running``: the jobs running on it with their expected ends (:class:`JobEnd`); None when
    the caller did not read them (then ``drain_mixed = "auto"`` never drains it)."""

    name: str
    partitions: Tuple[str, ...]
    state: str  #: Slurm's state text: ``idle``, ``mixed``, ``MIXED+DRAIN``, ``down*`` ...
    gpus: Tuple[PlanGpu, ...]
    allowed: bool = True  #: the caller's own allow-list verdict (config), on top of Policy's
    last_changed_cycle: Optional[int] = None  #: cycle in which rebalance last changed it
    running: Optional[Tuple[JobEnd, ...]] = None

    @property
    def free_in(self) -> Optional[float]:
        """Seconds until every running job has ended by its time limit (0: none runs);
        None when not known or when a job has no limit."""
        if self.running is None:
            return None
        ends = [j.ends_in for j in self.running]
        if any(e is None for e in ends):
            return None
        return max([max(float(e or 0.0), 0.0) for e in ends], default=0.0)


@dataclass(frozen=True)
class DemandItem:
    """``count`` identical pending jobs (array tasks counted, throttles applied).

    One job wants ``shape`` on ONE node: ``((type, instances), ...)``, e.g.
    ``(("3g.40gb", 2), ("1g.10gb", 1))``; empty means one instance of ``profile`` (the
    form every single-instance job takes).  A job starts only when every instance of its
    shape is free on one node in one of its ``partitions`` (empty = any node).  Each job is
    worth ``priority_weight``.  ``nodes`` > 1: the job needs ``shape`` on each of that many
    nodes; the planner counts each node's share as a part worth ``priority_weight / nodes``
    (see docs/planner.md).  ``jobs`` is how many pending job records stand behind the item,
    for explanations; ``None`` means ``count``.
    """

    profile: str  #: the type as Slurm requests it, e.g. ``3g.40gb`` (the first of ``shape``)
    count: int
    priority_weight: float
    partitions: Tuple[str, ...] = ()
    jobs: Optional[int] = None
    shape: Tuple[Tuple[str, int], ...] = ()
    nodes: int = 1

    @property
    def job_count(self) -> int:
        return self.count if self.jobs is None else self.jobs

    @property
    def request(self) -> Tuple[Tuple[str, int], ...]:
        """Instances per type one job needs on one node (``shape``, or one ``profile``)."""
        return self.shape or ((self.profile, 1),)

    @property
    def instances(self) -> int:
        """Instances all ``count`` jobs need together."""
        return self.count * max(self.nodes, 1) * sum(n for _, n in self.request)


@dataclass(frozen=True)
class Policy:
    """What the planner may do.

    ``floor`` maps a Slurm type to the number of its instances kept somewhere in the
    cluster (busy or free, any node state), so a submission asking for it is not refused
    with "Requested node configuration is not available".  A plan never lowers a type
    below its floor, and raises a type that is below it when a changeable node allows.

    ``hysteresis_cycles``: a node changed fewer than this many cycles ago is changed again
    only when the gain exceeds ``hysteresis_gain`` (``None``: not at all).  ``min_gain``:
    any change must gain more than this much priority weight (so equal-value swaps are
    never made).  ``nodes``/``partitions``: allow-lists (``None`` = all; node entries may
    be shell patterns like ``gpu[0-9]*``).  ``candidates``: per model key, the layouts a
    GPU may be given (text or :class:`Layout`); default: every maximal layout of the model,
    ``+me`` profiles only when a ``+me`` type is demanded or floored.

    ``drain_mixed``: False (only idle nodes change), True (any mixed node may be drained,
    whenever its jobs end) or ``"auto"``: a mixed node whose running jobs all end (by their
    time limits, :attr:`PlanNode.running`) within ``drain_horizon`` seconds, and only when the
    drain pays: the slice-seconds the jobs it starts gain (their slices x (horizon - the
    node's end)) exceed the slice-seconds it stands idle while draining; the node whose jobs
    end first is preferred (docs/planner.md, "Busy clusters").
    """

    max_nodes_per_cycle: Optional[int] = 4
    floor: Mapping[str, int] = field(default_factory=dict)
    hysteresis_cycles: int = 3
    hysteresis_gain: Optional[float] = None
    min_gain: float = 0.0
    drain_mixed: Union[bool, str] = False
    drain_horizon: float = 14400.0
    nodes: Optional[Tuple[str, ...]] = None
    partitions: Optional[Tuple[str, ...]] = None
    candidates: Optional[Mapping[str, Tuple[object, ...]]] = None

    def __post_init__(self) -> None:
        if self.max_nodes_per_cycle is not None and self.max_nodes_per_cycle < 0:
            raise InputError("policy: max_nodes_per_cycle must be 0 or more (or unset for no cap)")
        for name, n in self.floor.items():
            if int(n) < 0:
                raise InputError(f"policy: floor.{name} must be 0 or more, not {n}")
        if self.hysteresis_cycles < 0:
            raise InputError("policy: hysteresis_cycles must be 0 or more")
        if self.drain_mixed not in (True, False, "auto"):
            raise InputError(f"policy: drain_mixed must be true, false or \"auto\", not {self.drain_mixed!r}")
        if not self.drain_horizon >= 0:
            raise InputError(f"policy: drain_horizon must be 0 seconds or more, not {self.drain_horizon!r}")

    @property
    def drain_auto(self) -> bool:
        """``drain_mixed = "auto"``: drain mixed nodes by when their jobs end, when it pays."""
        return self.drain_mixed == "auto"


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GpuChange:
    """One GPU's layout before and after the plan."""

    index: int
    model_key: str
    before: Layout
    after: Layout
    busy: FrozenSet[Tuple[int, int]] = frozenset()

    @property
    def changed(self) -> bool:
        return self.before.keys() != self.after.keys()

    @property
    def instance_changes(self) -> int:
        """Instances destroyed plus instances created."""
        return len(self.before.keys() ^ self.after.keys())

    def as_dict(self) -> Dict[str, Any]:
        return {
            "gpu": self.index,
            "model": self.model_key,
            "before": format_layout(self.before),
            "after": format_layout(self.after),
            "before_counts": format_counts(self.before),
            "after_counts": format_counts(self.after),
            "changed": self.changed,
        }


@dataclass(frozen=True)
class NodePlan:
    """The decision for one node: ``keep`` or ``change``, per GPU, and why."""

    name: str
    decision: str  #: ``keep`` or ``change``
    gpus: Tuple[GpuChange, ...]
    explain: Tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.decision == "change"

    def wanted(self) -> Dict[int, Layout]:
        """GPU index -> wanted layout, for the GPUs that change."""
        return {g.index: g.after for g in self.gpus if g.changed}

    def as_dict(self) -> Dict[str, Any]:
        return {
            "node": self.name,
            "decision": self.decision,
            "gpus": [g.as_dict() for g in self.gpus],
            "explain": list(self.explain),
        }


@dataclass(frozen=True)
class PlanTotals:
    demand_instances: int
    demand_jobs: int
    demand_weight: float
    satisfied_before: int  #: instances of jobs that could start with today's layouts
    satisfied_after: int
    weight_before: float  #: priority weight of the jobs that could start with today's layouts
    weight_after: float
    nodes_changed: int
    gpus_changed: int
    instance_changes: int
    jobs_before: int = 0  #: pending jobs (node parts of multi-node jobs) that could start before
    jobs_after: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Plan:
    """The planner's answer: every node (sorted by name), notes about demand, totals."""

    cycle: int
    nodes: Tuple[NodePlan, ...]
    notes: Tuple[str, ...]
    totals: PlanTotals

    def changed(self) -> Tuple[NodePlan, ...]:
        return tuple(n for n in self.nodes if n.changed)

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def explain(self) -> Tuple[str, ...]:
        """Every line: one per node, then the notes."""
        return tuple(line for n in self.nodes for line in n.explain) + self.notes

    def as_dict(self) -> Dict[str, Any]:
        """Plain data with stable keys, for ``--json``."""
        return {
            "cycle": self.cycle,
            "nodes": [n.as_dict() for n in self.nodes],
            "notes": list(self.notes),
            "totals": self.totals.as_dict(),
        }
