"""The controller's metrics: what one rebalance cycle saw and did, in a node_exporter textfile
(``[metrics] rebalance_textfile``; docs/metrics.md).

:func:`record_cycle` (pure) turns a cycle's result, what Slurm said at its start (the
pending jobs and the nodes, as the cycle read them: :class:`Recording`) and its duration
into the kept series; :func:`write` keeps them in ``[metrics] rebalance_state_file`` (the
counters survive the process: rebalance runs from a timer) and rewrites the textfile, both
atomically, under the state file's own lock.  Dry runs write nothing.  A metrics failure is
a warning: the cycle's result stands.

Cardinality is bounded: labels are MIG types, partitions (a job that may run in several
names them joined by commas, as Slurm prints them), an action and a result; never a job
or a node name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..core import metrics as m
from ..core.errors import SlurmMigError
from ..host.locking import node_lock
from ..node.metrics import MetricsWriteFailed, lock_path, write_file
from ..slurm.demand import demand as queue_demand
from ..slurm.model import NodeInfo, PendingJob

CYCLES = "slurm_mig_rebalance_cycles_total"
CYCLE_DURATION = "slurm_mig_rebalance_cycle_duration_seconds"
NODES = "slurm_mig_rebalance_nodes_total"
RECONFIGURES = "slurm_mig_rebalance_reconfigures_total"
LAST_NODES = "slurm_mig_rebalance_last_cycle_nodes"
LAST_DURATION = "slurm_mig_rebalance_last_cycle_duration_seconds"
LAST_TIMESTAMP = "slurm_mig_rebalance_last_cycle_timestamp_seconds"
LAST_SUCCESS = "slurm_mig_rebalance_last_cycle_success"
LAST_RECONFIGURES = "slurm_mig_rebalance_last_cycle_reconfigures"
PENDING_INSTANCES = "slurm_mig_rebalance_pending_instances"
PENDING_JOBS = "slurm_mig_rebalance_pending_jobs"
DEMAND = "slurm_mig_rebalance_demand_instances"
SERVED = "slurm_mig_rebalance_demand_served_instances"
DEMAND_WEIGHT = "slurm_mig_rebalance_demand_weight"
SERVED_WEIGHT = "slurm_mig_rebalance_demand_served_weight"
CLUSTER_INSTANCES = "slurm_mig_cluster_instances"
CLUSTER_FREE = "slurm_mig_cluster_instances_free"

ACTIONS = ("changed", "drained", "held", "finished", "resumed", "failed")
#: Gauges a successful cycle sets afresh (a type nobody asks for any more disappears).
REPLACED = (PENDING_INSTANCES, PENDING_JOBS, CLUSTER_INSTANCES, CLUSTER_FREE, SERVED,
            SERVED_WEIGHT)
#: name -> (kind, help).  docs/metrics.md lists the same (a test checks).
SPECS: Dict[str, Tuple[str, str]] = {
    CYCLES: (m.COUNTER, "Rebalance cycles (not dry runs), by result: ok, or failed (Slurm "
                        "unreadable, an error; a cycle that failed to finish a node is ok here "
                        "and counted in slurm_mig_rebalance_nodes_total{action=\"failed\"})."),
    CYCLE_DURATION: (m.HISTOGRAM, "Seconds a rebalance cycle took, waiting for nodes included."),
    NODES: (m.COUNTER, "Nodes rebalance acted on, by action: changed (given a new layout), "
                       "drained (for a new layout, or held across a reconfigure), held, "
                       "finished (Gres= updated and resumed), resumed, failed."),
    RECONFIGURES: (m.COUNTER, "Slurm reconfigures rebalance ran."),
    LAST_NODES: (m.GAUGE, "Nodes the last rebalance cycle acted on, by action."),
    LAST_DURATION: (m.GAUGE, "Seconds the last rebalance cycle took."),
    LAST_TIMESTAMP: (m.GAUGE, "When the last rebalance cycle ended, in seconds since the epoch."),
    LAST_SUCCESS: (m.GAUGE, "Whether the last rebalance cycle ran (1) or failed (0)."),
    LAST_RECONFIGURES: (m.GAUGE, "Slurm reconfigures in the last rebalance cycle."),
    PENDING_INSTANCES: (m.GAUGE, "MIG instances pending jobs ask for, by type (any: an untyped "
                                 "gpu request) and partition, at the last cycle's start (jobs a "
                                 "new layout cannot start, such as held ones, left out)."),
    PENDING_JOBS: (m.GAUGE, "Pending jobs (array tasks counted as their records) asking for MIG "
                            "instances, by type and partition, at the last cycle's start."),
    DEMAND: (m.GAUGE, "Instances of pending demand the last cycle planned for (after the "
                      "changes already in progress)."),
    SERVED: (m.GAUGE, "Instances of that demand that could start with the layouts before and "
                      "after the last cycle's plan, by when (before, after)."),
    DEMAND_WEIGHT: (m.GAUGE, "Priority weight of the demand the last cycle planned for."),
    SERVED_WEIGHT: (m.GAUGE, "Priority weight of the demand served before and after the last "
                             "cycle's plan, by when."),
    CLUSTER_INSTANCES: (m.GAUGE, "MIG instances Slurm has configured cluster-wide, by type, "
                                 "at the last cycle's start."),
    CLUSTER_FREE: (m.GAUGE, "MIG instances no job holds, cluster-wide, by type, at the last "
                            "cycle's start."),
}
KINDS = {name: kind for name, (kind, _) in SPECS.items()}
log = logging.getLogger(__name__)
_MIG_TYPE = re.compile(r"[0-9]+g\.[0-9]+gb(\+[a-z]+)?")


class Recording:
    """A :class:`~slurm_mig.slurm.reader.SlurmReader` that remembers the first pending jobs
    and nodes it returned: what the cycle planned from."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.jobs: Optional[List[PendingJob]] = None
        self.nodes_read: Optional[List[NodeInfo]] = None

    def pending_jobs(self) -> List[PendingJob]:
        out: List[PendingJob] = self.reader.pending_jobs()
        if self.jobs is None:
            self.jobs = list(out)
        return out

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
        out: Dict[str, NodeInfo] = self.reader.nodes(names)
        if self.nodes_read is None and names is None:
            self.nodes_read = list(out.values())
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


def _partition(parts: Sequence[str]) -> str:
    return ",".join(sorted(parts)) or "any"


def record_cycle(state: Dict[str, Any], result: Optional[Mapping[str, Any]], seconds: float,
                 now: float, jobs: Optional[Sequence[PendingJob]] = None,
                 nodes: Optional[Sequence[NodeInfo]] = None) -> None:
    """One cycle into ``state['series']``: ``result`` is its ``as_dict()``, None when it failed."""
    series = state["series"]
    ok = result is not None
    m.inc(series, CYCLES, {"result": "ok" if ok else "failed"})
    m.observe(series, CYCLE_DURATION, (), max(seconds, 0.0), m.CYCLE_BUCKETS)
    m.set_value(series, LAST_DURATION, (), round(max(seconds, 0.0), 6))
    m.set_value(series, LAST_TIMESTAMP, (), round(now, 3))
    m.set_value(series, LAST_SUCCESS, (), 1 if ok else 0)
    if result is None:
        return
    held = len(result["hold"]["held"])
    counts = {"changed": len(result["changed"]), "drained": len(result["changed"]) + held,
              "held": held, "finished": len(result["finished"]),
              "resumed": len(result["resumed"]), "failed": len(result["failed"])}
    for action in ACTIONS:
        m.set_value(series, LAST_NODES, {"action": action}, counts[action])
        m.inc(series, NODES, {"action": action}, counts[action])
    m.inc(series, RECONFIGURES, (), result["reconfigures"])
    m.set_value(series, LAST_RECONFIGURES, (), result["reconfigures"])
    totals = result["plan"]["totals"]
    for name in REPLACED:
        series[name] = {}
    m.set_value(series, DEMAND, (), totals["demand_instances"])
    m.set_value(series, DEMAND_WEIGHT, (), float(totals["demand_weight"]))
    for when in ("before", "after"):
        m.set_value(series, SERVED, {"when": when}, totals[f"satisfied_{when}"])
        m.set_value(series, SERVED_WEIGHT, {"when": when}, float(totals[f"weight_{when}"]))
    for d in queue_demand(jobs or ()):
        labels = {"type": d.type or "any", "partition": _partition(d.partitions)}
        m.inc(series, PENDING_INSTANCES, labels, d.instances)
        m.inc(series, PENDING_JOBS, labels, len(d.jobs))
    total: Dict[str, int] = {}
    free: Dict[str, int] = {}
    for info in nodes or ():
        for gtype, n in info.gres.items():
            if _MIG_TYPE.fullmatch(gtype):
                total[gtype] = total.get(gtype, 0) + n
                free[gtype] = free.get(gtype, 0) + max(n - info.gres_used.get(gtype, 0), 0)
    for gtype in total:
        m.set_value(series, CLUSTER_INSTANCES, {"type": gtype}, total[gtype])
        m.set_value(series, CLUSTER_FREE, {"type": gtype}, free[gtype])


def render(state: Mapping[str, Any]) -> str:
    return m.render(m.families_from(state["series"], SPECS))


def write(state_file: str, textfile: str, change: Any, lock_timeout: float = 5.0) -> str:
    """Read the kept series, ``change(state)``, write both files; MetricsWriteFailed."""
    try:
        with node_lock(lock_path(state_file), lock_timeout, note_holder=False):
            state = read(state_file)
            change(state)
            write_file(state_file, json.dumps(state, sort_keys=True, separators=(",", ":")) + "\n",
                       0o600)
            text = render(state)
            write_file(textfile, text, 0o644)
            return text
    except (OSError, SlurmMigError, m.MetricsError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise MetricsWriteFailed(f"rebalance metrics not written ({state_file} and {textfile}: "
                                 f"{reason}); the next cycle writes them again") from err


def read(state_file: str) -> Dict[str, Any]:
    from ..host.safefs import read_file

    try:
        data = read_file(state_file, "rebalance metrics state file", limit=4 << 20)
        doc = json.loads(data.decode("utf-8")) if data else {}
    except (OSError, SlurmMigError, ValueError):
        doc = {}
    series = doc.get("series") if isinstance(doc, dict) and doc.get("version") == 1 else None
    return {"version": 1, "series": m.clean_series(series, KINDS)}


class Metered:
    """What :func:`cycle_metrics` reports: the cycle's result, once it has one."""

    result: Any = None


@contextlib.contextmanager
def cycle_metrics(cy: Any, seen: Recording, wall: Callable[[], float]) -> Iterator[Metered]:
    """Around one cycle (``cy``: :class:`~slurm_mig.rebalance.cycle.Cycle`): with ``[metrics]
    rebalance_textfile`` set and not a dry run, the cycle (or its failure, re-raised) into the
    controller's metrics.  A metrics failure is logged (``slurm-mig: ERROR: rebalance metrics
    not written ...``) and the cycle's result stands."""
    metered = Metered()
    t0 = cy.clock()
    mcfg = cy.config.metrics
    on = bool(mcfg.rebalance_textfile) and not cy.dry_run
    try:
        yield metered
    except Exception:
        if on:
            _write(mcfg, lambda state: record_cycle(state, None, cy.clock() - t0, wall()))
        raise
    if on:
        result = metered.result.as_dict()
        _write(mcfg, lambda state: record_cycle(state, result, cy.clock() - t0, wall(),
                                                seen.jobs, seen.nodes_read))


def _write(mcfg: Any, change: Callable[[Dict[str, Any]], None]) -> None:
    try:
        write(mcfg.rebalance_state_file, mcfg.rebalance_textfile, change)
    except MetricsWriteFailed as err:
        log.error("%s", err)
    except Exception as err:  # a bug here must not turn a cycle that did its work into a failure
        log.error("rebalance metrics not written (%s: %s); report it", type(err).__name__, err)
