"""The planning problem, indexed: job groups, nodes and their GPU options.  Pure.

Slurm types (demanded or floored) become type indexes in sorted order; distinct node
partition sets become group ids.  Demand becomes :class:`Group` rows: identical jobs
(same per-node request, partitions, weight) merged into one row with a count, so 20,000
pending jobs are a few hundred rows.  Rows with the same request and partitions form a
*class*: a node that cannot fit one job of a class fits none of it, whatever the weight.
Each :class:`PlanNode` becomes a :class:`Node` carrying its GPUs' options
(:mod:`.candidates`: the current layout first, then the changes), its free vector and,
when it may not change, the one-line reason why.

Nodes with the same GPU classes share the same options objects, so a node's ``sig``
(group, options) identifies nodes that every later computation treats alike.
"""

from __future__ import annotations

import fnmatch
from typing import Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

from ...core.catalog import GpuModel, load_catalog, normalize_profile_name
from ...core.errors import InputError, UnknownProfile
from ...core.layout import Layout, check_layout, is_media_extension, parse_layout
from .candidates import CandidateSet, GpuOptions, Option, maximal
from .model import DemandItem, PlanGpu, PlanNode, Policy, condition

#: Node conditions whose free instances can start pending jobs.
SUPPLYING = ("idle", "mixed", "completing")


class Group:
    """``count`` identical jobs (node parts): each needs ``req`` on one node, worth ``weight``."""

    __slots__ = ("req", "weight", "count", "jobs", "partitions", "gids", "cls", "parts", "size", "per_node")

    def __init__(self, req: Tuple[Tuple[int, int], ...], weight: float, count: int, jobs: int,
                 partitions: Tuple[str, ...], parts: int) -> None:
        self.req = req  #: (type index, instances) per node
        self.weight = weight  #: per node part: the job's priority weight / parts
        self.count = count  #: node parts (jobs x parts)
        self.jobs = jobs  #: pending records behind it, for explanations
        self.partitions = partitions
        self.parts = parts  #: nodes per job
        self.size = sum(n for _, n in req)
        #: most node parts one node may take: one per job (a multi-node job's parts are on
        #: different nodes)
        self.per_node = count if parts <= 1 else count // parts
        self.gids: Tuple[int, ...] = ()
        self.cls = -1  #: index of its (req, partitions) class


class Node:
    """A :class:`PlanNode` as the search sees it; ``choice`` is set when it is changed."""

    __slots__ = ("src", "cond", "gid", "models", "options", "free", "total", "why_not",
                 "recent", "sig", "choice", "supplies", "free_in", "idle_ss")

    src: PlanNode
    cond: str
    gid: int
    models: List[GpuModel]
    options: List[GpuOptions]
    free: List[int]  #: per type: free instances with today's layouts
    total: List[int]  #: per type: instances with today's layouts
    why_not: Optional[str]
    recent: bool
    supplies: bool
    sig: Tuple[int, Tuple[int, ...]]
    choice: Optional[Tuple[Option, ...]]  #: per GPU: the option taken (set when changed)
    free_in: Optional[float]  #: seconds until its running jobs end (0: idle; None: unknown/never)
    idle_ss: float  #: slice-seconds it would stand idle while draining (drain_mixed = "auto")

    def __init__(self, src: PlanNode) -> None:
        self.src = src
        self.choice = None


class Problem:
    """Indexed inputs."""

    def __init__(self, nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Policy,
                 cycle: int, models: Mapping[str, GpuModel]) -> None:
        self.policy, self.cycle = policy, cycle
        self._models_in = models
        self._model_cache: Dict[str, GpuModel] = {}
        self._groups(demand)
        self._nodes(nodes)
        self._link()

    def model(self, key: str) -> GpuModel:
        m = self._model_cache.get(key)
        if m is None:
            m = self._models_in.get(key) or load_catalog().model(key)
            self._model_cache[key] = m
        return m

    # ------------------------------------------------------------------ demand

    def _groups(self, demand: Sequence[DemandItem]) -> None:
        merged: Dict[Tuple[Tuple[Tuple[str, int], ...], Tuple[str, ...], float, int], List[int]] = {}
        for d in demand:
            if d.count <= 0:
                continue
            req: Dict[str, int] = {}
            for t, n in d.request:
                if int(n) > 0:
                    name = normalize_profile_name(t)
                    req[name] = req.get(name, 0) + int(n)
            if not req:
                continue
            parts = max(int(d.nodes), 1)
            key = (tuple(sorted(req.items())), tuple(sorted(set(d.partitions))), float(d.priority_weight), parts)
            acc = merged.setdefault(key, [0, 0])
            acc[0] += int(d.count)
            acc[1] += d.job_count
        floor = {normalize_profile_name(k): int(v) for k, v in self.policy.floor.items() if int(v) > 0}
        self.types = sorted({t for k in merged for t, _ in k[0]} | set(floor))
        tindex = {t: i for i, t in enumerate(self.types)}
        self.floor = [floor.get(t, 0) for t in self.types]
        self.groups: List[Group] = []
        for (shape, parts_, w, n_parts), acc in sorted(
                merged.items(), key=lambda kv: (-kv[0][2] / kv[0][3], sum(n for _, n in kv[0][0]), kv[0])):
            self.groups.append(Group(tuple((tindex[t], n) for t, n in shape), w / n_parts, acc[0] * n_parts,
                                     acc[1], parts_, n_parts))
        classes: Dict[Tuple[Tuple[Tuple[int, int], ...], Tuple[str, ...]], int] = {}
        self.classes: List[List[int]] = []  #: per class: its group indexes, heaviest first
        for i, g in enumerate(self.groups):
            c = classes.setdefault((g.req, g.partitions), len(classes))
            if c == len(self.classes):
                self.classes.append([])
            self.classes[c].append(i)
            g.cls = c
        self.scale = max(1.0, sum(abs(g.weight) * g.count for g in self.groups))
        self.tol = 1e-9 * self.scale

    # ------------------------------------------------------------------ nodes

    def _type_ids(self, model: GpuModel) -> Tuple[Optional[int], ...]:
        out: List[Optional[int]] = []
        for t in self.types:
            try:
                out.append(model.profile(t).id)
            except UnknownProfile:
                out.append(None)
        return tuple(out)

    def type_ids(self, model: GpuModel) -> Tuple[Optional[int], ...]:
        """The model's profile id for each type index (None where it lacks the type)."""
        return self._sets[model.key].type_ids

    def _candidate_set(self, model: GpuModel) -> CandidateSet:
        hit = self._sets.get(model.key)
        if hit is not None:
            return hit
        type_ids = self._type_ids(model)
        given = (self.policy.candidates or {}).get(model.key)
        with_me: Optional[List[Layout]] = None
        if given is not None:
            layouts: List[Layout] = []
            for entry in given:
                if isinstance(entry, Layout):
                    layouts.append(check_layout(model, entry.instances))
                else:
                    layouts.append(parse_layout(str(entry), model))
        else:
            include_me = any(pid is not None and is_media_extension(model.profile(pid)) for pid in type_ids)
            layouts = list(maximal(model, include_me))
            with_me = None if include_me else list(maximal(model, True))
        out = CandidateSet(layouts, type_ids, with_me)
        self._sets[model.key] = out
        return out

    def _nodes(self, nodes: Sequence[PlanNode]) -> None:
        self._sets: Dict[str, CandidateSet] = {}
        pol = self.policy
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[0]
            raise InputError(f"node {dup} is listed twice; give each node once")
        gkeys = sorted({tuple(sorted(set(n.partitions))) for n in nodes})
        self.partition_sets = gkeys
        gid_of = {k: i for i, k in enumerate(gkeys)}
        allowed_parts = None if pol.partitions is None else set(pol.partitions)
        self.nodes: List[Node] = []
        K = len(self.types)
        self._gpu_memo: Dict[Tuple[str, int, FrozenSet[Tuple[int, int]]], Tuple[Layout, GpuModel, GpuOptions]] = {}
        shared: Dict[object, Tuple[List[GpuModel], List[GpuOptions], List[int], List[int]]] = {}
        for src in sorted(nodes, key=lambda n: n.name):
            node = Node(src)
            node.cond = condition(src.state)
            node.supplies = node.cond in SUPPLYING
            node.gid = gid_of[tuple(sorted(set(src.partitions)))]
            gpus = tuple(sorted(src.gpus, key=lambda g: g.index))
            # nodes whose GPUs have the same models, layouts and busy instances share one
            # computation (most of a large cluster: uniform layouts, idle or allocated)
            gkey = self._node_key(gpus)
            hit = shared.get(gkey)
            if hit is None:
                hit = self._gpu_options(gpus, K)
                shared[gkey] = hit
            node.models, node.options, free, total = hit
            node.models, node.options = list(node.models), list(node.options)
            node.free, node.total = list(free), list(total)
            node.free_in, node.idle_ss = self._drain_cost(node)
            node.recent = (src.last_changed_cycle is not None
                           and self.cycle - src.last_changed_cycle < pol.hysteresis_cycles)
            node.why_not = self._why_not(node, allowed_parts)
            node.sig = (node.gid, tuple(id(o) for o in node.options))
            self.nodes.append(node)

    @staticmethod
    def _node_key(gpus: Sequence[PlanGpu]) -> object:
        """What nodes sharing one options computation have in common: per GPU its model,
        layout (the object: the PlanNode keeps it alive) and busy instances."""
        return tuple((g.model_key, id(g.layout), frozenset(g.busy)) for g in gpus)

    def _gpu_options(self, gpus: Sequence[PlanGpu], K: int
                     ) -> Tuple[List[GpuModel], List[GpuOptions], List[int], List[int]]:
        """Per GPU its model and options; the node's free and total instances per type."""
        models, options = [], []
        free, total = [0] * K, [0] * K
        for gpu in gpus:
            busy = frozenset(gpu.busy)
            # keyed on the layout object (kept alive in the value): nodes read from one
            # source share them, and hashing a layout by value costs more than the lookup saves
            key = (gpu.model_key, id(gpu.layout), busy)
            hit = self._gpu_memo.get(key)
            if hit is None:
                model = self.model(gpu.model_key)
                me_busy = any(is_media_extension(model.profile(pid)) for pid, _ in busy)
                opts = self._candidate_set(model).options(gpu.layout, busy, me_busy)
                hit = self._gpu_memo[key] = (gpu.layout, model, opts)
            _, model, opts = hit
            models.append(model)
            options.append(opts)
            for t in range(K):
                free[t] += opts.current.free[t]
                total[t] += opts.current.total[t]
        return models, options, free, total

    def _drain_cost(self, node: Node) -> Tuple[Optional[float], float]:
        """(seconds until its running jobs end, slice-seconds idle while it drains): every
        compute slice of today's instances stands idle from now (free) or from its job's
        end until the last job ends.  (0, 0) for a node with nothing running."""
        src = node.src
        if node.cond != "mixed":
            return 0.0, 0.0
        end = src.free_in
        if end is None:
            return None, 0.0
        gpus = sorted(src.gpus, key=lambda g: g.index)
        total = sum(model.profile(i.profile_id).compute_slices
                    for model, gpu in zip(node.models, gpus) for i in gpu.layout)
        held = 0.0
        for j in src.running or ():
            held += j.slices * min(max(float(j.ends_in or 0.0), 0.0), end)
        return end, max(0.0, total * end - held)

    def job_slices(self, node: Node, req: Sequence[Tuple[int, int]]) -> int:
        """Compute slices one job of request ``req`` (type index, count) takes on ``node``."""
        out = 0
        for t, n in req:
            for model in node.models:
                pid = self.type_ids(model)[t]
                if pid is not None:
                    out += n * model.profile(pid).compute_slices
                    break
        return out

    def _why_not(self, node: Node, allowed_parts: Optional[Set[str]]) -> Optional[str]:
        """None when the node may change, else the reason it may not."""
        src, pol = node.src, self.policy
        if node.cond == "unavailable":
            return f"{src.state.lower()}, not changeable"
        if node.cond == "allocated":
            return "allocated (every CPU in use), not changeable"
        if node.cond == "completing":
            return "jobs completing, not changeable this cycle"
        if node.cond == "mixed" and not pol.drain_mixed:
            return "mixed (jobs running) and policy does not drain mixed nodes"
        if node.cond == "mixed" and pol.drain_auto:
            if src.running is None:
                return ("mixed (jobs running); when its jobs end is not known, and drain_mixed = "
                        "\"auto\" drains only nodes whose jobs' time limits it has read")
            if node.free_in is None:
                return ("mixed; a job without a time limit runs on it, so it never drains by "
                        "itself; drain_mixed = \"auto\" leaves it")
            if node.free_in >= pol.drain_horizon:
                return (f"mixed; its jobs end in {duration(node.free_in)} (by their time limits), "
                        f"not within the drain horizon of {duration(pol.drain_horizon)}; not drained")
        if not src.allowed:
            return "not allowed by the node allow-list in the config"
        if pol.nodes is not None and not _name_allowed(src.name, pol.nodes):
            return "not in the policy's node allow-list"
        if allowed_parts is not None and not (set(src.partitions) & allowed_parts):
            return f"partition {','.join(src.partitions) or '(none)'} not in the policy's partition allow-list"
        if not src.gpus:
            return "no GPUs"
        if node.recent and pol.hysteresis_gain is None:
            return (f"changed in cycle {src.last_changed_cycle}; hysteresis keeps it for "
                    f"{pol.hysteresis_cycles} cycles")
        if all(len(o.options) == 1 for o in node.options):
            return "no other layout keeps its busy instances"
        return None

    def _link(self) -> None:
        """Which node partition sets each group may use; which types each GPU model offers."""
        K, G = len(self.types), len(self.partition_sets)
        gsets = [set(g) for g in self.partition_sets]
        gids: Dict[Tuple[str, ...], Tuple[int, ...]] = {}  # groups repeat partition lists
        for grp in self.groups:
            hit = gids.get(grp.partitions)
            if hit is None:
                parts = set(grp.partitions)
                hit = gids[grp.partitions] = tuple(g for g in range(G) if not parts or parts & gsets[g])
            grp.gids = hit
        self.offered: List[Set[int]] = [set() for _ in range(K)]  # gids where some GPU model offers the type
        self.totals = [0] * K
        seen: Set[Tuple[int, str]] = set()
        for node in self.nodes:
            for t in range(K):
                self.totals[t] += node.total[t]
            for model in node.models:
                if (node.gid, model.key) in seen:
                    continue
                seen.add((node.gid, model.key))
                for t, pid in enumerate(self.type_ids(model)):
                    if pid is not None:
                        self.offered[t].add(node.gid)
        #: per gid: the classes its nodes may host
        self.gid_classes: List[List[int]] = [[] for _ in range(G)]
        for c, members in enumerate(self.classes):
            for gid in self.groups[members[0]].gids:
                self.gid_classes[gid].append(c)

    def servable(self, grp: Group) -> bool:
        """Can any node in the group's partitions ever offer every type it asks for?"""
        return any(all(gid in self.offered[t] for t, _ in grp.req) for gid in grp.gids)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``: how explanations write a span of time."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _name_allowed(name: str, patterns: Collection[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)
