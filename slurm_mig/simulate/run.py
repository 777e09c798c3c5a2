"""One ``slurm-mig simulate``: every policy asked for, over one trace and one cluster, with
the metrics per policy.  Pure (the command reads the files and writes the plot).

The result's keys are stable (``--json``; a test pins them): ``policies[]`` with ``policy``,
``jobs``, ``started``, ``unserved``, ``mean_wait_s``, ``p90_wait_s``, ``mean_jct_s``,
``p90_jct_s``, ``makespan_s``, ``slice_utilization``, ``reconfigurations``,
``instance_changes``, ``drained_node_hours``, ``layouts``, ``planner_calls``; then ``trace``,
``cluster``, ``costs``, ``settings``, ``config``, ``notes``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.catalog import Catalog
from ..core.layout import format_counts
from ..rebalance.planning import Policy
from .cluster import Cluster
from .engine import Costs, Engine, Outcome, Settings
from .policies import POLICIES, PlannerController, best_static_candidates, mixed_static
from .trace import SimJob, Trace


@dataclass(frozen=True)
class Options:
    policies: Tuple[str, ...] = POLICIES
    costs: Costs = Costs()
    settings: Settings = Settings()
    best_static_tries: int = 4  #: choices simulated in full for best-static
    dynamic_from: str = "cluster"  #: dynamic starts from the cluster file's layouts or best-static's
    demand_half_life_s: float = 3600.0  #: [rebalance] demand_half_life (the dynamic policy's memory)


def types_of(cluster: Cluster, jobs: Sequence[SimJob], catalog: Catalog) -> List[str]:
    """Every type a job asks for or a GPU of the cluster could be cut into."""
    names = {t for j in jobs for t, _ in j.request}
    for key in cluster.models():
        names.update(p.name for p in catalog.model(key).profiles)
    return sorted(names)


def slices_of(cluster: Cluster, catalog: Catalog) -> Tuple[Dict[str, int], int]:
    """Compute slices per type (on the cluster's models) and the cluster's total."""
    per: Dict[str, int] = {}
    total = 0
    for n in cluster.nodes:
        for key, _ in n.gpus:
            m = catalog.model(key)
            total += m.compute_slices
            for p in m.profiles:
                per.setdefault(p.name, p.compute_slices)
    return per, total


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def metrics(jobs: Sequence[SimJob], out: Outcome, slices: Mapping[str, int], total_slices: int
            ) -> Dict[str, Any]:
    """The per-policy numbers (module doc), from one run."""
    waits, jcts = [], []
    work = 0.0
    last = 0.0
    for j, s, e in zip(jobs, out.start, out.end):
        if s is None or e is None:
            continue
        waits.append(s - j.submit)
        jcts.append(e - j.submit)
        last = max(last, e)
        work += j.duration * sum(slices.get(t, 0) * k for t, k in j.request)
    started = len(waits)
    util = work / (total_slices * last) if total_slices and last > 0 else 0.0
    return {
        "jobs": len(jobs),
        "started": started,
        "unserved": len(jobs) - started,
        "mean_wait_s": round(sum(waits) / started, 1) if started else 0.0,
        "p90_wait_s": round(_pct(waits, 0.9), 1),
        "mean_jct_s": round(sum(jcts) / started, 1) if started else 0.0,
        "p90_jct_s": round(_pct(jcts, 0.9), 1),
        "makespan_s": round(last, 1),
        "slice_utilization": round(util, 4),
        "reconfigurations": out.reconfigurations,
        "instance_changes": out.instance_changes,
        "drained_node_hours": round(out.drained_s / 3600.0, 2),
        "planner_calls": out.plans,
    }


def _rank(m: Mapping[str, Any]) -> Tuple[int, float]:
    return (m["unserved"], m["mean_jct_s"])


def _layouts(cluster: Cluster) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for n in cluster.nodes:
        for key, lay in n.gpus:
            text = format_counts(lay)
            if text not in out.setdefault(key, []):
                out[key].append(text)
    return out


def run_policy(name: str, cluster: Cluster, trace: Trace, types: Sequence[str],
               policy: Policy, opts: Options) -> Outcome:
    """One policy's run over ``cluster`` as given (best-static picks its cluster first)."""
    controller = PlannerController(policy, opts.demand_half_life_s) if name == "dynamic" else None
    engine = Engine(cluster, trace.jobs, types, opts.costs, opts.settings, controller)
    engine.hysteresis = policy.hysteresis_cycles
    out = engine.run()
    if controller is not None:
        out.plans = controller.calls
    return out


def simulate(trace: Trace, cluster: Cluster, policy: Policy, catalog: Catalog,
             opts: Options = Options()) -> Dict[str, Any]:
    """Every policy of ``opts`` over ``trace``; the result dict (module doc) plus ``series``
    (per policy: the time series the plot draws; not part of ``--json``)."""
    types = types_of(cluster, trace.jobs, catalog)
    slices, total = slices_of(cluster, catalog)
    rows: List[Dict[str, Any]] = []
    series: Dict[str, Any] = {}
    notes: List[str] = []
    offered = {p.name for key in cluster.models() for p in catalog.model(key).profiles}
    missing = sorted({t for j in trace.jobs for t, _ in j.request} - offered)
    if missing:
        notes.append(f"no GPU model of the cluster offers {', '.join(missing)}: those jobs "
                     f"never start under any policy")
    best_cluster: Optional[Cluster] = None
    tried: List[Dict[str, Any]] = []
    names = [p for p in POLICIES if p in opts.policies]  # best-static before dynamic
    if opts.dynamic_from == "best-static" and "dynamic" in names and "best-static" not in names:
        names.insert(names.index("dynamic"), "best-static (for dynamic)")
    parts = {p for n in cluster.nodes for p in n.partitions}
    nowhere = sum(1 for j in trace.jobs if j.partitions and not set(j.partitions) & parts)
    if nowhere:
        notes.append(f"{nowhere} jobs ask for partitions no node of the cluster file is in: "
                     f"they never start; add the partitions to the [[node]] tables")
    for name in names:
        run_cluster = cluster
        if name.startswith("best-static"):
            best: Optional[Tuple[Tuple[int, float], Cluster, Outcome, Dict[str, Any]]] = None
            choices = [cluster.with_layouts(choice) for choice in best_static_candidates(
                cluster, trace.jobs, catalog, opts.best_static_tries)]
            choices.append(mixed_static(cluster, trace.jobs, catalog))
            for c in choices:
                out = run_policy("best-static", c, trace, types, policy, opts)
                m = metrics(trace.jobs, out, slices, total)
                tried.append({"layouts": _layouts(c), "mean_jct_s": m["mean_jct_s"],
                              "unserved": m["unserved"]})
                if best is None or _rank(m) < best[0]:
                    best = (_rank(m), c, out, m)
            assert best is not None
            _, best_cluster, out, m = best
            run_cluster = best_cluster
            if name != "best-static":
                continue  # only its layouts were wanted, for dynamic's start
        else:
            if name == "dynamic" and opts.dynamic_from == "best-static":
                assert best_cluster is not None
                run_cluster = best_cluster
            out = run_policy(name, run_cluster, trace, types, policy, opts)
            m = metrics(trace.jobs, out, slices, total)
        row = {"policy": name, **m, "layouts": out.final or _layouts(run_cluster)}
        if name == "best-static":
            row["tried"] = tried
        rows.append(row)
        series[name] = [{"t": s.t, "pending": s.pending, "running": s.running,
                         "instances": s.instances} for s in out.samples]
    return {
        "policies": rows,
        "trace": {"jobs": len(trace.jobs), "skipped": dict(trace.skipped), "start": trace.start},
        "cluster": {"nodes": len(cluster.nodes),
                    "gpus": sum(len(n.gpus) for n in cluster.nodes),
                    "layouts": _layouts(cluster)},
        "costs": asdict(opts.costs),
        "settings": {"cycle_s": opts.settings.cycle_s, "reserve": opts.settings.reserve,
                     "dynamic_from": opts.dynamic_from},
        "config": {"max_nodes_per_cycle": policy.max_nodes_per_cycle,
                   "floor": dict(policy.floor), "hysteresis_cycles": policy.hysteresis_cycles,
                   "drain_mixed": policy.drain_mixed, "drain_horizon": policy.drain_horizon},
        "notes": notes,
        "series": series,
    }
