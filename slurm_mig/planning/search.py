"""The planner: which changeable nodes get which layouts.  Pure and deterministic.

Objective, compared in this order: never lower a floored type below its floor; raise
floored types that are below it; serve the most priority weight of pending demand
(:mod:`.flow`, exact per type); change the fewest GPUs, then the fewest instances.

Greedy, one node per step, over the nodes that may change:

1. Per type, the exact match of demand to today's free instances gives, for each
   partition set a node can sit in, the value of one more instance (the heaviest unmet
   demand it could serve) and the cost of one fewer (zero while the group has spare
   instances, zero while the item it serves could move to spare elsewhere, else the
   item's weight).  These are the *tables*.
2. A GPU's choice is one option per distinct count vector (:mod:`.candidates`), valued
   against the tables; a node's choice is found by coordinate descent over its GPUs
   (two passes), so the value of several GPUs adding the same type falls off as demand
   runs out.
3. Nodes are ranked by the sum of their GPUs' best single choices (cached per GPU class
   and partition set); the best few get the full evaluation; the winner's gain is then
   computed exactly (the matches of its types redone) and the change is kept only when
   it gains more than the threshold (``min_gain``, or ``hysteresis_gain`` for a node
   changed recently) and breaks no floor.  Tables of the changed types are rebuilt and
   the next step starts, until nothing gains or the per-cycle cap is reached.

Identical nodes (same GPUs, layouts, busy sets and partitions) share every cached value.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..catalog import GpuModel, load_catalog, normalize_profile_name
from ..errors import InputError, UnknownProfile
from ..layout import Layout, is_media_extension, parse_layout, check_layout
from . import explain as _explain
from .candidates import CandidateSet, GpuOptions, maximal
from .flow import Match, match
from .model import DemandItem, Plan, PlanNode, Policy, condition

SUPPLYING = ("idle", "mixed", "completing")
PASSES = 2


class _Item:
    __slots__ = ("type", "weight", "count", "jobs", "partitions", "groups")

    def __init__(self, type_, weight, count, jobs, partitions):
        self.type, self.weight, self.count, self.jobs, self.partitions = type_, weight, count, jobs, partitions
        self.groups: Tuple[int, ...] = ()


class _Node:
    __slots__ = ("src", "cond", "gid", "models", "options", "busy_vec", "count_vec", "why_not",
                 "recent", "sig", "choice")

    def __init__(self, src: PlanNode):
        self.src = src
        self.choice: Optional[List] = None


def plan(nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Optional[Policy] = None,
         cycle: int = 0, *, models: Optional[Mapping[str, GpuModel]] = None) -> Plan:
    """Pick wanted layouts for changeable nodes from pending ``demand``.

    ``models`` maps a :attr:`PlanGpu.model_key` to its effective model (e.g. from the
    driver); keys not there are looked up in the catalog.
    """
    return _Planner(nodes, demand, policy or Policy(), cycle, models or {}).run()


class _Planner:
    def __init__(self, nodes, demand, policy: Policy, cycle: int, models):
        self.policy, self.cycle = policy, cycle
        self._models_in = models
        self._model_cache: Dict[str, GpuModel] = {}
        self._items(demand)
        self._nodes(nodes)
        self._supply()

    # ------------------------------------------------------------------ inputs

    def model(self, key: str) -> GpuModel:
        m = self._model_cache.get(key)
        if m is None:
            m = self._models_in.get(key) or load_catalog().model(key)
            self._model_cache[key] = m
        return m

    def _items(self, demand):
        merged: Dict[tuple, List[int]] = {}
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
        self.items: List[_Item] = [
            _Item(tindex[t], w, acc[0], acc[1], parts)
            for (t, parts, w), acc in sorted(merged.items(), key=lambda kv: (-kv[0][2], kv[0][0], kv[0][1]))
        ]
        self.type_items: List[List[int]] = [[] for _ in self.types]
        for i, it in enumerate(self.items):
            self.type_items[it.type].append(i)
        self.scale = max(1.0, sum(abs(it.weight) * it.count for it in self.items))
        self.tol = 1e-9 * self.scale

    def _type_ids(self, model: GpuModel) -> Tuple[Optional[int], ...]:
        out = []
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
            layouts = []
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

    def _nodes(self, nodes):
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
        self.nodes: List[_Node] = []
        K = len(self.types)
        for src in sorted(nodes, key=lambda n: n.name):
            node = _Node(src)
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

    def _why_not(self, node: _Node, allowed_parts) -> Optional[str]:
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

    def _supply(self):
        K, G = len(self.types), len(self.groups)
        self.caps = [[0] * G for _ in range(K)]
        self.totals = [0] * K
        self.offered = [set() for _ in range(K)]  # groups where some GPU model offers the type
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
        self.tables: List[Dict[int, tuple]] = [self._table(t) for t in range(K)]

    def _match(self, t: int) -> Match:
        idx = self.type_items[t]
        return match([self.items[i].weight for i in idx], [self.items[i].count for i in idx],
                     [self.items[i].groups for i in idx], self.caps[t])

    # ------------------------------------------------------------------ tables

    def _table(self, t: int) -> Dict[int, tuple]:
        """Per changeable group: prefix sums of gains and losses, and the gain runs."""
        m, idx, caps, L = self.matches[t], self.type_items[t], self.caps[t], self.limit
        spare = [c - u for c, u in zip(caps, m.used)]
        out = {}
        for g in self.changeable_gids:
            gains, runs = [0.0], []
            for k, i in enumerate(idx):
                if len(gains) > L:
                    break
                it = self.items[i]
                unmet = it.count - m.served[k]
                if unmet > 0 and g in it.groups:
                    n = min(unmet, L + 1 - len(gains))
                    runs.append((i, n))
                    for _ in range(n):
                        gains.append(gains[-1] + it.weight)
            losses = [0.0] * min(spare[g], L)
            for k, i in enumerate(idx):
                held = m.flow[k].get(g, 0)
                if not held or len(losses) >= L:
                    continue
                it = self.items[i]
                alt = sum(spare[h] for h in it.groups if h != g)
                free = min(held, alt)
                losses.extend([0.0] * free + [it.weight] * (held - free))
            losses.sort()
            prefix = [0.0]
            for x in losses[:L]:
                prefix.append(prefix[-1] + x)
            out[g] = (gains, prefix, runs)
        return out

    def _value(self, t: int, g: int, d: int) -> float:
        gains, losses, _ = self.tables[t][g]
        if d >= 0:
            return gains[min(d, len(gains) - 1)]
        return -losses[min(-d, len(losses) - 1)]

    def _floor_active(self, t: int, d: int) -> bool:
        """Could the totals change of type t (by d, just made) change any floor value?"""
        f = self.floor[t]
        return bool(f) and min(self.totals[t], self.totals[t] - d) < f + self.limit

    def _floor(self, t: int, d: int) -> int:
        f = self.floor[t]
        if not f:
            return 0
        tot = self.totals[t]
        return min(tot + d, f) - min(tot, f)

    # ------------------------------------------------------------------ evaluation

    def _marginal(self, g: int, D: List[int], delta) -> Tuple[int, int, float]:
        viol, fgain, weight = 0, 0, 0.0
        tables, floor = self.tables, self.floor
        for t, d in delta:
            before = D[t]
            after = before + d
            gains, losses, _ = tables[t][g]
            if after >= 0:
                weight += gains[after if after < len(gains) else -1]
            else:
                weight -= losses[-after if -after < len(losses) else -1]
            if before >= 0:
                weight -= gains[before if before < len(gains) else -1]
            else:
                weight += losses[-before if -before < len(losses) else -1]
            if floor[t] and self.totals[t] + min(before, after, 0) < floor[t]:
                hb, ha = self._floor(t, before), self._floor(t, after)
                viol += max(0, -ha) - max(0, -hb)
                fgain += max(0, ha) - max(0, hb)
        return viol, fgain, weight

    def _better(self, a, b) -> bool:
        """Is score a better than b: (-violation, floor gain, weight, -gpus, -instances)."""
        for k, (x, y) in enumerate(zip(a, b)):
            if k == 2:
                if x > y + self.tol:
                    return True
                if y > x + self.tol:
                    return False
            elif x != y:
                return x > y
        return False

    def _evaluate(self, node: _Node):
        """Coordinate descent over the node's GPUs; returns (score, choice, delta)."""
        g, K = node.gid, len(self.types)
        D = [0] * K
        choice: List = [None] * len(node.options)
        for _ in range(PASSES):
            moved = False
            for k, opts in enumerate(node.options):
                cur = choice[k]
                if cur is not None:
                    for t, d in cur.delta:
                        D[t] -= d
                best, best_score = None, (0, 0, 0.0, 0, 0)
                for opt in opts.options:
                    viol, fgain, weight = self._marginal(g, D, opt.delta)
                    score = (-viol, fgain, weight, -1, -opt.changes)
                    if self._better(score, best_score):
                        best, best_score = opt, score
                if best is not cur:
                    moved = True
                choice[k] = best
                if best is not None:
                    for t, d in best.delta:
                        D[t] += d
            if not moved:
                break
        delta = [(t, d) for t, d in enumerate(D) if d]
        viol, fgain, weight = self._marginal(g, [0] * K, delta)
        gpus = sum(1 for c in choice if c is not None)
        changes = sum(c.changes for c in choice if c is not None)
        return (-viol, fgain, weight, -gpus, -changes), choice, delta

    def _heuristic(self, node: _Node, cache: Dict) -> Tuple[int, float]:
        """Sum over the node's GPUs of each GPU's best single change (cached per GPU class)."""
        fsum, wsum = 0, 0.0
        zero = [0] * len(self.types)
        for opts in node.options:
            key = (id(opts), node.gid)
            hit = cache.get(key)
            if hit is None:
                hit = (0, 0.0)
                for opt in opts.options:
                    viol, fgain, weight = self._marginal(node.gid, zero, opt.delta)
                    if viol == 0 and (fgain, weight) > hit:
                        hit = (fgain, weight)
                cache[key] = hit
                self._depend(("h", key), opts.types, node.gid)
            fsum += hit[0]
            wsum += hit[1]
        return fsum, wsum

    def _depend(self, entry, types, gid: int) -> None:
        for t in types:
            self.deps.setdefault((t, gid), set()).add(entry)

    def _invalidate(self, t: int, gid: int) -> None:
        for kind, key in self.deps.pop((t, gid), ()):
            (self.hcache if kind == "h" else self.ecache).pop(key, None)

    # ------------------------------------------------------------------ search

    def run(self) -> Plan:
        pol = self.policy
        cap = pol.max_nodes_per_cycle
        self.changed: Dict[int, dict] = {}
        self.cap_hit = False
        rejected = set()
        open_nodes = [i for i, n in enumerate(self.nodes) if n.why_not is None]
        # Cached values, dropped when a table (type, group) they read changes.
        self.hcache: Dict = {}
        self.ecache: Dict = {}
        self.deps: Dict[Tuple[int, int], set] = {}
        while True:
            if cap is not None and len(self.changed) >= cap:
                self.cap_hit = True
                break
            hcache = self.hcache
            cands, by_sig = [], {}
            open_nodes = [i for i in open_nodes if i not in self.changed]
            for i in open_nodes:
                node = self.nodes[i]
                if node.sig in rejected:
                    continue
                key = by_sig.get(node.sig)
                if key is None:
                    key = by_sig[node.sig] = self._heuristic(node, hcache)
                if key[0] > 0 or key[1] > self.tol:
                    cands.append((key, i))
            if not cands:
                break
            cands.sort(key=lambda c: (-c[0][0], -c[0][1], c[1]))
            evals = self.ecache
            accepted = False
            while cands and not accepted:
                best_i, best = None, None
                for key, i in cands:
                    node = self.nodes[i]
                    if node.sig in rejected:
                        continue
                    if best is not None and (key[0], key[1]) <= (best[0][1], best[0][2] + self.tol):
                        break
                    ev = evals.get(node.sig)
                    if ev is None:
                        ev = evals[node.sig] = self._evaluate(node)
                        self._depend(("e", node.sig),
                                     {t for o in node.options for t in o.types}, node.gid)
                    score = ev[0]
                    if score[0] < 0 or not (score[1] > 0 or score[2] > self.tol):
                        continue
                    if best is None or self._better(score, best[0]):
                        best_i, best = i, ev
                if best is None:
                    break
                if self._try(best_i, best):
                    accepted = True
                else:
                    rejected.add(self.nodes[best_i].sig)
                    cands = [c for c in cands if self.nodes[c[1]].sig not in rejected]
            if not accepted:
                break
        return _explain.build(self)

    def _try(self, i: int, ev) -> bool:
        """Apply node i's change if its exact gain passes; return whether it was kept."""
        node, pol = self.nodes[i], self.policy
        _, choice, delta = ev
        g = node.gid
        old = {t: self.matches[t] for t, _ in delta}
        floor_gain = 0
        for t, d in delta:
            h = self._floor(t, d)
            if h < 0:
                return False
            floor_gain += h
        for t, d in delta:
            self.caps[t][g] += d
        new = {t: self._match(t) for t, _ in delta}
        gain = sum(new[t].weight - old[t].weight for t in new)
        threshold = pol.hysteresis_gain if node.recent else pol.min_gain
        if not (floor_gain > 0 or gain > (threshold or 0.0) + self.tol):
            for t, d in delta:
                self.caps[t][g] -= d
            return False
        served = []
        for t, d in delta:
            if d > 0:
                left, used = d, []
                for item, n in self.tables[t][g][2]:
                    if left <= 0:
                        break
                    take = min(n, left)
                    used.append((item, take))
                    left -= take
                served.append((t, d, used))
        for t, d in delta:
            self.totals[t] += d
            self.matches[t] = new[t]
        for t, d in delta:
            table = self._table(t)
            for gid, entry in table.items():
                if self.tables[t].get(gid) != entry or self._floor_active(t, d):
                    self._invalidate(t, gid)
            self.tables[t] = table
        node.choice = choice
        self.changed[i] = {"gain": gain, "floor_gain": floor_gain, "delta": delta, "served": served}
        return True


def _name_allowed(name: str, patterns) -> bool:
    import fnmatch

    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)
