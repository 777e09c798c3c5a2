"""The policies ``slurm-mig simulate`` compares.  Pure.

* ``static``: the cluster file's layouts, never changed.
* ``best-static``: one layout per GPU model, the best in hindsight over every maximal layout
  of the model (:func:`best_static_candidates` ranks them all by a fluid estimate, the best
  few are simulated in full and the lowest mean completion time wins).
* ``dynamic``: the real planner every cycle (:class:`PlannerController`), fed exactly as
  ``slurm-mig rebalance`` feeds it (:mod:`slurm_mig.rebalance.cycle`): pending jobs as
  :class:`~slurm_mig.slurm.model.PendingJob` -> ``plan_demand`` -> ``plan`` with
  ``policy_of(config)``, with the same recent-demand memory (``[rebalance]
  demand_half_life``) deciding what spare room on a recut GPU gets.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ..core.catalog import Catalog, load_catalog
from ..core.layout import Layout, format_counts, is_media_extension
from ..rebalance.cycle import plan_demand
from ..rebalance.planning import JobEnd, PlanGpu, PlanNode, Policy, plan
from ..rebalance.planning.candidates import maximal
from ..rebalance.recent import Memory, update
from ..slurm.model import GresRequest, PendingJob
from .cluster import Cluster, SimNode
from .engine import UP, Change, NodeState, View
from .trace import SimJob

POLICIES = ("static", "best-static", "dynamic")
#: Most layout combinations the fluid estimate ranks (per-model lists are cut to fit).
MAX_COMBINATIONS = 20_000


class PlannerController:
    """The dynamic policy: the real planner, once per cycle.

    A cycle where the planner could not change anything is skipped without calling it:
    no node it may change (idle, or with ``drain_mixed`` any node in service), or no pending
    demand and no floor (or floors already checked on these layouts).  The planner would
    answer "keep" there; skipping is only for speed (docs/simulate.md)."""

    def __init__(self, policy: Policy, demand_half_life_s: float = 3600.0):
        self.policy = policy
        self._gpus: Dict[Tuple[int, str, Layout, FrozenSet[str]], PlanGpu] = {}
        self._floors_checked: Optional[int] = None
        self._slices: Dict[Tuple[str, str], int] = {}
        self.calls = 0
        self.half_life = demand_half_life_s
        self.memory = Memory()  #: recent demand, kept as rebalance keeps its demand_file

    def remember(self, view: View) -> None:
        """Recent demand as :func:`slurm_mig.rebalance.cycle` keeps it: instances pending
        plus in use per type, blended in every cycle (:func:`slurm_mig.rebalance.recent.update`)."""
        now: Dict[str, float] = {}
        for req, _, _, k in view.pending_groups():
            for t, c in req:
                now[view.types[t]] = now.get(view.types[t], 0.0) + float(k * c)
        for n in view.nodes:
            if n.status == UP or n.running:
                for t, c in enumerate(n.cap):
                    if c > n.free[t]:
                        now[view.types[t]] = now.get(view.types[t], 0.0) + float(c - n.free[t])
        self.memory = update(self.memory, now, view.now, self.half_life)

    def cycle(self, view: View) -> Sequence[Change]:
        pol = self.policy
        self.remember(view)
        changeable = any(n.status == UP and (pol.drain_mixed or not n.running) for n in view.nodes)
        if not changeable:
            return ()
        groups = list(view.pending_groups())
        layouts_now = view.layout_version
        if not groups:
            if not pol.floor or self._floors_checked == layouts_now:
                return ()
        jobs = [PendingJob(job_id=i + 1, array_job_id=i + 1, array_task="0-%d" % (k - 1),
                           array_tasks_pending=k, priority=prio, partition=parts,
                           reason="Resources",
                           requests=tuple(GresRequest(view.types[t], c, "node") for t, c in req))
                for i, (req, parts, prio, k) in enumerate(groups)]
        nodes, coming = self.plan_nodes(view)
        self.calls += 1
        the_plan = plan(nodes, plan_demand(jobs, coming), pol, view.cycle, recent=self.memory.types)
        out = []
        for np_ in the_plan.changed():
            out.append(Change(np_.name, tuple(g.after for g in np_.gpus),
                              sum(g.instance_changes for g in np_.gpus)))
        if not groups and not out:
            self._floors_checked = layouts_now
        return out

    def plan_nodes(self, view: View) -> Tuple[List[PlanNode], Dict[str, int]]:
        """The planner's view of the nodes, as :func:`slurm_mig.rebalance.cycle.classify`
        builds it: a node changing is ``drained`` with the layout to come (its instances
        counted as coming); in service, every instance of a type in use is busy (Slurm says
        how many of a type are in use, not which)."""
        nodes: List[PlanNode] = []
        coming: Dict[str, int] = {}
        for n in view.nodes:
            if n.status != UP:
                assert n.want is not None
                gpus = tuple(self._gpu(i, m, lay, frozenset())
                             for i, (m, lay) in enumerate(zip(n.models, n.want)))
                for lay in n.want:
                    for name, k in lay.counts().items():
                        coming[name] = coming.get(name, 0) + k
                state = "drained"
            else:
                used = frozenset(view.types[t] for t, c in enumerate(n.cap) if n.free[t] < c)
                gpus = tuple(self._gpu(i, m, lay, used)
                             for i, (m, lay) in enumerate(zip(n.models, n.layouts)))
                state = "mixed" if n.running else "idle"
            running = self._ends(view, n) if self.policy.drain_auto and n.status == UP else None
            nodes.append(PlanNode(n.name, n.partitions, state, gpus,
                                  last_changed_cycle=n.last_changed_cycle, running=running))
        return nodes, coming

    def _ends(self, view: View, n: NodeState) -> Tuple[JobEnd, ...]:
        """The node's running jobs as rebalance reads them from squeue: each one's start +
        time limit (the trace's ``timelimit``), from now, and the compute slices it holds."""
        out = []
        for limit_end, j in n.running:
            slices = 0
            for t, k in view.job_request(j):
                slices += k * self._slice(n.models[0], view.types[t])
            out.append(JobEnd(max(0.0, limit_end - view.now), slices))
        return tuple(out)

    def _slice(self, model: str, name: str) -> int:
        key = (model, name)
        hit = self._slices.get(key)
        if hit is None:
            hit = self._slices[key] = load_catalog().model(model).profile(name).compute_slices
        return hit

    def _gpu(self, index: int, model: str, layout: Layout, used: FrozenSet[str]) -> PlanGpu:
        key = (index, model, layout, used)
        hit = self._gpus.get(key)
        if hit is None:
            busy = frozenset((i.profile_id, i.start) for i in layout if i.name in used)
            hit = self._gpus[key] = PlanGpu(index, model, layout, busy)
        return hit


# ----------------------------------------------------------------------------- best static


def _fluid(cluster_groups: Sequence[Tuple[Tuple[str, ...], Tuple[str, ...], int]],
           sigs: Mapping[Tuple[Tuple[Tuple[str, int], ...], Tuple[str, ...]], Tuple[int, Dict[str, float]]],
           choice: Mapping[str, Layout]) -> Tuple[int, float]:
    """(jobs no node could ever start, the busiest type's work / capacity) for one choice."""
    caps = []
    total: Dict[str, int] = {}
    for models, parts, count in cluster_groups:
        cap: Dict[str, int] = {}
        for m in models:
            for name, k in choice[m].counts().items():
                cap[name] = cap.get(name, 0) + k
        caps.append((parts, cap))
        for name, k in cap.items():
            total[name] = total.get(name, 0) + k * count
    unservable = 0
    work: Dict[str, float] = {}
    for (req, jparts), (njobs, w) in sigs.items():
        ok = any((not jparts or set(jparts) & set(parts)) and all(cap.get(t, 0) >= k for t, k in req)
                 for parts, cap in caps)
        if not ok:
            unservable += njobs
            continue
        for t, x in w.items():
            work[t] = work.get(t, 0.0) + x
    load = max((x / total[t] for t, x in work.items() if total.get(t)), default=0.0)
    return unservable, load


def best_static_candidates(cluster: Cluster, jobs: Sequence[SimJob], catalog: Catalog,
                           keep: int) -> List[Dict[str, Layout]]:
    """The ``keep`` most promising single-layout-per-model choices, best first, ranked by the
    fluid estimate over every maximal layout of each model (``+me`` ones only when a job asks
    for a ``+me`` type)."""
    me = any("+me" in t for j in jobs for t, _ in j.request)
    models = cluster.models()
    per_model: Dict[str, Tuple[Layout, ...]] = {}
    for key in models:
        gm = catalog.model(key)
        seen: Dict[str, Layout] = {}  # one layout per count form: placements do not matter here
        for lay in maximal(gm, me):
            if me or not any(is_media_extension(gm.profile(i.profile_id)) for i in lay):
                seen.setdefault(format_counts(lay), lay)
        per_model[key] = tuple(seen.values())
    groups: Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], int] = {}
    for n in cluster.nodes:
        g = (tuple(m for m, _ in n.gpus), n.partitions)
        groups[g] = groups.get(g, 0) + 1
    cluster_groups = [(ms, ps, c) for (ms, ps), c in groups.items()]
    sigs: Dict[Tuple[Tuple[Tuple[str, int], ...], Tuple[str, ...]], Tuple[int, Dict[str, float]]] = {}
    for j in jobs:
        sig = (j.request, j.partitions)
        count, w = sigs.get(sig, (0, {}))
        for t, k in j.request:
            w[t] = w.get(t, 0.0) + k * j.duration
        sigs[sig] = (count + 1, w)
    base = {mk: lay for node in reversed(cluster.nodes) for mk, lay in reversed(node.gpus)}
    # Cut each model's list to its best alone (others as given) until the product fits.
    lists = {mk: list(per_model[mk]) for mk in models}
    size = 1
    for mk in models:
        size *= max(len(lists[mk]), 1)
    if size > MAX_COMBINATIONS:
        per = max(int(MAX_COMBINATIONS ** (1.0 / len(models))), 1)
        for mk in models:
            def alone(lay: Layout, mk: str = mk) -> Tuple[int, float]:
                return _fluid(cluster_groups, sigs, {**base, mk: lay})
            lists[mk].sort(key=alone)
            lists[mk] = lists[mk][:per]
    scored = []
    for combo in itertools.product(*(lists[m] for m in models)):
        choice = dict(zip(models, combo))
        scored.append((_fluid(cluster_groups, sigs, choice), [str(c) for c in combo], choice))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [c for _, _, c in scored[:max(keep, 1)]]


def mixed_static(cluster: Cluster, jobs: Sequence[SimJob], catalog: Catalog) -> Cluster:
    """A static mix of layouts in proportion to the trace's demand, as an admin sizing the
    cluster for the whole trace would cut it: per model, GPU after GPU, the maximal layout
    that most lowers the busiest type's work / capacity; then dealt round the nodes so each
    node holds a share of every layout."""
    me = any("+me" in t for j in jobs for t, _ in j.request)
    work: Dict[str, float] = {}
    for j in jobs:
        for t, k in j.request:
            work[t] = work.get(t, 0.0) + k * j.duration
    chosen: Dict[str, List[Layout]] = {}
    for key in cluster.models():
        m = catalog.model(key)
        offered = {p.name for p in m.profiles}
        demand = {t: w for t, w in work.items() if t in offered}
        # Layouts of demanded types only (no room cut for a type nobody asks for), if any.
        options = ([lay for lay in maximal(m, me) if set(lay.counts()) <= set(demand)]
                   or list(maximal(m, me)))
        count = sum(1 for n in cluster.nodes for mm, _ in n.gpus if mm == key)
        cap: Dict[str, int] = {}
        picks: List[Layout] = []
        for _ in range(count):
            def score(lay: Layout) -> Tuple[float, float, str]:
                c = dict(cap)
                for name, k in lay.counts().items():
                    c[name] = c.get(name, 0) + k
                worst = max((w / c[t] if c.get(t) else math.inf for t, w in demand.items()),
                            default=0.0)
                return (worst, -sum(w / c[t] for t, w in demand.items() if c.get(t)), str(lay))
            best = min(options, key=score) if demand else options[0]
            picks.append(best)
            for name, k in best.counts().items():
                cap[name] = cap.get(name, 0) + k
        picks.sort(key=str)
        chosen[key] = picks
    # Deal: the i-th GPU of model m in cluster order gets picks[(i * step) % count] so nodes mix.
    dealt: Dict[str, int] = {k: 0 for k in chosen}
    order: Dict[str, List[int]] = {}
    for key, picks in chosen.items():
        n = len(picks)
        gpn = max(1, max(sum(1 for mm, _ in node.gpus if mm == key) for node in cluster.nodes))
        nodes_n = max(1, -(-n // gpn))
        spread = [(i % gpn) * nodes_n + i // gpn for i in range(n)]
        order[key] = spread if sorted(spread) == list(range(n)) else list(range(n))
    nodes = []
    for node in cluster.nodes:
        gpus = []
        for key, lay in node.gpus:
            i = dealt[key]
            dealt[key] += 1
            gpus.append((key, chosen[key][order[key][i]] if i < len(order[key]) else lay))
        nodes.append(SimNode(node.name, node.partitions, tuple(gpus)))
    return Cluster(tuple(nodes))
