"""Pending jobs -> how many MIG instances of each type the queue is waiting for.  Pure.

For every pending record J that is not skipped (held, waiting on a dependency or a begin
time, an array throttle or an association/QOS limit: a new layout would not start it) and
every GPU request R of J:

    per_task(J, R)  = R.count x nodes      (per node; nodes = J.nodes_requested)
                    = R.count              (per job)
                    = R.count x J.tasks    (per task)
                    = R.count x sockets x nodes   (per socket; sockets_per_node or 1)
    instances      += per_task(J, R) x J.array_tasks_pending
    startable      += per_task(J, R) x min(J.array_tasks_pending, J.array_throttle or inf)
    weight         += per_task(J, R) x J.array_tasks_pending x J.priority

summed per (type, partitions).  ``weight`` is the priority-weighted demand the planner
maximises: an instance wanted by a high-priority job counts for more.  A job that names
several partitions (``-p a,b``) counts once, under the tuple of its partitions, not once in
each.  ``type`` None is an untyped ``gpu:N`` request that any instance satisfies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Dict, Iterable, List, Optional, Tuple

from .model import PendingJob

# Reasons a pending job waits for something other than resources (Slurm's reason codes).
SKIP_REASONS = frozenset({
    "JobHeldUser", "JobHeldAdmin", "Dependency", "DependencyNeverSatisfied", "BeginTime",
    "JobArrayTaskLimit", "PartitionDown", "PartitionInactive",
})
SKIP_PREFIXES = ("Assoc", "QOS")


@dataclass(frozen=True)
class DemandItem:
    """What the queue wants of one GPU type in one set of partitions."""

    type: Optional[str]
    partitions: Tuple[str, ...]
    instances: int  # every pending task's instances
    startable: int  # what could start at once (array throttles applied)
    weight: int  # sum of instances x priority
    jobs: Tuple[int, ...]  # job ids (array records by their array job id)
    top_priority: int
    reasons: Tuple[Tuple[str, int], ...]  # pending reason -> records, most common first


def skipped(job: PendingJob, skip_reasons: Collection[str] = SKIP_REASONS) -> bool:
    """True when a new layout would not start ``job``: held, or a non-resource reason."""
    return (job.held or job.reason in skip_reasons
            or any(job.reason.startswith(p) for p in SKIP_PREFIXES))


def demand(jobs: Iterable[PendingJob], skip_reasons: Collection[str] = SKIP_REASONS) -> List[DemandItem]:
    """Aggregate the GPU requests of ``jobs``, heaviest first (weight, then instances, then
    type and partitions for a stable order)."""
    acc: Dict[Tuple[Optional[str], Tuple[str, ...]], Dict[str, Any]] = {}
    for job in jobs:
        if job.state.upper() != "PENDING" or not job.requests or skipped(job, skip_reasons):
            continue
        for req in job.requests:
            per_task = job.instances(req)
            if per_task <= 0:
                continue
            key = (req.type, job.partition)
            a = acc.setdefault(key, {"instances": 0, "startable": 0, "weight": 0, "jobs": [],
                                     "top": 0, "reasons": {}})
            a["instances"] += per_task * job.array_tasks_pending
            a["startable"] += per_task * job.runnable_at_once
            a["weight"] += per_task * job.array_tasks_pending * max(job.priority, 0)
            jid = job.array_job_id or job.job_id
            if jid not in a["jobs"]:
                a["jobs"].append(jid)
                a["reasons"][job.reason] = a["reasons"].get(job.reason, 0) + 1
            a["top"] = max(a["top"], job.priority)
    items = [DemandItem(type=t, partitions=p, instances=a["instances"], startable=a["startable"],
                        weight=a["weight"], jobs=tuple(a["jobs"]), top_priority=a["top"],
                        reasons=tuple(sorted(a["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))))
             for (t, p), a in acc.items()]
    items.sort(key=lambda d: (-d.weight, -d.instances, d.type or "", d.partitions))
    return items


def by_type(items: Iterable[DemandItem]) -> Dict[Optional[str], int]:
    """Instances wanted per GPU type, over all partitions."""
    out: Dict[Optional[str], int] = {}
    for item in items:
        out[item.type] = out.get(item.type, 0) + item.instances
    return out
