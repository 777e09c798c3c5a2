"""The planning problem, indexed: demand, nodes and free supply by type and partition set.  Pure.

The search compares small integer vectors thousands of times per plan, so the inputs are
turned once into indexes: Slurm types (demanded or floored) become type indexes in
sorted order, distinct node partition sets become group indexes, demand is merged into
:class:`Item` rows (per type, partitions and priority weight, heaviest first) and each
:class:`PlanNode` becomes a :class:`Node` carrying its GPUs' options
(:mod:`.candidates`), its busy and total instance counts per type and, when it may not
change, the one-line reason why.  Free instances on nodes that can take jobs give the
capacity per (type, group) that :mod:`.flow` matches demand against.

Nodes with the same GPU classes share the same options objects, so a node's ``sig``
(group, options, recently changed) identifies nodes that every later score treats alike.
"""

from __future__ import annotations

from typing import Collection, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ...core.catalog import GpuModel, load_catalog, normalize_profile_name
from ...core.errors import InputError, UnknownProfile
from ...core.layout import Layout, check_layout, is_media_extension, parse_layout
from .candidates import CandidateSet, GpuOptions, Option, maximal
from .flow import Match, match
from .model import DemandItem, PlanNode, Policy, condition

#: Node conditions whose free instances count as supply for pending jobs.
SUPPLYING = ("idle", "mixed", "completing")


class Item:
    """One row of merged demand: ``count`` instances of type index ``type`` at ``weight``."""

    __slots__ = ("type", "weight", "count", "jobs", "partitions", "groups")

    type: int
    weight: float
    count: int
    jobs: int
    partitions: Tuple[str, ...]
    groups: Tuple[int, ...]

    def __init__(self, type_: int, weight: float, count: int, jobs: int,
                 partitions: Tuple[str, ...]) -> None:
        self.type, self.weight, self.count, self.jobs, self.partitions = type_, weight, count, jobs, partitions
        self.groups: Tuple[int, ...] = ()


class Node:
    """A :class:`PlanNode` as the search sees it; ``choice`` is set when it is changed."""

    __slots__ = ("src", "cond", "gid", "models", "options", "busy_vec", "count_vec", "why_not",
                 "recent", "sig", "choice")

    src: PlanNode
    cond: str
    gid: int
    models: List[GpuModel]
    options: List[GpuOptions]
    busy_vec: List[int]
    count_vec: List[int]
    why_not: Optional[str]
    recent: bool
    sig: Tuple[int, Tuple[int, ...], bool]
    choice: Optional[List[Optional[Option]]]  #: per GPU: the option taken, None: kept

    def __init__(self, src: PlanNode) -> None:
        self.src = src
        self.choice = None


class Problem:
    """Indexed inputs plus today's supply and the exact per-type match of demand to it."""

    def __init__(self, nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Policy,
                 cycle: int, models: Mapping[str, GpuModel]) -> None:
        self.policy, self.cycle = policy, cycle
        self._models_in = models
        self._model_cache: Dict[str, GpuModel] = {}
        self._items(demand)
        self._nodes(nodes)
        self._supply()

    def model(self, key: str) -> GpuModel:
        m = self._model_cache.get(key)
        if m is None:
            m = self._models_in.get(key) or load_catalog().model(key)
            self._model_cache[key] = m
        return m

    def _items(self, demand: Sequence[DemandItem]) -> None:
        merged: Dict[Tuple[str, Tuple[str, ...], float], List[int]] = {}
        for d in demand:
            if d.count <= 0:
                continue
            key = (normalize_profile_name(d.profile), tuple(sorted(set(d.partitions))), float(d.priority_weight))
            acc = merged.setdefault(key, [0, 0])
            acc[0] += int(d.count)
            acc[1] += d.job_count
        floor = {normalize_profile_name(k): int(v) for k, v in self.policy.floor.items() if int(v) > 0}
        self.types = sorted({k[0] for k in merged} | set(floor))
        tindex = {t: i for i, t in enumerate(self.types)}
        self.floor = [floor.get(t, 0) for t in self.types]
        self.items: List[Item] = [
            Item(tindex[t], w, acc[0], acc[1], parts)
            for (t, parts, w), acc in sorted(merged.items(), key=lambda kv: (-kv[0][2], kv[0][0], kv[0][1]))
        ]
        self.type_items: List[List[int]] = [[] for _ in self.types]
        for i, it in enumerate(self.items):
            self.type_items[it.type].append(i)
        self.scale = max(1.0, sum(abs(it.weight) * it.count for it in self.items))
        self.tol = 1e-9 * self.scale

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
        out = CandidateSet(layouts, type_ids)
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
        self.groups = gkeys
        gid_of = {k: i for i, k in enumerate(gkeys)}
        allowed_parts = None if pol.partitions is None else set(pol.partitions)
        self.nodes: List[Node] = []
        K = len(self.types)
        for src in sorted(nodes, key=lambda n: n.name):
            node = Node(src)
            node.cond = condition(src.state)
            node.gid = gid_of[tuple(sorted(set(src.partitions)))]
            node.models, node.options = [], []
            busy_vec, count_vec = [0] * K, [0] * K
            for gpu in sorted(src.gpus, key=lambda g: g.index):
                model = self.model(gpu.model_key)
                cset = self._candidate_set(model)
                opts: GpuOptions = cset.options(gpu.layout, frozenset(gpu.busy))
                node.models.append(model)
                node.options.append(opts)
                for t, c in enumerate(opts.current):
                    count_vec[t] += c
                for pid, _start in gpu.busy:
                    for t, tid in enumerate(cset.type_ids):
                        if tid == pid:
                            busy_vec[t] += 1
            node.busy_vec, node.count_vec = busy_vec, count_vec
            node.recent = (src.last_changed_cycle is not None
                           and self.cycle - src.last_changed_cycle < pol.hysteresis_cycles)
            node.why_not = self._why_not(node, allowed_parts)
            node.sig = (node.gid, tuple(id(o) for o in node.options), node.recent)
            self.nodes.append(node)

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
        return None

    def _supply(self) -> None:
        K, G = len(self.types), len(self.groups)
        self.caps = [[0] * G for _ in range(K)]
        self.totals = [0] * K
        self.offered: List[Set[int]] = [set() for _ in range(K)]  # groups where some GPU model offers the type
        for node in self.nodes:
            supplies = node.cond in SUPPLYING
            for t in range(K):
                self.totals[t] += node.count_vec[t]
                if supplies:
                    self.caps[t][node.gid] += node.count_vec[t] - node.busy_vec[t]
            for model in node.models:
                for t, pid in enumerate(self.type_ids(model)):
                    if pid is not None:
                        self.offered[t].add(node.gid)
        gsets = [set(g) for g in self.groups]
        for it in self.items:
            parts = set(it.partitions)
            it.groups = tuple(g for g in range(G) if not parts or parts & gsets[g])
        self.limit = max([sum(m.placement_units for m in n.models) for n in self.nodes] + [1])
        self.matches: List[Match] = [self._match(t) for t in range(K)]
        self.before = (sum(m.units for m in self.matches), sum(m.weight for m in self.matches))
        self.changeable_gids = sorted({n.gid for n in self.nodes if n.why_not is None})

    def _match(self, t: int) -> Match:
        idx = self.type_items[t]
        return match([self.items[i].weight for i in idx], [self.items[i].count for i in idx],
                     [self.items[i].groups for i in idx], self.caps[t])


def _name_allowed(name: str, patterns: Collection[str]) -> bool:
    import fnmatch

    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)
